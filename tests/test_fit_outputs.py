"""Multi-output models through fit, evaluate and predict; exact whole-set losses and metrics at
every batch size; losses.combine; probabilities."""

import numpy as np
import pytest

import fundl as fl
from fundl import random, tree
from fundl.datasets import spirals
from fundl.testing import read_only

SCE = fl.losses.softmax_cross_entropy


def _two_head_data(n_per_class=40, seed=11):
    x, y = spirals(random.key(seed), n_per_class, classes=3, noise=0.1)
    radius = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True)).astype(np.float32)
    return read_only(x), (read_only(y), read_only(radius))


def _two_head_model():
    trunk = fl.serial(fl.dense(32), fl.relu(), fl.dense(32), fl.relu())
    return fl.serial(trunk, fl.fan_out(2), fl.parallel(fl.dense(3), fl.dense(1)))


def test_a_two_head_model_trains_validates_stops_and_evaluates(tmp_path):
    x, ys = _two_head_data()
    xv, yvs = _two_head_data(20, seed=2)
    loss = fl.losses.combine(SCE, fl.losses.mse, weights=(1.0, 0.5))
    metrics = {"accuracy": fl.metrics.at(0, "accuracy"), "mae": fl.metrics.at(1, "mae")}
    es = fl.EarlyStopping("val_accuracy", patience=4)
    kw = dict(key=random.key(5), batch_size=16, lr=0.02, progress=False, val_data=(xv, yvs),
              metrics=metrics)
    ckpt = tmp_path / "c.npz"
    ts, hist = fl.fit(_two_head_model(), loss, fl.optim.adam(), (x, ys), epochs=40,
                      callbacks=[es], checkpoint_path=ckpt, **kw)
    assert list(hist) == ["epoch", "step", "loss", "accuracy", "mae", "lr", "val_loss",
                          "val_accuracy", "val_mae"]
    acc = hist["val_accuracy"]
    best = int(np.argmax(acc)) + 1                       # mode "auto": higher accuracy is better
    assert es.best == max(acc) and es.best_epoch == best and ts.step == best * 8
    assert len(acc) == best + 4 or len(acc) == 40
    assert max(acc) > 0.8 and hist["val_mae"][best - 1] < hist["val_mae"][0]
    at_best, _ = fl.fit(_two_head_model(), loss, fl.optim.adam(), (x, ys), epochs=best, **kw)
    assert tree.all_equal(ts, at_best)                   # exactly the best epoch's state
    model = _two_head_model()
    out = model.apply(ts.params, ts.state, xv)
    got = fl.evaluate(model, ts.params, ts.state, (xv, yvs), metrics, batch_size=7, loss=loss)
    assert list(got) == ["loss", "accuracy", "mae"]
    assert got["accuracy"] == pytest.approx(np.mean(out[0].argmax(1) == yvs[0]), abs=1e-12)
    assert got["mae"] == pytest.approx(np.mean(np.abs(out[1] - yvs[1])), rel=1e-6)
    whole = float(SCE(out[0], yvs[0])) + 0.5 * float(fl.losses.mse(out[1], yvs[1]))
    assert got["loss"] == pytest.approx(whole, rel=1e-6)
    assert got["accuracy"] == acc[best - 1] and got["loss"] == pytest.approx(
        hist["val_loss"][best - 1], rel=1e-6)                # float32 sums, other batches
    pred = fl.predict(model, ts.params, ts.state, xv, batch_size=9)
    assert isinstance(pred, tuple) and pred[0].shape == (60, 3) and pred[1].shape == (60, 1)


def test_early_stopping_on_val_accuracy_restores_the_most_accurate_epoch():
    x, ys = _two_head_data()
    y = ys[0]
    xv, yv = _two_head_data(10, seed=3)[0], _two_head_data(10, seed=3)[1][0]
    model = fl.serial(fl.dense(16), fl.relu(), fl.dense(3))
    es = fl.EarlyStopping("val_accuracy", patience=3, restore_best=True)
    ts, hist = fl.fit(model, SCE, fl.optim.sgd(), (x, y), key=random.key(1), epochs=30,
                      batch_size=16, lr=0.5, val_data=(xv, yv), metrics=["accuracy"],
                      callbacks=[es], progress=False)
    acc = hist["val_accuracy"]
    best = int(np.argmax(acc))                          # the first epoch with the top accuracy
    assert acc[best] > min(acc)                         # accuracy did move
    assert ts.step == hist["step"][best]
    score = fl.evaluate(model, ts.params, ts.state, (xv, yv), ["accuracy"])["accuracy"]
    assert score == max(acc)                            # not the last, not the worst: the best
    # mode="min" on accuracy keeps the worst: the direction matters
    worst = fl.EarlyStopping("val_accuracy", patience=30, mode="min")
    ts_min, hist_min = fl.fit(model, SCE, fl.optim.sgd(), (x, y), key=random.key(1), epochs=8,
                              batch_size=16, lr=0.5, val_data=(xv, yv), metrics=["accuracy"],
                              callbacks=[worst], progress=False)
    got = fl.evaluate(model, ts_min.params, ts_min.state, (xv, yv), ["accuracy"])["accuracy"]
    assert got == min(hist_min["val_accuracy"])


