"""fundl.train: TrainState, make_step, and the fit / evaluate loop."""

import copy
import importlib
import io as std_io
import math
import pickle
import warnings

import numpy as np
import pytest

import fundl as fl
from fundl import io, random, tree
from fundl.datasets import linear_regression, spirals
from fundl.testing import read_only
from fundl import NonFiniteLossError, TrainState, evaluate, fit, make_step
from fundl.validate import SpecError

SCE = fl.losses.softmax_cross_entropy
# the module (``fundl.fit`` may be re-exported as the function in fundl/__init__.py)
fit_module = importlib.import_module("fundl.fit")
progress_module = importlib.import_module("fundl.fit.progress")


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
    with pytest.raises(ValueError, match="needs a loss or metrics"):
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
    assert list(hist) == ["epoch", "step", "loss", "accuracy", "lr", "val_loss", "val_accuracy"]
    assert hist["lr"] == [0.02] * 60 and hist["accuracy"][-1] > 0.85
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


def _with_an_empty_param():
    """dense(3) with an extra (0, 3) parameter that nothing uses: a zero in the shape."""
    def init(key, in_shape):
        w = random.normal(key, (in_shape[-1], 3), np.float32) * np.float32(0.3)
        return {"w": w, "empty": np.zeros((0, 3), np.float32)}, (3,)

    def apply(params, x):
        return x @ params["w"]

    def vjp(params, x):
        return apply(params, x), lambda dy: ({"w": x.T @ dy, "empty": np.zeros((0, 3), dy.dtype)},
                                             dy @ params["w"].T)

    return fl.stateless_layer("with_empty", init, apply, vjp)


def test_checkpoints_of_a_train_state_with_a_zero_size_array(tmp_path):
    # the loop file (written for a callback with state) holds a digest of the train state,
    # which once failed on an array of shape (0, 3): "memoryview: cannot cast view with
    # zeros in shape or strides"
    def run(steps, **kw):
        return fit(_with_an_empty_param(), SCE, fl.optim.sgd(), _spiral_data(),
                   key=random.key(5), batch_size=16, lr=0.2, progress=False, steps=steps,
                   callbacks=[fl.EarlyStopping("loss", patience=100)], **kw)

    straight, _ = run(20)
    ckpt = tmp_path / "ckpt.npz"
    run(11, checkpoint_path=ckpt, checkpoint_every=3)
    loaded = io.load(ckpt)
    assert loaded.params["empty"].shape == (0, 3) and loaded.step == 11
    assert (tmp_path / "ckpt.loop.npz").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the loop file's record is found: no warning
        resumed, _ = run(20, train_state=loaded, checkpoint_path=ckpt)
    assert tree.all_equal(straight, resumed)


def test_the_train_state_digest_is_of_shapes_dtypes_and_bytes():
    import hashlib
    from fundl.fit.loop_state import digest

    def reference(ts):   # the bytes in C order, as the loop files written so far hold them
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(int(ts.step)).encode())
        for leaf in tree.leaves((ts.params, ts.state, ts.opt_state, ts.key)):
            if isinstance(leaf, np.ndarray):
                h.update(f"{leaf.dtype.str}{leaf.shape}".encode() + leaf.tobytes())
            else:
                h.update(repr(leaf).encode())
        return h.hexdigest()

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    ts = TrainState({"w": w.T, "b": np.float64(2.5)}, {"n": np.array(3)}, (np.zeros((0, 3)),),
                    random.key(1), 4)
    assert digest(ts) == reference(ts)
    for empty in [(0, 3), (3, 0), (2, 0, 5), (0,)]:
        e = ts._replace(opt_state=(np.zeros(empty),))
        assert digest(e) == reference(e)
    assert digest(ts._replace(opt_state=(np.zeros((3, 0)),))) != digest(ts)
    assert digest(ts._replace(params={"w": w, "b": np.float64(2.5)})) != digest(ts)


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
    monkeypatch.setattr(progress_module, "_load_tqdm", lambda: None)
    err = _Tty()
    monkeypatch.setattr(progress_module.sys, "stderr", err)
    _fit(steps=4, progress="auto")
    text = err.getvalue()
    assert text.startswith("\r") and "step 4/4" in text and "loss" in text and text.endswith("\n")
    quiet = std_io.StringIO()  # not a terminal: "auto" stays silent
    monkeypatch.setattr(progress_module.sys, "stderr", quiet)
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
    monkeypatch.setattr(progress_module, "_load_tqdm", lambda: fake)
    err = std_io.StringIO()
    monkeypatch.setattr(progress_module.sys, "stderr", err)
    _fit(steps=3, progress=True)
    assert made and made[0]["total"] == 3 and "loss=" in err.getvalue()


