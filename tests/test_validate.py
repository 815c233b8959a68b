"""fundl.validate: params, state and optimizer state checked against what init made."""

import numpy as np
import pytest

import fundl as fl
from fundl.validate import SpecError, TreeSpec

KEY = fl.random.key(0)


def _mlp():
    return fl.serial(fl.dense(3), fl.relu(), fl.dense(2))


def _x(n=4, d=5):
    return fl.random.normal(fl.random.key(1), (n, d))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((5, 3), np.float32), r"params/dense_0/b: expected shape \(3,\), got shape \(5, 3\)"),
    (np.zeros((1,), np.float32), r"params/dense_0/b: expected shape \(3,\), got shape \(1,\)"),
    (np.zeros((3,), np.float64), r"params/dense_0/b: dtype float64 differs from "
                                 r"params/dense_0/w \(float32\)"),
])
def test_a_wrong_bias_is_an_error_not_a_broadcast(bad, message):
    model = _mlp()
    params, state, _ = model.init(KEY, (5,))
    params["dense_0"]["b"] = bad
    for run in (lambda: model.apply(params, state, _x()), lambda: model.vjp(params, state, _x())):
        with pytest.raises(SpecError, match=message):
            run()
    ts = fl.TrainState.create(KEY, model, fl.optim.sgd(), (5,))
    ts = ts._replace(params=params)
    step = fl.make_step(model, fl.losses.mse, fl.optim.sgd())
    with pytest.raises(SpecError, match=message):
        step(ts, (_x(), np.zeros((4, 2), np.float32)), 0.1)


def test_an_untransposed_weight_is_blamed_on_the_weight_not_the_input():
    model = _mlp()
    params, state, _ = model.init(KEY, (5,))
    params["dense_0"]["w"] = params["dense_0"]["w"].T.copy()
    with pytest.raises(SpecError, match=r"params/dense_0/w: expected shape \(5, 3\), got shape "
                                         r"\(3, 5\)"):
        model.apply(params, state, _x())


def test_missing_and_unexpected_keys_are_listed_with_their_paths():
    model = _mlp()
    params, state, _ = model.init(KEY, (5,))
    del params["dense_0"]["w"]
    params["dense_0"]["bias"] = params["dense_0"].pop("b")
    with pytest.raises(SpecError, match=r"params do not match the model: missing keys: "
                                         r"params/dense_0/w, params/dense_0/b; unexpected keys: "
                                         r"params/dense_0/bias"):
        model.apply(params, state, _x())
    params, state, _ = model.init(KEY, (5,))
    del state["relu_1"]
    with pytest.raises(SpecError, match=r"state do not match the model: missing keys: "
                                         r"state/relu_1"):
        model.vjp(params, state, _x())


def test_an_lstm_weight_of_the_wrong_height_is_caught():
    model = fl.serial(fl.lstm(4), fl.flatten(), fl.dense(2))
    params, state, _ = model.init(KEY, (6, 3))
    params["lstm_0"]["w_h"] = np.zeros((5, 16), np.float32)
    with pytest.raises(SpecError, match=r"params/lstm_0/w_h: expected shape \(4, 16\), got shape "
                                         r"\(5, 16\)"):
        model.apply(params, state, fl.random.normal(KEY, (2, 6, 3)))


def test_a_whole_tree_cast_passes_and_a_model_never_initialised_here_is_still_checked():
    model = _mlp()
    params, state, _ = model.init(KEY, (5,))
    y64 = model.apply(fl.tree.cast(params, np.float64), state, _x().astype(np.float64))
    assert y64.dtype == np.float64
    twin = _mlp()                       # the same architecture, never initialised: params loaded
    np.testing.assert_array_equal(twin.apply(params, state, _x()), model.apply(params, state, _x()))
    params["dense_2"]["b"] = np.zeros((7,), np.float32)
    with pytest.raises(SpecError, match=r"params/dense_2/b: expected shape \(2,\)"):
        twin.apply(params, state, _x())


def test_nested_models_name_the_full_path():
    model = fl.serial(fl.dense(4), fl.residual(fl.serial(fl.dense(4), fl.tanh())), fl.dense(2))
    params, state, _ = model.init(KEY, (3,))
    params["residual_1"]["serial_0"]["dense_0"]["w"] = np.zeros((4, 5), np.float32)
    with pytest.raises(SpecError, match=r"params/residual_1/serial_0/dense_0/w: expected shape "
                                         r"\(4, 4\), got shape \(4, 5\)"):
        model.apply(params, state, _x(2, 3))


def test_tree_spec_on_other_trees():
    spec = TreeSpec({"a": np.zeros(2, np.int64), "b": [np.ones((1, 2)), 3.0]})
    spec.check({"a": np.ones(2, np.int64), "b": [np.zeros((1, 2)), 1.0]})
    with pytest.raises(SpecError, match=r"tree/a: expected dtype int64, got dtype int32"):
        spec.check({"a": np.ones(2, np.int32), "b": [np.zeros((1, 2)), 1.0]}, "tree")
    with pytest.raises(SpecError, match=r"tree/b/1: expected an array|tree/b/1: expected a float"):
        spec.check({"a": np.ones(2, np.int64), "b": [np.zeros((1, 2)), np.ones(1)]}, "tree")
    with pytest.raises(SpecError, match=r"missing keys: tree/b/1"):
        spec.check({"a": np.ones(2, np.int64), "b": [np.zeros((1, 2))]}, "tree")