def _ignore_data(n=37, classes=4, seed=0):
    k1, k2, k3 = random.split(random.key(seed), 3)
    x = random.normal(k1, (n, 5), np.float64)
    y = random.randint(k2, (n, 3), 0, classes).astype(np.int64)     # 3 positions per example
    y = np.where(random.uniform(k3, (n, 3)) < 0.4, -100, y)           # 40% ignored
    return x, y


@pytest.mark.parametrize("batch_size", [1, 3, 4, 8, 16, 37, 256])
def test_evaluate_is_the_whole_set_loss_at_every_batch_size(batch_size):
    x, y = _ignore_data()
    loss = fl.losses.cross_entropy(ignore_index=-100, weights=[1.0, 2.0, 0.5, 3.0])
    model = fl.serial(fl.dense(12), fl.reshape((3, 4)))
    params, state, _ = model.init(random.key(1), (5,))
    params = tree.cast(params, np.float64)
    out = model.apply(params, state, x)
    whole = float(loss(out, y))
    got = fl.evaluate(model, params, state, (x, y), batch_size=batch_size, loss=loss)
    assert abs(got["loss"] - whole) <= 1e-12 * abs(whole)
    # fit's val_loss too (one step of sgd at lr 0: the same params)
    opt = fl.optim.sgd()
    ts = fl.TrainState.create(random.key(1), model, opt, (5,))._replace(
        params=params, opt_state=opt.init(params))
    _, hist = fl.fit(model, loss, opt, (x, y), key=random.key(2), steps=1, lr=0.0,
                     batch_size=8, val_data=(x, y), val_batch_size=batch_size,
                     train_state=ts, progress=False)
    assert abs(hist["val_loss"][0] - whole) <= 1e-12 * abs(whole)


def test_the_epoch_training_loss_is_the_exact_weighted_mean():
    x, y = _ignore_data(40)
    loss = fl.losses.cross_entropy(ignore_index=-100, weights=[1.0, 2.0, 0.5, 3.0])
    model = fl.serial(fl.dense(12), fl.reshape((3, 4)))
    opt = fl.optim.sgd()
    ts0 = fl.TrainState.create(random.key(1), model, opt, (5,))
    ts0 = ts0._replace(params=tree.cast(ts0.params, np.float64),
                       opt_state=opt.init(tree.cast(ts0.params, np.float64)))
    _, hist = fl.fit(model, loss, opt, (x, y), key=random.key(2), epochs=1, lr=0.0,
                     batch_size=8, train_state=ts0, progress=False)
    out = model.apply(ts0.params, ts0.state, x)
    whole = float(loss(out, y))
    assert abs(hist["loss"][0] - whole) <= 1e-12 * whole       # lr 0: every batch, same params


def test_precision_recall_f1_and_top_k_add_up_over_batches():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 4))
    labels = rng.integers(0, 4, 50)
    guess = logits.argmax(1)
    p, r = [], []
    for c in range(4):
        tp = np.sum((guess == c) & (labels == c))
        p.append(tp / max(np.sum(guess == c), 1))
        r.append(tp / max(np.sum(labels == c), 1))
    f = [2 * a * b / (a + b) if a + b else 0.0 for a, b in zip(p, r)]
    assert fl.metrics.precision(logits, labels) == pytest.approx(np.mean(p), abs=1e-12)
    assert fl.metrics.recall(logits, labels) == pytest.approx(np.mean(r), abs=1e-12)
    assert fl.metrics.f1(logits, labels) == pytest.approx(np.mean(f), abs=1e-12)
    model = fl.identity()
    whole = {"f1": np.mean(f), "top_2_accuracy": fl.metrics.top_k_accuracy(logits, labels, 2)}
    for bs in (3, 7, 50):
        got = fl.evaluate(model, {}, {}, (logits, labels), ["f1", "top_2_accuracy"], batch_size=bs)
        assert got["f1"] == pytest.approx(whole["f1"], abs=1e-12)   # not a mean of batch F1s
        assert got["top_2_accuracy"] == pytest.approx(whole["top_2_accuracy"], abs=1e-12)
    # a binary classifier with one logit
    one = rng.standard_normal((30, 1))
    lab = (rng.random(30) < 0.5).astype(np.int64)
    pred = (one[:, 0] > 0).astype(np.int64)
    tp = np.sum(pred & lab)
    prec = [np.sum((pred == 0) & (lab == 0)) / max(np.sum(pred == 0), 1), tp / max(pred.sum(), 1)]
    assert fl.metrics.precision(one, lab) == pytest.approx(np.mean(prec), abs=1e-12)
    assert fl.metrics.accuracy(one, lab) == pytest.approx(np.mean(pred == lab), abs=1e-12)