# --- no silent wrong result: non-finite states never kept --------------------------------

def _finite(ts):
    return all(np.isfinite(a).all() for a in tree.leaves((ts.params, ts.state, ts.opt_state))
               if isinstance(a, np.ndarray) and a.dtype.kind == "f")


def test_params_overflow_with_a_finite_loss_keeps_the_last_finite_state(tmp_path):
    # lr 1e39 overflows float32: the step reports a finite loss but makes inf/nan params;
    # the old loop kept that state, then saved it as "the last finite" one at the next step
    ckpt = tmp_path / "c.npz"
    ts, _ = _fit(epochs=2, checkpoint_path=ckpt)
    assert ts.step == 16
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(
            NonFiniteLossError, match=r"params/dense_0/\w+ after the step from step 16 \(its loss "
                                      r".* was finite\)") as info:
        _fit(epochs=4, lr=1e39, train_state=ts, checkpoint_path=ckpt)
    err = info.value
    assert err.step == 16 and math.isfinite(err.loss) and err.where.startswith("params/")
    assert err.train_state is ts and _finite(err.train_state)
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.where == err.where and tree.all_equal(back.train_state, ts)
    assert tree.all_equal(io.load(ckpt), ts)  # the checkpoint still holds step 16, finite


def test_nan_lr_is_refused_before_training_and_the_checkpoint_is_kept(tmp_path):
    ckpt = tmp_path / "c.npz"
    ts, _ = _fit(epochs=2, checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="fit: lr: the learning rate must be finite"):
        _fit(epochs=4, lr=float("nan"), train_state=ts, checkpoint_path=ckpt)
    with pytest.raises(ValueError, match=r"fit: lr \(the schedule at step 16\).*got inf"):
        _fit(epochs=4, lr=lambda s: float("inf"), train_state=ts, checkpoint_path=ckpt)
    with pytest.raises(TypeError, match="fit: lr"):
        _fit(epochs=4, lr="0.1")
    loaded = io.load(ckpt)
    assert loaded.step == 16 and tree.all_equal(loaded, ts)


def test_an_exploding_loss_keeps_a_finite_state_training_reached(tmp_path):
    # linear regression with too large a step: the error grows geometrically until inf
    x, y, _, _ = linear_regression(random.key(0), 64, 10, 2)
    ckpt = tmp_path / "c.npz"
    kw = dict(key=random.key(5), batch_size=16, lr=1.0, progress=False)
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(NonFiniteLossError, match="non-finite training loss inf at step 47") \
                as info:
            fit(fl.dense(2), fl.losses.mse, fl.optim.sgd(), (x, y), epochs=200,
                checkpoint_path=ckpt, **kw)
    err = info.value
    kept = err.train_state
    assert kept.step == err.step == 47 and err.where == "loss" and _finite(kept)
    assert tree.all_equal(io.load(ckpt), kept)
    assert len(err.history["loss"]) == 11  # 4 steps per epoch: 11 whole epochs before step 47
    assert err.history["loss"][-1] > 1e20 * err.history["loss"][0]
    with np.errstate(over="ignore"):
        clean, _ = fit(fl.dense(2), fl.losses.mse, fl.optim.sgd(), (x, y), steps=47, **kw)
    assert tree.all_equal(clean, kept)  # exactly where training stood


