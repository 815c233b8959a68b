"""fundl.train: TrainState, make_step, and the fit / evaluate loop."""

import copy
import importlib
import io as std_io
import math

import numpy as np
import pytest

import fundl as fl
from fundl import io, random, tree
from fundl.datasets import linear_regression, spirals
from fundl.testing import read_only
from fundl import NonFiniteLossError, TrainState, evaluate, fit, make_step

SCE = fl.losses.softmax_cross_entropy
# the module (``fundl.fit`` may be re-exported as the function in fundl/__init__.py)
fit_module = importlib.import_module("fundl.fit")


def _mlp(hidden=16, out=3):
    return fl.serial(fl.dense(hidden), fl.relu(), fl.dense(out))


def _spiral_data(n_per_class=40):
    x, y = spirals(random.key(11), n_per_class, classes=3, noise=0.1)
    return read_only(x), read_only(y)


# --- TrainState and make_step -------------------------------------------------------

def test_make_step_is_pure_with_read_only_inputs():
    model, opt = _mlp(), fl.optim.sgd()
    ts = read_only(TrainState.create(random.key(0), model, opt, (2,)))
    x, y = _spiral_data(4)
    before = copy.deepcopy((ts, x, y))
    step = make_step(model, SCE, opt)
    new, metrics = step(ts, (x, y), 0.1)
    assert tree.all_equal((ts, x, y), before)  # nothing was written
    assert new.step == 1 and isinstance(metrics["loss"], float)
    assert not tree.all_equal(new.params, ts.params)
    assert not np.array_equal(new.key, ts.key)


def test_make_step_same_key_same_result_and_float32_kept():
    model, opt = _mlp(), fl.optim.sgd()
    x, y = _spiral_data(4)
    step = make_step(model, SCE, opt)
    runs = []
    for _ in range(2):
        ts = TrainState.create(random.key(3), model, opt, (2,))
        for _ in range(5):
            ts, _ = step(ts, (x, y), 0.05)
        runs.append(ts)
    assert tree.all_equal(runs[0], runs[1])
    assert {leaf.dtype for leaf in tree.leaves(runs[0].params)} == {np.dtype(np.float32)}
    assert runs[0].step == 5


def test_make_step_accepts_a_schedule_and_rejects_non_layers():
    model, opt = _mlp(), fl.optim.sgd()
    x, y = _spiral_data(4)
    step = make_step(model, SCE, opt)
    ts = TrainState.create(random.key(3), model, opt, (2,))
    seen = []
    step(ts, (x, y), lambda s: seen.append(s) or 0.1)
    assert seen == [0]
    a, _ = step(ts, (x, y), lambda s: 0.0)
    assert tree.all_equal(a.params, ts.params)
    with pytest.raises(TypeError, match="Layer"):
        make_step(lambda x: x, SCE, opt)
    with pytest.raises(TypeError, match="Loss"):
        make_step(model, lambda p, t: 0.0, opt)


def test_make_step_trains_the_seed_task():
    # the seed tutorial: recover a random linear map with SGD on MSE
    x, y, w_real, b_real = linear_regression(random.key(0), 512, 10, 2)
    model, opt = fl.dense(2), fl.optim.sgd()
    ts = TrainState.create(random.key(1), model, opt, (10,))
    step = make_step(model, fl.losses.mse, opt)
    first = None
    for i in range(600):
        lo = (i * 64) % 512
        ts, m = step(ts, (x[lo:lo + 64], y[lo:lo + 64]), 0.2)
        first = m["loss"] if first is None else first
    assert m["loss"] < 1e-3 * first
    np.testing.assert_allclose(ts.params["w"], w_real, atol=0.05)
    np.testing.assert_allclose(ts.params["b"], b_real, atol=0.05)


# --- evaluate ---------------------------------------------------------------------------

