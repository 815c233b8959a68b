import numpy as np
import pytest

import fundl as fl
from fundl import plan
from fundl.checks import LayerError
from fundl.core import Layer, elementwise_layer, stateless_layer
from fundl.testing import check_layer


def call_vjp(layer, params, state, x, key=None, need_dx=True, x_donated=False, dy_donated=False):
    """``layer``'s vjp with these hints, bound as the planner binds them for a child of serial."""
    return plan.specialise(layer, need_dx, x_donated, dy_donated).vjp_fn(params, state, x, key=key)


def scale_layer(factor=3.0):
    """A user-style layer from three plain functions: y = factor * a * x, param a of shape (d,)."""
    def init(key, in_shape):
        return {"a": np.ones(in_shape[-1:], np.float32)}, tuple(in_shape)

    def apply(params, x):
        return factor * params["a"] * x

    def vjp(params, x):
        def pullback(dy):
            return {"a": (factor * dy * x).reshape(-1, x.shape[-1]).sum(0)}, factor * params["a"] * dy
        return apply(params, x), pullback

    return stateless_layer("scale", init, apply, vjp)


def test_stateless_layer_builds_a_full_layer():
    layer = scale_layer()
    assert isinstance(layer, Layer) and layer.name == "scale"
    params, state, out_shape = layer.init(fl.random.key(0), (4,))
    assert state == {} and out_shape == (4,)
    x = np.ones((2, 4), np.float32)
    y, new_state, pullback = layer.vjp(params, state, x)
    assert new_state == {} and (y == 3.0).all()
    assert check_layer(layer, (4,)).max_error < 1e-6


def test_layer_error_message_and_paths():
    err = LayerError("expected x, got y")
    assert str(err) == "expected x, got y" and not err.located
    named = err.at((), "dense")
    assert str(named) == "layer 'dense': expected x, got y" and named.located
    nested = err.at(("block_1", "dense_0"), "dense")
    assert nested.path == ("block_1", "dense_0")
    assert str(nested) == "layer 'block_1/dense_0' (dense): expected x, got y"
    assert isinstance(nested, ValueError)
    # locating is idempotent: the innermost place is kept
    assert nested.at(("block_1",), "serial").path == ("block_1", "dense_0")


def test_stateless_layer_attributes_errors_to_its_name():
    def init(key, in_shape):
        raise LayerError(f"bad shape {in_shape}")
    layer = stateless_layer("mine", init, lambda p, x: x, lambda p, x: (x, None))
    with pytest.raises(LayerError, match=r"layer 'mine': bad shape \(3,\)"):
        layer.init(fl.random.key(0), (3,))
    model = fl.serial(fl.relu(), layer)
    with pytest.raises(LayerError, match=r"layer 'mine_1' \(mine\): bad shape \(3,\)"):
        model.init(fl.random.key(0), (3,))


def test_elementwise_layer_keeps_only_requested_residuals():
    seen = {}

    def backward(x, y, dy):
        seen["x"], seen["y"] = x, y
        return dy * 2.0

    layer = elementwise_layer("double", lambda x: x * 2.0, backward, saves="y")
    x = np.ones((2, 3), np.float32)
    _, _, pullback = layer.vjp({}, {}, x)
    pullback(np.ones((2, 3), np.float32))
    assert seen["x"] is None and seen["y"] is not None
    with pytest.raises(ValueError):
        elementwise_layer("bad", np.sin, backward, saves="z")
    with pytest.raises(LayerError, match="floating-point input"):
        layer.apply({}, {}, np.ones((2, 3), np.int32))


def test_call_vjp_passes_need_dx_only_to_layers_that_accept_it():
    calls = []

    def raw_vjp(params, state, x, *, key=None, train=True):  # hand-written, without need_dx
        calls.append("raw")
        return x, state, lambda dy: ({}, dy)

    raw = Layer(lambda k, s: ({}, {}, s), lambda p, s, x, *, key=None, train=False: x, raw_vjp, "raw")
    x = np.ones((2, 3), np.float32)
    y, _, pb = call_vjp(raw, {}, {}, x, need_dx=False)
    assert calls == ["raw"] and pb(x)[1] is x
    # and it composes inside serial, including as the first layer under make_step
    model = fl.serial(raw, fl.dense(2))
    step = fl.make_step(model, fl.losses.mse, fl.optim.sgd())
    ts = fl.TrainState.create(fl.random.key(0), model, fl.optim.sgd(), (3,))
    ts2, metrics = step(ts, (x, np.zeros((2, 2), np.float32)), 0.1)
    assert ts2.step == 1 and np.isfinite(metrics["loss"])