def test_a_non_finite_train_state_is_refused():
    ts, _ = _fit(steps=2)
    bad = ts._replace(params=tree.map(lambda a: np.full_like(a, np.nan), ts.params))
    with pytest.raises(ValueError, match=r"train_state holds non-finite values \(params/dense_0/w\)"):
        _fit(steps=4, train_state=bad)


# --- no silent wrong result: everything checked before the first step ----------------------

def test_bad_val_data_fails_before_training(tmp_path):
    x, y = _spiral_data()
    ckpt = tmp_path / "c.npz"
    seen = []
    kw = dict(epochs=2, checkpoint_path=ckpt, callbacks=[lambda ts, logs: seen.append(1)])
    with pytest.raises(ValueError, match=r"fit: val_data x \(float32 of shape \(120, 3\)\) does "
                                         r"not fit the model: layer 'dense_0'.*3"):
        _fit(val_data=(np.zeros((120, 3), np.float32), y), **kw)
    with pytest.raises(ValueError, match=r"fit: val_data x \(int64 .*does not fit the model"):
        _fit(val_data=(x.astype(np.int64), y), **kw)
    labels = y.copy()
    labels[50] = 7  # out of range, and not among the first examples
    with pytest.raises(ValueError, match=r"fit: the loss softmax_cross_entropy does not fit .* "
                                         r"val_data y .*labels must lie in \[0, 3\)"):
        _fit(val_data=(x, labels), **kw)
    with pytest.raises(ValueError, match="fit: val_data: arrays must have the same length"):
        _fit(val_data=(x, y[:5]), **kw)
    with pytest.raises(ValueError, match=r"fit: train_data x \(float32 of shape \(120, 2\)\) "
                                         r"does not fit the model: layer 'conv1d_0'"):
        fit(fl.serial(fl.conv1d(4, 3), fl.flatten(), fl.dense(3)), SCE, fl.optim.sgd(), (x, y),
            key=random.key(0), progress=False, **kw)
    assert seen == [] and not ckpt.exists()  # nothing trained, nothing written


def test_metrics_and_loss_are_checked_against_the_model_before_training(tmp_path):
    x, y = _spiral_data()
    two = fl.serial(fl.dense(8), fl.relu(), fl.dense(2))
    y2 = (y > 0).astype(np.int64)
    kw = dict(key=random.key(0), epochs=1, progress=False, val_data=(x, y2))
    with pytest.raises(ValueError, match=r"fit: metrics: 'top_5_accuracy' does not fit the "
                                         r"model's output \(float32 of shape \(\d, 2\).*k must "
                                         r"be in \[1, 2\], got 5"):
        fit(two, SCE, fl.optim.sgd(), (x, y2), metrics=["top_5_accuracy"], **kw)
    with pytest.raises(ValueError, match="fit: metrics: unknown metric 'acuracy'"):
        fit(two, SCE, fl.optim.sgd(), (x, y2), metrics=["acuracy"], **kw)
    with pytest.raises(ValueError, match=r"fit: the loss mse does not fit the model's output "
                                         r"\(float32 of shape \(\d, 2\).*train_data y"):
        fit(two, fl.losses.mse, fl.optim.sgd(), (x, y2), **kw)
    # metrics without val_data: computed on the training batches
    _, hist = fit(two, SCE, fl.optim.sgd(), (x, y2), key=random.key(0), steps=1, progress=False,
                  metrics=["accuracy"])
    assert list(hist) == ["epoch", "step", "loss", "accuracy", "lr"]