def test_evaluate_weights_batches_by_size():
    model = _mlp()
    params, state, _ = model.init(random.key(0), (2,))
    x, y = _spiral_data(7)  # 21 examples: batches of 8, 8, 5
    out = model.apply(params, state, x)
    got = evaluate(model, params, state, (x, y), ["accuracy", SCE, "top_2_accuracy"], batch_size=8)
    assert got["accuracy"] == pytest.approx(np.mean(out.argmax(1) == y), abs=1e-12)
    assert got["softmax_cross_entropy"] == pytest.approx(float(SCE(out, y)), rel=1e-5)
    assert got["top_2_accuracy"] == pytest.approx(fl.metrics.top_k_accuracy(out, y, 2), abs=1e-12)
    with pytest.raises(ValueError, match="needs metrics"):
        evaluate(model, params, state, (x, y))
    with pytest.raises(ValueError, match="same length"):
        evaluate(model, params, state, (x, y[:3]), ["accuracy"])


def test_evaluate_runs_in_eval_mode():
    calls = []

    def init(key, in_shape):
        return {}, in_shape

    def apply(params, x):
        return x

    def vjp(params, x):
        return x, lambda dy: ({}, dy)

    base = fl.stateless_layer("spy", init, apply, vjp)

    def spy_apply(params, state, x, *, key=None, train=False):
        calls.append(train)
        return base.apply(params, state, x, key=key, train=train)

    spy = fl.Layer(base.init, spy_apply, base.vjp, "spy")
    x = np.eye(3, dtype=np.float32)
    assert evaluate(spy, {}, {}, (x, np.arange(3)), ["accuracy"], batch_size=2) == {"accuracy": 1.0}
    assert calls == [False, False]


# --- fit ----------------------------------------------------------------------------------

def _fit(train_data=None, **kw):
    args = dict(key=random.key(5), batch_size=16, lr=0.2, progress=False)
    args.update(kw)
    return fit(_mlp(), SCE, fl.optim.sgd(), train_data or _spiral_data(), **args)


def test_fit_trains_spirals_and_records_history():
    x, y = spirals(random.key(2), 30, 3, 0.1)
    model = _mlp(hidden=32)  # Adam: converges for every seed tried (0..7: 94-97% here)
    ts, hist = fit(model, SCE, fl.optim.adam(), _spiral_data(), key=random.key(5), batch_size=16,
                   lr=0.02, progress=False, epochs=60, val_data=(x, y), metrics=["accuracy"])
    assert ts.step == 60 * math.ceil(120 / 16)
    assert hist["epoch"] == list(range(1, 61))
    assert hist["step"][-1] == ts.step
    assert set(hist) == {"epoch", "step", "loss", "val_loss", "val_accuracy"}
    assert hist["loss"][-1] < 0.4 * hist["loss"][0]
    assert hist["val_accuracy"][-1] > 0.85
    assert hist["val_loss"][-1] == pytest.approx(float(SCE(model.apply(ts.params, ts.state, x), y)),
                                                 rel=1e-5)


def test_fit_epoch_loss_is_the_mean_of_the_step_losses():
    x, y = _spiral_data()
    model, opt = _mlp(), fl.optim.sgd()
    _, hist = fit(model, SCE, opt, (x, y), key=random.key(5), epochs=1, batch_size=50,
                  lr=0.1, progress=False)
    # replay by hand: same init key, same data order
    k_init, k_data = random.split(random.key(5))
    ts = TrainState.create(k_init, model, opt, (2,))
    step = make_step(model, SCE, opt)
    order = random.permutation(random.fold_in(k_data, 0), 120)
    total = 0.0
    for lo in range(0, 120, 50):
        idx = order[lo:lo + 50]
        ts, m = step(ts, (x[idx], y[idx]), 0.1)
        total += m["loss"] * len(idx)
    assert hist["loss"] == [pytest.approx(total / 120, rel=1e-12)]


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    straight, hist = _fit(epochs=2)
    ckpt = tmp_path / "ckpt.npz"
    first, _ = _fit(epochs=1, checkpoint_path=ckpt)
    loaded = io.load(ckpt)
    assert isinstance(loaded, TrainState) and loaded.step == first.step
    resumed, hist2 = _fit(epochs=2, train_state=loaded)
    assert tree.all_equal(straight, resumed)
    assert hist2["epoch"] == [2] and hist2["loss"] == hist["loss"][1:]


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    straight, _ = _fit(steps=20)
    ckpt = tmp_path / "ckpt.npz"
    part, hist = _fit(steps=11, checkpoint_path=ckpt, checkpoint_every=3)
    assert hist["epoch"] == [1, 2]  # 8 steps per epoch: a full epoch and a partial one
    resumed, _ = _fit(steps=20, train_state=io.load(ckpt))
    assert tree.all_equal(straight, resumed)