def test_predict_proba():
    x, _ = spirals(random.key(0), 5, classes=3)
    model = fl.serial(fl.dense(3))
    params, state, _ = model.init(random.key(1), (2,))
    logits = fl.predict(model, params, state, x)
    probs = fl.predict(model, params, state, x, proba=True, batch_size=4)
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
                               rtol=1e-6)
    binary = fl.serial(fl.dense(1))
    bp, bs, _ = binary.init(random.key(1), (2,))
    np.testing.assert_allclose(fl.predict(binary, bp, bs, x, proba=True),
                               1 / (1 + np.exp(-fl.predict(binary, bp, bs, x))), rtol=1e-6)
    two = fl.serial(fl.fan_out(2), fl.parallel(fl.dense(3), fl.dense(1)))
    tp, tstate, _ = two.init(random.key(1), (2,))
    with pytest.raises(ValueError, match="proba=True needs a model with one output"):
        fl.predict(two, tp, tstate, x, proba=True)


def _loss_layer(loss, target):
    """A combined loss as a layer of its prediction tuple, for check_vjp."""
    def init(key, in_shape):
        return {}, {}, ()

    def apply(params, state, x, *, key=None, train=False):
        return loss.value(x, target)

    def vjp(params, state, x, *, key=None, train=True):
        value, grads = loss.value_and_grad(x, target)
        return np.asarray(value), state, lambda u: ({}, tuple(g * np.asarray(u) for g in grads))
    return fl.Layer(init, apply, vjp, loss.name)


@pytest.mark.parametrize("n", [1, 3, 6])
def test_combine_gradient_value_and_weight(n):
    k = random.split(random.key(n), 4)
    logits = random.normal(k[0], (n, 4), np.float64)
    labels = random.randint(k[1], (n,), 0, 4).astype(np.int64)
    pred = random.normal(k[2], (n, 2), np.float64)
    target = random.normal(k[3], (n, 2), np.float64)
    loss = fl.losses.combine(SCE, fl.losses.mse, weights=(0.7, 2.5))
    value = loss((logits, pred), (labels, target))
    assert float(value) == pytest.approx(0.7 * float(SCE(logits, labels))
                                         + 2.5 * float(fl.losses.mse(pred, target)), rel=1e-14)
    result = fl.check_vjp(_loss_layer(loss, (labels, target)), x=(logits, pred))
    assert result.max_error < 1e-7
    assert loss.weight_of((logits, pred), (labels, target)) == n
    # a VAE-style part that passes a term through: mean of the term
    kl = fl.Loss(lambda p, t: np.mean(p), lambda p, t: (np.mean(p), np.full_like(p, 1 / p.size)),
                 "kl")
    vae = fl.losses.combine(fl.losses.mse, kl, weights=(1.0, 0.1))
    recon = random.normal(k[0], (n, 3), np.float64)
    term = np.abs(random.normal(k[1], (n, 1), np.float64))
    res = fl.check_vjp(_loss_layer(vae, (recon * 0.5, None)), x=(recon, term))
    assert res.max_error < 1e-7
    with pytest.raises(fl.losses.LossError, match="the prediction must be a tuple of 2"):
        loss(logits, labels)
    with pytest.raises(fl.losses.LossError, match="2 losses but 1 weights"):
        fl.losses.combine(SCE, fl.losses.mse, weights=(1.0,))
    with pytest.raises(fl.losses.LossError, match="losses\\[1\\] must be a fundl Loss.*called"):
        fl.losses.combine(SCE, fl.losses.huber)


def test_a_combined_loss_keeps_its_parts_when_replaced():
    """``parts`` is a field of Loss: ``_replace`` keeps it (it was an attribute, which
    ``_replace`` dropped, so a renamed combination was added up as one ratio)."""
    ignoring = fl.losses.cross_entropy(ignore_index=-1)
    loss = fl.losses.combine(ignoring, fl.losses.mse, weights=(1.0, 0.5))
    renamed = loss._replace(name="two heads")
    assert isinstance(renamed, fl.losses.CombinedLoss) and renamed.name == "two heads"
    assert renamed.parts == loss.parts == ((0, ignoring, 1.0), (1, fl.losses.mse, 0.5))
    assert fl.Loss(SCE.value, SCE.value_and_grad, "mine").parts is None
    logits = random.normal(random.key(1), (6, 3), np.float64)
    labels = np.array([0, -1, -1, -1, 2, 1])           # batch 1 counts 1 label, batch 2 two
    pred = random.normal(random.key(2), (6, 1), np.float64)
    target = np.zeros((6, 1))
    whole = float(ignoring(logits, labels)) + 0.5 * float(fl.losses.mse(pred, target))
    two = fl.parallel(fl.identity(), fl.identity())
    params, state, _ = two.init(random.key(3), ((3,), (1,)))
    got = fl.evaluate(two, params, state, ((logits, pred), (labels, target)), batch_size=3,
                      loss=renamed)["loss"]
    assert got == pytest.approx(whole, rel=1e-12)