def test_counts_must_be_positive_integers():
    for kw, name in [(dict(epochs=1.7), "epochs"), (dict(epochs=2.0), "epochs"),
                     (dict(epochs=0), "epochs"), (dict(epochs=True), "epochs"),
                     (dict(steps=-1), "steps"), (dict(steps=np.float32(3)), "steps"),
                     (dict(epochs=1, batch_size=1.5), "batch_size"),
                     (dict(epochs=1, checkpoint_every=0), "checkpoint_every")]:
        with pytest.raises(ValueError, match=f"fit: {name} must be a"):
            _fit(**kw)
    ts, _ = _fit(steps=np.int64(3))
    assert ts.step == 3


def test_the_parts_must_have_the_right_types():
    data = _spiral_data()
    with pytest.raises(TypeError, match=r"optimizer must be a fundl Optimizer, got function "
                                        r"\(did you forget to call it, e.g. fl.optim.adam\(\)\?\)"):
        fit(_mlp(), SCE, fl.optim.adam, data, key=random.key(0), epochs=1)
    with pytest.raises(TypeError, match="fit: loss must be a fundl Loss.*fl.losses.huber"):
        fit(_mlp(), fl.losses.huber, fl.optim.sgd(), data, key=random.key(0), epochs=1)
    with pytest.raises(TypeError, match="fit: model must be a fundl Layer"):
        fit(lambda x: x, SCE, fl.optim.sgd(), data, key=random.key(0), epochs=1)
    with pytest.raises(TypeError, match=r"fit: callbacks\[0\] must be a function"):
        _fit(epochs=1, callbacks=["stop"])


def test_a_resumed_state_is_checked_against_the_optimizer_and_the_model(tmp_path):
    data = _spiral_data()
    kw = dict(key=random.key(5), batch_size=16, progress=False)
    adam_ts, _ = fit(_mlp(), SCE, fl.optim.adam(), data, epochs=1, **kw)
    with pytest.raises(SpecError, match=r"fit: train_state.opt_state does not match the optimizer "
                                        r"'sgd'.*unexpected keys: train_state.opt_state/count"):
        fit(_mlp(), SCE, fl.optim.sgd(), data, epochs=2, train_state=adam_ts, **kw)
    sgd_ts, _ = _fit(epochs=1)
    with pytest.raises(SpecError, match=r"'momentum'.*missing keys: train_state.opt_state/velocity"):
        fit(_mlp(), SCE, fl.optim.momentum(), data, epochs=2, train_state=sgd_ts, **kw)
    with pytest.raises(SpecError, match=r"fit: train_state does not match the model \(for inputs "
                                        r"of per-example shape \(2,\)\): train_state.params/dense_0"
                                        r"/w: expected shape \(2, 8\), got shape \(2, 16\)"):
        fit(_mlp(hidden=8), SCE, fl.optim.sgd(), data, epochs=2, train_state=sgd_ts, **kw)
    with pytest.raises(TypeError, match="train_state must be a TrainState"):
        _fit(epochs=2, train_state=dict(sgd_ts._asdict()))


# --- dtypes ---------------------------------------------------------------------------------

def test_float64_data_is_cast_to_the_params_dtype_with_one_warning():
    x, y = _spiral_data()
    x64 = read_only(x.astype(np.float64))
    with pytest.warns(UserWarning, match=r"x is float64 but the params are float32: casting") as rec:
        cast, hist = _fit(epochs=2, train_data=(x64, y), val_data=(x64, y))
    assert len([w for w in rec if "casting" in str(w.message)]) == 1  # once for train and val
    plain, hist32 = _fit(epochs=2, val_data=(x, y))
    assert tree.all_equal(cast, plain) and hist == hist32
    assert {a.dtype for a in tree.leaves(cast.params)} == {np.dtype(np.float32)}


def test_training_in_float64_with_cast_params():
    x, y = _spiral_data()
    x64 = x.astype(np.float64)
    model, opt = _mlp(), fl.optim.sgd()
    ts = TrainState.create(random.key(0), model, opt, (2,))
    p64 = tree.cast(ts.params, np.float64)
    ts = ts._replace(params=p64, state=tree.cast(ts.state, np.float64), opt_state=opt.init(p64))
    import warnings as _w
    with _w.catch_warnings():
        _w.simplefilter("error")  # no cast, no warning
        out, hist = fit(model, SCE, opt, (x64, y), key=random.key(5), epochs=3, batch_size=16,
                        lr=0.2, train_state=ts, progress=False)
    assert {a.dtype for a in tree.leaves(out.params)} == {np.dtype(np.float64)}
    assert out.step == 24 and hist["loss"][-1] < hist["loss"][0]