def test_fit_with_schedule_and_nothing_left_to_do():
    ts, _ = _fit(steps=3, lr=lambda s: 0.1 / (1 + s))
    assert ts.step == 3
    with pytest.warns(UserWarning, match="nothing to do"):
        again, hist = _fit(steps=3, train_state=ts)
    assert again is ts and hist["loss"] == []


def test_callbacks_get_logs_and_can_stop(tmp_path):
    seen = []

    def cb(ts, logs):
        seen.append((ts.step, logs["epoch"], logs["loss"]))
        return "stop" if logs["epoch"] == 2 else None

    ts, hist = _fit(epochs=10, callbacks=[cb], checkpoint_path=tmp_path / "c.npz")
    assert [s[1] for s in seen] == [1, 2] and ts.step == 16
    assert seen[-1][2] == hist["loss"][-1]
    assert io.load(tmp_path / "c.npz").step == 16


def test_non_finite_loss_raises_with_last_finite_state(tmp_path):
    x, y = _spiral_data()
    x = x.copy()
    x[77] = np.nan  # the step whose batch holds example 77 gets a nan loss
    _, k_data = random.split(random.key(5))
    position = int(np.flatnonzero(random.permutation(random.fold_in(k_data, 0), 120) == 77)[0])
    bad_step = position // 16
    assert bad_step > 0  # (4 for this key) so that there is a finite state to keep
    ckpt = tmp_path / "c.npz"
    with pytest.raises(NonFiniteLossError, match=f"at step {bad_step}") as info:
        _fit(epochs=3, checkpoint_path=ckpt, train_data=(x, y))
    err = info.value
    assert math.isnan(err.loss) and err.step == bad_step == err.train_state.step
    assert all(np.isfinite(a).all() for a in tree.leaves(err.train_state.params))
    assert tree.all_equal(io.load(ckpt), err.train_state)  # written to the checkpoint
    # the kept state is exactly where an uninterrupted run on clean data stands at that step
    clean, _ = _fit(steps=bad_step)
    assert tree.all_equal(clean, err.train_state)


def test_fit_argument_errors():
    with pytest.raises(ValueError, match="exactly one of epochs= or steps="):
        _fit()
    with pytest.raises(ValueError, match="exactly one"):
        _fit(epochs=1, steps=2)
    with pytest.raises(ValueError, match="pair"):
        fit(_mlp(), SCE, fl.optim.sgd(), np.zeros((4, 2), np.float32), key=random.key(0), epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        _fit(epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="progress"):
        _fit(epochs=1, progress="yes")


class _Tty(std_io.StringIO):
    def isatty(self):
        return True


def test_progress_line_without_tqdm(monkeypatch):
    monkeypatch.setattr(fit_module, "_load_tqdm", lambda: None)
    err = _Tty()
    monkeypatch.setattr(fit_module.sys, "stderr", err)
    _fit(steps=4, progress="auto")
    text = err.getvalue()
    assert text.startswith("\r") and "step 4/4" in text and "loss" in text and text.endswith("\n")
    quiet = std_io.StringIO()  # not a terminal: "auto" stays silent
    monkeypatch.setattr(fit_module.sys, "stderr", quiet)
    _fit(steps=4, progress="auto")
    assert quiet.getvalue() == ""
    _fit(steps=4, progress=True)
    assert "step 4/4" in quiet.getvalue()


def test_progress_uses_tqdm_when_installed(monkeypatch):
    tqdm = pytest.importorskip("tqdm", reason="tqdm is not installed").tqdm
    made = []

    def fake(**kw):
        bar = tqdm(**kw)
        made.append(kw)
        return bar
    monkeypatch.setattr(fit_module, "_load_tqdm", lambda: fake)
    err = std_io.StringIO()
    monkeypatch.setattr(fit_module.sys, "stderr", err)
    _fit(steps=3, progress=True)
    assert made and made[0]["total"] == 3 and "loss=" in err.getvalue()