def test_layers_are_immutable_records():
    layer = fl.dense(3)
    with pytest.raises(AttributeError, match="immutable"):
        layer.name = "other"
    assert (layer.kind, layer.name, dict(layer.config)["features"]) == ("dense", "dense", 3)
    assert fl.relu().kind == "relu" and layer.traits.fresh == {"y", "dx", "dparams"}
    assert layer.children == ()
    renamed = layer.replace(name="head")
    assert renamed.name == "head" and renamed.kind == "dense" and layer.name == "dense"
    model = fl.serial(fl.dense(3), fl.relu())
    assert [k for k, _ in model.children] == ["dense_0", "relu_1"]
    assert model.children[0][1].name == "dense"


# --- donation -------------------------------------------------------------------------

def test_elementwise_layer_works_in_place_only_on_donated_arrays():
    layer = fl.relu()
    assert layer.traits.fresh == {"dx", "dparams"}
    x = np.array([[-1.0, 2.0, -3.0]], np.float32)
    dy = np.array([[5.0, 6.0, 7.0]], np.float32)
    y, _, pb = call_vjp(layer, {}, {}, x, None)          # nothing donated: x and dy untouched
    _, dx = pb(dy)
    assert not np.shares_memory(y, x) and not np.shares_memory(dx, dy)
    np.testing.assert_array_equal(x, [[-1.0, 2.0, -3.0]])
    np.testing.assert_array_equal(dx, [[0.0, 6.0, 0.0]])
    y, _, pb = call_vjp(layer, {}, {}, x, None, x_donated=True, dy_donated=True)
    _, dx = pb(dy)
    assert y is x and dx is dy                            # in place, as allowed
    np.testing.assert_array_equal(y, [[0.0, 2.0, 0.0]])
    np.testing.assert_array_equal(dx, [[0.0, 6.0, 0.0]])


def test_elementwise_layer_that_keeps_x_never_overwrites_it():
    def forward(x, out=None):
        return np.multiply(x, 2.0, out=out)

    def backward(x, y, dy, out=None):
        return np.multiply(dy, 2.0 * np.sign(x) * np.sign(x), out=out)

    layer = elementwise_layer("double", forward, backward, saves="x",
                              in_place=("forward", "backward"))
    x = np.array([[1.0, -2.0]], np.float32)
    y, _, pb = call_vjp(layer, {}, {}, x, None, x_donated=True)
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(x, [[1.0, -2.0]])
    np.testing.assert_array_equal(pb(np.ones_like(x))[1], [[2.0, 2.0]])


def test_stateless_layer_passes_only_the_hints_it_declares():
    seen = []

    def vjp(params, x, dy_donated=False):
        seen.append(dy_donated)
        return x + 1.0, lambda dy: ({}, dy)

    layer = stateless_layer("plus", lambda k, s: ({}, s), lambda p, x: x + 1.0, vjp,
                            takes=("dy_donated",), fresh=("y",))
    assert layer.traits.fresh == {"y"} and layer.traits.takes == {"dy_donated"}
    x = np.zeros((1, 2), np.float32)
    call_vjp(layer, {}, {}, x, None, need_dx=False, x_donated=True, dy_donated=True)
    call_vjp(layer, {}, {}, x, None)
    assert seen == [True, False]


def test_fresh_names_only_y_and_dx():
    with pytest.raises(ValueError, match="fresh may name only"):
        stateless_layer("bad", lambda k, s: ({}, s), lambda p, x: x,
                        lambda p, x: (x, lambda dy: ({}, dy)), fresh=("out",))




def test_a_layer_that_uses_its_key_gets_key_and_mode_and_its_errors_are_named():
    seen = []

    def init(key, in_shape):
        return {}, in_shape

    def apply(params, x, *, key, train):
        seen.append(("apply", key is not None, train))
        return x + fl.random.uniform(key, x.shape, x.dtype) if train else x

    def vjp(params, x, *, key, train):
        if x.shape[-1] != 3:
            raise LayerError(f"expected 3 features, got {x.shape[-1]}")
        seen.append(("vjp", key is not None, train))
        if not train:
            return x, lambda dy: ({}, dy)
        return x + fl.random.uniform(key, x.shape, x.dtype), lambda dy: ({}, dy)

    layer = fl.stateless_layer("noise", init, apply, vjp, uses_key=True)
    assert layer.traits.uses_key
    x = np.zeros((2, 3), np.float32)
    k = fl.random.key(3)
    y, _, _ = layer.vjp({}, {}, x, key=k)
    np.testing.assert_array_equal(y, layer.apply({}, {}, x, key=k, train=True))
    np.testing.assert_array_equal(layer.apply({}, {}, x), x)
    assert seen == [("vjp", True, True), ("apply", True, True), ("apply", False, False)]
    with pytest.raises(LayerError, match=r"layer 'noise': expected 3 features, got 4"):
        layer.vjp({}, {}, np.zeros((2, 4), np.float32), key=k)
    check_layer(layer, (3,))