# --- multi-input models and predict ------------------------------------------------------

def _two_input_model():
    return fl.serial(fl.parallel(fl.dense(8), fl.dense(8)), fl.fan_in_sum(), fl.relu(),
                     fl.dense(3))


def test_fit_evaluate_predict_with_a_tuple_of_inputs():
    x, y = _spiral_data()
    xs = (read_only(x[:, :1].copy()), read_only(x[:, 1:].copy()))
    model, opt = _two_input_model(), fl.optim.sgd()
    ts, hist = fit(model, SCE, opt, (xs, y), key=random.key(5), epochs=2, batch_size=50, lr=0.1,
                   progress=False, val_data=(xs, y), metrics=["accuracy"])
    # replay by hand: the two inputs are shuffled together, in the order of one array
    k_init, k_data = random.split(random.key(5))
    ref = TrainState.create(k_init, model, opt, ((1,), (1,)))
    step = make_step(model, SCE, opt)
    for epoch in range(2):
        order = random.permutation(random.fold_in(k_data, epoch), 120)
        for lo in range(0, 120, 50):
            idx = order[lo:lo + 50]
            ref, _ = step(ref, ((xs[0][idx], xs[1][idx]), y[idx]), 0.1)
    assert tree.all_equal(ts, ref)
    out = model.apply(ts.params, ts.state, xs)
    assert hist["val_accuracy"][-1] == pytest.approx(float(np.mean(out.argmax(1) == y)), abs=1e-12)
    got = fl.predict(model, ts.params, ts.state, xs, batch_size=32)
    np.testing.assert_allclose(got, out, rtol=1e-6, atol=1e-7)
    scores = evaluate(model, ts.params, ts.state, (xs, y), ["accuracy"], batch_size=32)
    assert scores["accuracy"] == hist["val_accuracy"][-1]
    with pytest.raises(TypeError, match="x is a dict.*pass x as a tuple"):
        fit(model, SCE, opt, ({"a": xs[0], "b": xs[1]}, y), key=random.key(5), epochs=1)
    with pytest.raises(ValueError, match=r"same length on axis 0, got shapes \[0\]\[0\] \(120, 1\)"):
        fit(model, SCE, opt, ((xs[0], xs[1][:5]), y), key=random.key(5), epochs=1)


def test_predict_concatenates_batches_and_tuple_outputs():
    x, _ = _spiral_data()
    model = fl.serial(fl.dense(4), fl.fan_out(2), fl.parallel(fl.dense(2), fl.dense(3)))
    params, state, _ = model.init(random.key(1), (2,))
    whole = model.apply(params, state, x)
    got = fl.predict(model, params, state, read_only(x), batch_size=50)  # batches of 50, 50, 20
    assert isinstance(got, tuple) and [a.shape for a in got] == [(120, 2), (120, 3)]
    for a, b in zip(got, whole):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    single = fl.predict(_mlp(), *(_mlp().init(random.key(2), (2,))[:2]), x[:7], batch_size=3)
    assert single.shape == (7, 3) and single.dtype == np.float32
    with pytest.warns(UserWarning, match="predict: x is float64"):
        fl.predict(model, params, state, x.astype(np.float64))
    with pytest.raises(ValueError, match="predict: batch_size"):
        fl.predict(model, params, state, x, batch_size=0)


# --- early stopping -----------------------------------------------------------------------

def _val():
    xv, yv = spirals(random.key(2), 20, 3, 0.1)
    return read_only(xv), read_only(yv)