def test_the_planned_exact_test_of_nested_dicts_misses_no_difference():
    made = {"dense_0": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)},
            "relu_1": {}, "block_2": {"norm_0": {"scale": np.ones(2, np.float32)}}}
    spec = TreeSpec(made)
    assert spec.is_exactly is not None and spec.is_exactly(fl.tree.map(np.copy, made))

    def changed(edit):
        t = fl.tree.map(np.copy, made)
        edit(t)
        return t

    others = [
        changed(lambda t: t["dense_0"].update(extra=np.ones(1, np.float32))),   # a key more
        changed(lambda t: t["dense_0"].pop("b")),                                  # a key less
        changed(lambda t: t["relu_1"].update(w=np.ones(1, np.float32))),         # an empty dict not empty
        changed(lambda t: t.update(relu_1=[])),                                   # another container
        changed(lambda t: t["block_2"]["norm_0"].update(scale=np.ones(3, np.float32))),  # shape
        changed(lambda t: t["dense_0"].update(b=np.zeros(2, np.float64))),       # dtype
        changed(lambda t: t["dense_0"].update(b=np.ma.zeros(2, np.float32))),    # an array subclass
        changed(lambda t: t["dense_0"].update(b=[0.0, 0.0])),                    # not an array
        changed(lambda t: t.update(dense_9=t.pop("dense_0"))),                    # a key renamed
    ]
    for other in others:
        assert not spec.is_exactly(other)
    assert TreeSpec({"a": [np.ones(1)]}).is_exactly is None   # lists: only the general walk
    empty = TreeSpec({"dense_0": {}, "block_1": {"relu_0": {}}})  # a state without arrays
    assert empty.is_exactly({"dense_0": {}, "block_1": {"relu_0": {}}})
    for other in ({"dense_0": {}, "block_1": {}}, {"dense_0": {}, "block_1": {"relu_0": []}},
                  {"dense_0": np.ones(3), "block_1": {"relu_0": {}}},      # no ValueError
                  {"dense_0": {}, "block_1": {"relu_0": {"x": np.ones(2)}}}, [{}], None):
        assert not empty.is_exactly(other)
    with pytest.raises(SpecError, match="params/block_2/norm_0/scale: expected shape"):
        spec.check(others[4])


# --- the step's own checks ----------------------------------------------------------------

def _ts_step(opt=None):
    model = _mlp()
    opt = opt or fl.optim.adam()
    return model, fl.TrainState.create(KEY, model, opt, (5,)), fl.make_step(model, fl.losses.mse,
                                                                             opt)


BATCH = (fl.random.normal(KEY, (4, 5)), np.zeros((4, 2), np.float32))


@pytest.mark.parametrize("lr, error, message", [
    (float("nan"), ValueError, "finite and >= 0"), (float("inf"), ValueError, "finite and >= 0"),
    (-0.1, ValueError, "finite and >= 0"), ("0.1", TypeError, "must be a number or a schedule"),
    (None, TypeError, "must be a number or a schedule"),
    (lambda step: float("nan"), ValueError, "finite and >= 0"),
])
def test_the_step_rejects_a_bad_learning_rate(lr, error, message):
    _, ts, step = _ts_step()
    with pytest.raises(error, match=message):
        step(ts, BATCH, lr)


def test_the_step_names_bad_batches_and_a_foreign_or_missing_optimizer_state():
    model, ts, step = _ts_step()
    with pytest.raises(ValueError, match=r"batch must be a pair \(x, y\), got a tuple of 3"):
        step(ts, BATCH + (None,), 0.1)
    with pytest.raises(ValueError, match=r"the batch is empty"):
        step(ts, (BATCH[0][:0], BATCH[1][:0]), 0.1)
    with pytest.raises(SpecError, match=r"opt_state do not match.*another optimizer than adam"):
        step(ts._replace(opt_state=None), BATCH, 0.1)
    momentum_ts = fl.TrainState.create(KEY, model, fl.optim.momentum(), (5,))
    with pytest.raises(SpecError, match=r"opt_state"):
        step(ts._replace(opt_state=momentum_ts.opt_state), BATCH, 0.1)
    with pytest.raises(TypeError, match=r"did you forget to call it, e\.g\. fl\.optim\.adam\(\)"):
        fl.make_step(model, fl.losses.mse, fl.optim.adam)
    ts2, metrics = step(ts, BATCH, 0.1)
    assert ts2.step == 1 and np.isfinite(metrics["loss"])


@pytest.mark.parametrize("opt", [fl.optim.momentum(), fl.optim.nesterov(), fl.optim.lion(),
                                 fl.optim.sgd(), fl.optim.adam()])
def test_optimizers_refuse_gradients_of_another_shape(opt):
    params = {"w": np.ones((3, 2)), "b": np.zeros(2)}
    grads = {"w": np.ones((3, 2)), "b": np.ones((1,))}    # broadcastable, and wrong
    with pytest.raises(ValueError, match=r"shape \(1,\).*\(2,\)"):
        opt.update(params, grads, opt.init(params), 0.1)


def test_float16_adam_with_the_default_eps_says_so():
    params = {"w": np.zeros(3, np.float16)}
    opt = fl.optim.adam()
    with pytest.raises(ValueError, match=r"eps=1e-08 is 0 in float16"):
        opt.update(params, params, opt.init(params), 0.1)
    opt = fl.optim.adam(eps=1e-4)
    new, _ = opt.update(params, params, opt.init(params), 0.1)
    assert new["w"].dtype == np.float16 and np.isfinite(new["w"]).all()