def test_early_stopping_restores_exactly_the_best_epoch(tmp_path):
    es = fl.EarlyStopping("val_loss", patience=2)
    ckpt = tmp_path / "c.npz"
    kw = dict(lr=2.0, val_data=_val())
    ts, hist = _fit(epochs=30, callbacks=[es], checkpoint_path=ckpt, **kw)
    losses = hist["val_loss"]
    best = int(np.argmin(losses)) + 1
    assert len(losses) == best + 2 < 30  # stopped after 2 epochs without an improvement
    assert all(v > losses[best - 1] for v in losses[best:])
    assert ts.step == best * 8
    at_best, _ = _fit(epochs=best, **kw)
    assert tree.all_equal(ts, at_best)  # bit-identical to a run stopped at the best epoch
    assert io.load(ckpt).step == len(losses) * 8  # the checkpoint holds the last state reached
    # the same (immutable) callback again gives the same run; restore_best=False keeps the last
    again, hist2 = _fit(epochs=30, callbacks=[es], **kw)
    assert tree.all_equal(again, ts) and hist2 == hist
    last, _ = _fit(epochs=30, callbacks=[fl.EarlyStopping(patience=2, restore_best=False)], **kw)
    assert last.step == len(losses) * 8


def test_early_stopping_modes_and_the_callback_by_hand():
    info = fl.TrainInfo(["epoch", "val_accuracy"], 0, 10, 1, {})
    es = fl.EarlyStopping("val_accuracy", patience=1, min_delta=0.05)   # mode "auto": max
    es.on_train_begin(info)
    ts = [TrainState({}, {}, (), None, s) for s in range(5)]
    assert es.on_epoch_end(ts[0], {"epoch": 1, "val_accuracy": 0.5}) is None
    assert es.on_epoch_end(ts[1], {"epoch": 2, "val_accuracy": 0.6}) is None   # +0.1 > min_delta
    assert es.on_epoch_end(ts[2], {"epoch": 3, "val_accuracy": 0.64}) == "stop"  # +0.04: not enough
    assert es.best == 0.6 and es.best_epoch == 2 and es.on_train_end(ts[4]) is ts[1]
    es = fl.EarlyStopping("loss", patience=0)
    es.on_train_begin(fl.TrainInfo(["epoch", "step", "loss"], 0, 10, 1, {}))
    assert es.on_epoch_end(ts[0], {"loss": float("nan")}) == "stop"
    assert es.on_train_end(ts[3]) is None                              # no finite value: keep
    with pytest.raises(ValueError, match=r"monitor 'val_loss' is not among the logs \['epoch', "
                                         r"'step', 'loss', 'lr'\] \(validation logs need "
                                         r"val_data=\)"):
        _fit(epochs=3, callbacks=[fl.EarlyStopping()])
    with pytest.raises(ValueError, match=r"mode='auto' cannot tell whether a higher or a lower "
                                         r"'val_zork' is better; pass mode='max' or mode='min'"):
        _fit(epochs=3, val_data=_val(), metrics={"zork": lambda p, t: 0.5},
             callbacks=[fl.EarlyStopping("val_zork")])
    for bad, match in [(dict(mode="best"), "mode"), (dict(patience=-1), "patience"),
                       (dict(min_delta=-0.1), "min_delta"), (dict(monitor=3), "monitor")]:
        with pytest.raises((ValueError, TypeError), match=match):
            fl.EarlyStopping(**bad)


def test_fit_keeps_freed_memory_only_when_asked(monkeypatch):
    import fundl.perf
    calls = []
    monkeypatch.setattr(fundl.perf, "keep_freed_memory", lambda: calls.append(1) or True)
    a, _ = _fit(steps=2)
    assert calls == []                               # the allocator is left as it is
    b, _ = _fit(steps=2, keep_freed_memory=True)
    assert calls == [1] and tree.all_equal(a, b)     # the same training, bit for bit
    with pytest.raises(TypeError, match="keep_freed_memory must be True or False"):
        _fit(steps=2, keep_freed_memory="yes")
