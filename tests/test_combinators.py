"""Tests for fundl.combinators: serial, parallel, fan_out, fan_in_sum, fan_in_concat, residual."""

from __future__ import annotations

import numpy as np
import pytest

from fundl import random, tree
from fundl import Layer, LayerError, Traits, plan, stateless_layer
from fundl.combinators import (child_keys, fan_in_concat, fan_in_sum, fan_out, identity, parallel,
                               residual, serial)
from fundl.gradcheck import GradCheckError, check_vjp
from fundl.layers.activations import relu, sigmoid, tanh
from fundl.layers.dense import dense
from fundl.losses import mse
from fundl.optim import sgd
from fundl.testing import check_layer, read_only
from fundl import TrainState, make_step

KEY = random.key(0)


def _x(shape, seed=1, dtype=np.float32):
    return random.normal(random.key(seed), shape, dtype)


def call_vjp(layer, params, state, x, key=None, need_dx=True, x_donated=False, dy_donated=False):
    """``layer``'s vjp with these hints, bound as the planner binds them for a child of serial."""
    return plan.specialise(layer, need_dx, x_donated, dy_donated).vjp_fn(params, state, x, key=key)


def _dense_ref(p, x):
    return x @ p["w"] + p["b"]


# --- small custom layers used as children ----------------------------------------------

def double_raw() -> Layer:
    """A raw Layer (no stateless_layer) whose vjp does NOT accept need_dx: y = 2 x."""

    def init(key, in_shape):
        return {}, {}, in_shape

    def apply(params, state, x, *, key=None, train=False):
        return 2.0 * x

    def vjp(params, state, x, *, key=None, train=True):
        return 2.0 * x, state, lambda dy: ({}, 2.0 * dy)

    return Layer(init, apply, vjp, "double")


def scaled_dense(features, *, bug=None, name="scaled_dense") -> Layer:
    """``y = 2 (x @ w)``; ``bug="dw"`` drops the factor 2 in dw, ``bug="dx"`` uses w instead of w.T."""

    def init(key, in_shape):
        return {"w": random.normal(key, (in_shape[-1], features), np.float32)}, in_shape[:-1] + (features,)

    def apply(params, x):
        return 2.0 * (x @ params["w"])

    def vjp(params, x):
        w = params["w"]

        def pullback(dy):
            dw = x.T @ dy if bug == "dw" else 2.0 * (x.T @ dy)
            dx = 2.0 * (dy @ (w if bug == "dx" else w.T))
            return {"w": dw}, dx

        return apply(params, x), pullback

    return stateless_layer(name, init, apply, vjp)


def noise() -> Layer:
    """Adds uniform noise drawn from its key in training mode (key=None: no noise)."""

    def init(key, in_shape):
        return {}, {}, in_shape

    def apply(params, state, x, *, key=None, train=False):
        if not train or key is None:
            return x
        return x + random.uniform(key, x.shape, x.dtype)

    def vjp(params, state, x, *, key=None, train=True):
        return apply(params, state, x, key=key, train=train), state, lambda dy: ({}, dy)

    return Layer(init, apply, vjp, "noise")


def counter() -> Layer:
    """Identity with state ``{"count": n}``: vjp returns count + 1 (apply leaves it)."""

    def init(key, in_shape):
        return {}, {"count": np.zeros((), np.int64)}, in_shape

    def apply(params, state, x, *, key=None, train=False):
        return x

    def vjp(params, state, x, *, key=None, train=True):
        return x, {"count": state["count"] + 1}, lambda dy: ({}, dy)

    return Layer(init, apply, vjp, "counter")


def recorder(log: list, inner: Layer, *, frozen: bool = False, name="rec") -> Layer:
    """Wraps ``inner``: logs ``need_dx``/``train``/outputs; ``frozen`` makes y and dx read-only."""

    def freeze(a):
        if frozen and isinstance(a, np.ndarray):
            a = a.copy()
            a.flags.writeable = False
        return a

    def init(key, in_shape):
        return inner.init(key, in_shape)

    def apply(params, state, x, *, key=None, train=False):
        y = freeze(inner.apply(params, state, x, key=key, train=train))
        log.append(("apply", train, y, y.copy()))
        return y

    def vjp(params, state, x, *, key=None, train=True, need_dx=True):
        y, new_state, pb = call_vjp(inner, params, state, x, key, need_dx=need_dx)
        y = freeze(y)
        log.append(("vjp", need_dx, y, y.copy()))

        def pullback(dy):
            grads, dx = pb(dy)
            dx = freeze(dx)
            if dx is not None:
                log.append(("dx", need_dx, dx, dx.copy()))
            return grads, dx

        return y, new_state, pullback

    return Layer(init, apply, vjp, name, traits=Traits(takes=frozenset({"need_dx"})))


# --- serial ---------------------------------------------------------------------------

@pytest.mark.parametrize("in_shape", [(5,), (2, 5), (3, 2, 4)])
def test_serial_check_layer(in_shape):
    model = serial(dense(4), relu(), dense(3), tanh(), dense(2), sigmoid())
    res = check_layer(model, in_shape)
    assert res.max_error < 1e-6
    assert {"params/dense_0/w", "params/dense_2/b", "params/dense_4/w", "x"} <= set(res.errors)


@pytest.mark.parametrize("in_shape", [(4,), (2, 3)])
def test_nested_serial_check_layer(in_shape):
    model = serial(dense(5), serial(dense(3), tanh(), serial(dense(4), relu())), sigmoid(), dense(2))
    res = check_layer(model, in_shape)
    assert "params/serial_1/serial_2/dense_0/w" in res.errors


def test_serial_param_paths_and_shapes():
    model = serial(dense(4), serial(dense(3), relu()), dense(7))
    params, state, out_shape = model.init(KEY, (6, 5))
    assert out_shape == (6, 7)
    assert tree.paths(params) == ["dense_0/w", "dense_0/b", "serial_1/dense_0/w",
                                  "serial_1/dense_0/b", "dense_2/w", "dense_2/b"]
    assert params["dense_0"]["w"].shape == (5, 4)
    assert params["serial_1"]["dense_0"]["w"].shape == (4, 3)
    assert params["dense_2"]["w"].shape == (3, 7)
    assert state == {"dense_0": {}, "serial_1": {"dense_0": {}, "relu_1": {}}, "dense_2": {}}
    assert child_keys([dense(1), relu(), dense(1)]) == ["dense_0", "relu_1", "dense_2"]


def test_serial_forward_and_gradients_match_hand_written_numpy():
    model = serial(dense(4), relu(), dense(3))
    params, state, _ = model.init(KEY, (5,))
    x = _x((6, 5))
    p0, p2 = params["dense_0"], params["dense_2"]
    h = np.maximum(_dense_ref(p0, x), 0)
    ref = _dense_ref(p2, h)
    np.testing.assert_allclose(model.apply(params, state, x), ref, rtol=1e-6)
    y, _, pb = model.vjp(params, state, x)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    dy = _x((6, 3), seed=2)
    grads, dx = pb(dy)
    dh = (dy @ p2["w"].T) * (h > 0)
    np.testing.assert_allclose(grads["dense_2"]["w"], h.T @ dy, rtol=1e-5)
    np.testing.assert_allclose(grads["dense_0"]["w"], x.T @ dh, rtol=1e-5)
    np.testing.assert_allclose(grads["dense_0"]["b"], dh.sum(0), rtol=1e-5)
    np.testing.assert_allclose(dx, dh @ p0["w"].T, rtol=1e-5)
    assert grads["relu_1"] == {}


def test_serial_deep_shape_error_names_full_path_and_shapes():
    model = serial(relu(), serial(dense(3), relu()))
    params, state, _ = model.init(KEY, (5,))
    bad = _x((2, 7))
    for run in (lambda: model.apply(params, state, bad), lambda: model.vjp(params, state, bad)):
        with pytest.raises(LayerError) as info:
            run()
        msg = str(info.value)
        assert msg.startswith("layer 'serial_1/dense_0' (dense):"), msg
        assert "5)" in msg and "(2, 7)" in msg
        assert info.value.path == ("serial_1", "dense_0")


def test_serial_init_error_names_path():
    model = serial(dense(3), serial(dense(4), residual(dense(5))))
    with pytest.raises(LayerError) as info:
        model.init(KEY, (2,))
    msg = str(info.value)
    assert msg.startswith("layer 'serial_1/residual_1' (residual):"), msg
    assert "(4,)" in msg and "(5,)" in msg


def test_serial_rejects_non_layers():
    with pytest.raises(TypeError, match="relu"):
        serial(dense(3), relu)
    with pytest.raises(ValueError):
        serial()


def test_custom_layer_without_need_dx_composes():
    model = serial(double_raw(), dense(3))
    params, state, out_shape = model.init(KEY, (4,))
    assert out_shape == (3,)
    check_layer(model, (4,))
    x, dy = _x((5, 4)), _x((5, 3), seed=3)
    y, _, pb = call_vjp(model, params, state, x, None, need_dx=False)
    p = params["dense_1"]
    np.testing.assert_allclose(y, _dense_ref(p, 2 * x), rtol=1e-6)
    grads, dx = pb(dy)
    np.testing.assert_allclose(grads["dense_1"]["w"], (2 * x).T @ dy, rtol=1e-5)
    np.testing.assert_allclose(dx, 2 * (dy @ p["w"].T), rtol=1e-5)  # raw layer ignores the hint
    # dense first: it receives need_dx=False and skips dx
    model2 = serial(dense(3), double_raw(), scaled_dense(2))
    params2, state2, _ = model2.init(KEY, (4,))
    _, _, pb2 = call_vjp(model2, params2, state2, x, None, need_dx=False)
    assert pb2(_x((5, 2)))[1] is None
    check_layer(model2, (4,))


def test_make_step_with_custom_raw_layer():
    model = serial(double_raw(), dense(2))
    ts = TrainState.create(KEY, model, sgd(), in_shape=(3,))
    x, t = _x((8, 3)), _x((8, 2), seed=5)
    step = make_step(model, mse, sgd())
    new_ts, metrics = step(ts, (x, t), 0.1)
    p = ts.params["dense_1"]
    y = _dense_ref(p, 2 * x)
    dy = 2 * (y - t) / y.size
    np.testing.assert_allclose(metrics["loss"], np.mean((y - t) ** 2), rtol=1e-5)
    np.testing.assert_allclose(new_ts.params["dense_1"]["w"], p["w"] - 0.1 * ((2 * x).T @ dy),
                               rtol=1e-5, atol=1e-7)


def test_wrong_dw_inside_serial_fails_check_vjp_and_names_path():
    model = serial(dense(4), scaled_dense(3, bug="dw", name="bad"), tanh())
    with pytest.raises(GradCheckError) as info:
        check_vjp(model, (5,))
    assert "params/bad_1/w" in str(info.value)
    res = check_vjp(model, (5,), raise_on_failure=False)
    assert res.worst_path == "params/bad_1/w"
    assert 0.3 < res.max_error < 0.7  # half the true gradient
    assert res.errors["params/dense_0/w"] < 1e-6 and res.errors["x"] < 1e-6
    # the correct version passes
    assert check_vjp(serial(dense(4), scaled_dense(3, name="ok"), tanh()), (5,)).passed


def test_wrong_dx_inside_serial_fails_check_vjp_upstream():
    model = serial(dense(4), scaled_dense(4, bug="dx", name="bad"), tanh())
    res = check_vjp(model, (5,), raise_on_failure=False)
    assert not res.passed
    assert res.errors["params/bad_1/w"] < 1e-6  # its own dw is right ...
    assert res.errors["params/dense_0/w"] > 1e-3 and res.errors["x"] > 1e-3  # ... its dx is not
    with pytest.raises(GradCheckError):
        check_vjp(model, (5,))


# --- parallel -------------------------------------------------------------------------

@pytest.mark.parametrize("in_shape", [((4,), (2, 5)), ((3,), (3,)), ((2, 3), (6,), (1,))])
def test_parallel_check_layer(in_shape):
    layers = [dense(3), serial(dense(2), tanh()), relu()][:len(in_shape)]
    res = check_layer(parallel(*layers), in_shape)
    assert "params/dense_0/w" in res.errors and "x/1" in res.errors


def test_parallel_forward_values_and_keys():
    model = parallel(dense(2), relu())
    params, state, out_shape = model.init(KEY, ((3,), (4,)))
    assert out_shape == ((2,), (4,))
    assert set(params) == {"dense_0", "relu_1"} and params["relu_1"] == {}
    a, b = _x((5, 3)), _x((5, 4), seed=2)
    ya, yb = model.apply(params, state, (a, b))
    np.testing.assert_allclose(ya, _dense_ref(params["dense_0"], a), rtol=1e-6)
    np.testing.assert_array_equal(yb, np.maximum(b, 0))
    y, _, pb = model.vjp(params, state, [a, b])  # a list works too
    assert isinstance(y, tuple) and len(y) == 2
    da, db = _x((5, 2), seed=3), _x((5, 4), seed=4)
    grads, (dxa, dxb) = pb((da, db))
    np.testing.assert_allclose(grads["dense_0"]["w"], a.T @ da, rtol=1e-5)
    np.testing.assert_allclose(dxa, da @ params["dense_0"]["w"].T, rtol=1e-5)
    np.testing.assert_array_equal(dxb, np.where(b > 0, db, 0))


def test_parallel_wrong_number_of_inputs():
    model = parallel(dense(2), relu())
    with pytest.raises(LayerError, match=r"layer 'parallel'.*2 input shapes, got 3"):
        model.init(KEY, ((3,), (4,), (5,)))
    with pytest.raises(LayerError, match=r"single shape \(3,\)"):
        model.init(KEY, (3,))
    params, state, _ = model.init(KEY, ((3,), (4,)))
    with pytest.raises(LayerError, match=r"tuple of 2 inputs, got an array of shape \(5, 3\)"):
        model.apply(params, state, _x((5, 3)))
    with pytest.raises(LayerError, match="tuple of 2 inputs, got 1"):
        model.vjp(params, state, (_x((5, 3)),))
    nested = serial(parallel(dense(2), dense(2)))
    params, state, _ = nested.init(KEY, ((3,), (4,)))
    with pytest.raises(LayerError) as info:
        nested.apply(params, state, (_x((5, 3)), _x((5, 3))))
    assert str(info.value).startswith("layer 'parallel_0/dense_1' (dense):")
    with pytest.raises(LayerError, match="layer 'serial_0/parallel_0'"):
        serial(nested).init(KEY, (3,))


def test_parallel_passes_need_dx_train_and_independent_keys():
    log: list = []
    model = parallel(recorder(log, dense(2)), recorder(log, relu()))
    params, state, _ = model.init(KEY, ((3,), (3,)))
    x = (_x((4, 3)), _x((4, 3), seed=2))
    _, _, pb = call_vjp(model, params, state, x, None, need_dx=False)
    assert [e[1] for e in log if e[0] == "vjp"] == [False, False]
    dxa, dxb = pb((_x((4, 2)), _x((4, 3))))[1]
    assert dxa is None   # the dense child skipped it; the relu has no cheaper way
    log.clear()
    model.apply(params, state, x, train=True)
    assert [e[1] for e in log] == [True, True]

    two = parallel(noise(), noise())
    p, s, _ = two.init(KEY, ((3,), (3,)))
    z = _x((4, 3))
    y0, y1 = two.apply(p, s, (z, z), key=KEY, train=True)
    assert not np.allclose(y0, y1)  # independent keys
    y0b, _ = two.vjp(p, s, (z, z), key=KEY)[0]
    np.testing.assert_array_equal(y0, y0b)
    n0, n1 = two.apply(p, s, (z, z), key=None, train=True)  # None stays None
    assert n0 is z and n1 is z
    check_layer(two, ((3,), (3,)))


# --- fan_out / fan_in_sum / fan_in_concat ---------------------------------------------

@pytest.mark.parametrize("n,in_shape", [(1, (3,)), (2, (4,)), (3, (2, 5))])
def test_fan_out(n, in_shape):
    layer = fan_out(n)
    check_layer(layer, in_shape)
    params, state, out_shape = layer.init(KEY, in_shape)
    assert out_shape == (in_shape,) * n and params == {}
    x = read_only(_x((3,) + in_shape))
    ys = layer.apply(params, state, x)
    assert len(ys) == n and all(y is x for y in ys)  # references, no copies
    dys = read_only(tuple(_x((3,) + in_shape, seed=10 + i) for i in range(n)))
    _, dx = layer.vjp(params, state, x)[2](dys)
    np.testing.assert_allclose(dx, sum(dys), rtol=1e-6)
    if n > 1:
        assert all(not np.shares_memory(dx, d) for d in dys)
    assert layer.vjp(params, state, x, need_dx=False)[2](dys)[1] is None


def test_fan_out_sums_same_cotangent_into_new_array():
    layer = fan_out(2)
    dy = read_only(np.array([[1.0, -2.0]], np.float32))
    _, dx = layer.vjp({}, {}, dy)[2]((dy, dy))
    np.testing.assert_array_equal(dx, [[2.0, -4.0]])
    assert dx is not dy and dx.dtype == np.float32
    with pytest.raises(ValueError):
        fan_out(0)


@pytest.mark.parametrize("in_shape", [((3,), (3,)), ((2, 4), (2, 4), (2, 4)), ((5,),)])
def test_fan_in_sum_check_layer(in_shape):
    check_layer(fan_in_sum(), in_shape)


def test_fan_in_sum_values_and_pullback():
    layer = fan_in_sum()
    assert layer.init(KEY, ((2,), (2,), (2,)))[2] == (2,)
    a = read_only(np.array([[1.0, 2.0]], np.float32))
    b = read_only(np.array([[10.0, 20.0]], np.float32))
    c = read_only(np.array([[100.0, 200.0]], np.float32))
    y = layer.apply({}, {}, (a, b, c))
    np.testing.assert_array_equal(y, [[111.0, 222.0]])
    assert y.dtype == np.float32 and y.flags.writeable
    one = layer.apply({}, {}, (a,))
    assert one is not a and np.array_equal(one, a)
    dy = read_only(np.array([[0.5, -1.0]], np.float32))
    grads, dxs = layer.vjp({}, {}, (a, b, c))[2](dy)
    assert grads == {} and len(dxs) == 3 and all(np.array_equal(d, dy) for d in dxs)
    x64 = (_x((2, 3), dtype=np.float64), _x((2, 3), seed=2, dtype=np.float64))
    assert layer.apply({}, {}, x64).dtype == np.float64


def test_fan_in_sum_errors():
    layer = fan_in_sum()
    with pytest.raises(LayerError, match=r"layer 'fan_in_sum'.*\(3,\), \(4,\)"):
        layer.init(KEY, ((3,), (4,)))
    with pytest.raises(LayerError, match="single shape"):
        layer.init(KEY, (3,))
    with pytest.raises(LayerError, match=r"\(2, 3\), \(2, 4\)"):
        layer.apply({}, {}, (_x((2, 3)), _x((2, 4))))
    with pytest.raises(LayerError, match="float32, float64"):
        layer.apply({}, {}, (_x((2, 3)), _x((2, 3), dtype=np.float64)))
    with pytest.raises(LayerError, match="floating-point input 1"):
        layer.apply({}, {}, (_x((2, 3)), np.ones((2, 3), np.int64)))
    with pytest.raises(LayerError, match="tuple"):
        layer.apply({}, {}, _x((2, 3)))


@pytest.mark.parametrize("axis,in_shape", [(-1, ((3,), (5,))), (-1, ((2, 3), (2, 1), (2, 2))),
                                           (0, ((2, 3), (4, 3))), (1, ((2, 3), (2, 5))),
                                           (-2, ((2, 3), (4, 3)))])
def test_fan_in_concat_check_layer(axis, in_shape):
    check_layer(fan_in_concat(axis), in_shape)


def test_fan_in_concat_axes_and_values():
    a, b = _x((2, 2, 3)), _x((2, 4, 3), seed=2)
    layer = fan_in_concat(0)  # per-example axis 0 == data axis 1
    assert layer.init(KEY, ((2, 3), (4, 3)))[2] == (6, 3)
    y = layer.apply({}, {}, (a, b))
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=1))
    np.testing.assert_array_equal(fan_in_concat(-2).apply({}, {}, (a, b)), y)
    c, d = _x((2, 3, 1)), _x((2, 3, 2), seed=2)
    assert fan_in_concat(1).init(KEY, ((3, 1), (3, 2)))[2] == (3, 3)
    np.testing.assert_array_equal(fan_in_concat(1).apply({}, {}, (c, d)), np.concatenate([c, d], -1))
    np.testing.assert_array_equal(fan_in_concat().apply({}, {}, (c, d)), np.concatenate([c, d], -1))
    # pullback splits dy back
    dy = read_only(np.arange(12, dtype=np.float32).reshape(2, 6))
    _, (da, db) = fan_in_concat().vjp({}, {}, (_x((2, 2)), _x((2, 4))))[2](dy)
    np.testing.assert_array_equal(da, dy[:, :2])
    np.testing.assert_array_equal(db, dy[:, 2:])
    # integer inputs (e.g. token ids): concatenated, no input gradient
    ids = (np.array([[1, 2]]), np.array([[3]]))
    y_ids, _, pb = fan_in_concat().vjp({}, {}, ids)
    np.testing.assert_array_equal(y_ids, [[1, 2, 3]])
    assert pb(np.zeros((1, 3), np.float32))[1] is None


def test_fan_in_concat_errors():
    with pytest.raises(LayerError, match=r"layer 'fan_in_concat'.*\(2, 3\), \(4, 5\)"):
        fan_in_concat().init(KEY, ((2, 3), (4, 5)))
    with pytest.raises(LayerError, match=r"\(2, 3\), \(2,\)"):
        fan_in_concat().init(KEY, ((2, 3), (2,)))
    with pytest.raises(LayerError, match="out of range"):
        fan_in_concat(2).init(KEY, ((2, 3), (2, 3)))
    with pytest.raises(LayerError, match=r"\(5, 2, 3\), \(5, 4, 5\)"):
        fan_in_concat().apply({}, {}, (_x((5, 2, 3)), _x((5, 4, 5))))
    with pytest.raises(LayerError, match="dtypes"):
        fan_in_concat().apply({}, {}, (_x((5, 2)), _x((5, 2), dtype=np.float64)))


# --- residual -------------------------------------------------------------------------

@pytest.mark.parametrize("d,in_shape", [(4, (4,)), (3, (2, 3))])
def test_residual_check_layer(d, in_shape):
    res = check_layer(residual(serial(dense(d), relu(), dense(d))), in_shape)
    assert "params/serial_0/dense_2/w" in res.errors
    check_layer(residual(dense(d)), in_shape)
    check_layer(residual(residual(tanh())), in_shape)


def test_residual_values_params_and_pullback():
    model = residual(serial(dense(3), tanh()))
    params, state, out_shape = model.init(KEY, (3,))
    assert out_shape == (3,) and list(params) == ["serial_0"]
    assert tree.paths(params) == ["serial_0/dense_0/w", "serial_0/dense_0/b"]
    p = params["serial_0"]["dense_0"]
    x = read_only(_x((4, 3)))
    h = np.tanh(_dense_ref(p, x))
    np.testing.assert_allclose(model.apply(params, state, x), x + h, rtol=1e-6)
    y, _, pb = model.vjp(params, state, x)
    np.testing.assert_allclose(y, x + h, rtol=1e-6)
    dy = read_only(_x((4, 3), seed=5))
    grads, dx = pb(dy)
    dz = dy * (1 - h * h)
    np.testing.assert_allclose(grads["serial_0"]["dense_0"]["w"], x.T @ dz, rtol=1e-5)
    np.testing.assert_allclose(dx, dy + dz @ p["w"].T, rtol=1e-5)
    np.testing.assert_array_equal(residual(relu()).apply({"relu_0": {}}, {"relu_0": {}}, x),
                                  x + np.maximum(x, 0))


def test_residual_shape_errors():
    with pytest.raises(LayerError) as info:
        residual(dense(5)).init(KEY, (4,))
    msg = str(info.value)
    assert msg.startswith("layer 'residual':") and "(4,)" in msg and "(5,)" in msg
    model = residual(relu())
    params, state, _ = model.init(KEY, (3,))
    with pytest.raises(LayerError, match="floating-point"):
        model.apply(params, state, np.ones((2, 3), np.int64))
    inner = serial(relu(), dense(3))
    model = residual(inner)
    params, state, _ = model.init(KEY, (3,))
    with pytest.raises(LayerError, match=r"layer 'residual_0/serial_0/dense_1' \(dense\)"):
        serial(model).apply({"residual_0": params}, {"residual_0": state}, _x((2, 4)))


def test_residual_need_dx_train_keys_and_state():
    log: list = []
    model = residual(recorder(log, dense(3)))
    params, state, _ = model.init(KEY, (3,))
    x = _x((2, 3))
    _, _, pb = call_vjp(model, params, state, x, None, need_dx=False)
    assert log[-1][:2] == ("vjp", False) and pb(_x((2, 3)))[1] is None
    _, _, pb = call_vjp(model, params, state, x, None, need_dx=True)
    assert log[-1][:2] == ("vjp", True) and pb(_x((2, 3)))[1].shape == (2, 3)
    model.apply(params, state, x, train=True)
    assert log[-1][:2] == ("apply", True)

    nz = residual(noise())
    np.testing.assert_array_equal(nz.apply({"noise_0": {}}, {"noise_0": {}}, x, train=True), 2 * x)
    y1 = nz.apply({"noise_0": {}}, {"noise_0": {}}, x, key=KEY, train=True)
    assert not np.allclose(y1, 2 * x)
    check_layer(nz, (3,))

    model = serial(residual(counter()), fan_out(2), parallel(counter(), dense(2)))
    params, state, _ = model.init(KEY, (3,))
    _, new_state, _ = model.vjp(params, state, x)
    assert int(new_state["residual_0"]["counter_0"]["count"]) == 1
    assert int(new_state["parallel_2"]["counter_0"]["count"]) == 1
    assert int(state["parallel_2"]["counter_0"]["count"]) == 0  # old state untouched
    assert new_state["parallel_2"]["dense_1"] == {}


# --- compositions ---------------------------------------------------------------------

def test_branch_sum_composition():
    model = serial(fan_out(2), parallel(dense(3), serial(dense(3), tanh())), fan_in_sum())
    res = check_layer(model, (4,))
    assert "params/parallel_1/serial_1/dense_0/w" in res.errors
    params, state, out_shape = model.init(KEY, (4,))
    assert out_shape == (3,)
    pa, pb_ = params["parallel_1"]["dense_0"], params["parallel_1"]["serial_1"]["dense_0"]
    x = _x((5, 4))
    ref = _dense_ref(pa, x) + np.tanh(_dense_ref(pb_, x))
    np.testing.assert_allclose(model.apply(params, state, x), ref, rtol=1e-5)
    y, _, pull = model.vjp(params, state, x)
    dy = _x((5, 3), seed=9)
    _, dx = pull(dy)
    dz = dy * (1 - np.tanh(_dense_ref(pb_, x)) ** 2)
    np.testing.assert_allclose(dx, dy @ pa["w"].T + dz @ pb_["w"].T, rtol=1e-5, atol=1e-6)


def test_concat_of_two_branches():
    model = serial(fan_out(2), parallel(dense(3), serial(dense(2), relu())), fan_in_concat())
    assert model.init(KEY, (4,))[2] == (5,)
    check_layer(model, (4,))
    check_layer(serial(fan_out(3), parallel(relu(), tanh(), identity()), fan_in_concat(0)), (2, 3))


@pytest.mark.parametrize("d", [3, 6])
def test_residual_mlp_block(d):
    block = residual(serial(dense(d), relu(), dense(d)))
    check_layer(serial(block, residual(serial(dense(d), tanh(), dense(d))), dense(2)), (d,))


def test_identity():
    layer = identity()
    check_layer(layer, (3,))
    x = _x((2, 3))
    assert layer.apply({}, {}, x) is x
    assert layer.init(KEY, ((2,), (3,)))[2] == ((2,), (3,))


# --- purity: combinators never write into children's outputs --------------------------

def test_combinators_never_write_into_child_outputs():
    log: list = []
    x = _x((4, 3))
    models = [
        residual(recorder(log, dense(3), frozen=True)),
        residual(recorder(log, relu(), frozen=True)),
        serial(fan_out(2), parallel(recorder(log, dense(3), frozen=True),
                                    recorder(log, tanh(), frozen=True)), fan_in_sum()),
        serial(fan_out(3), parallel(*[recorder(log, dense(3), frozen=True) for _ in range(3)]),
               fan_in_sum()),
        serial(fan_out(2), parallel(recorder(log, dense(2), frozen=True),
                                    recorder(log, relu(), frozen=True)), fan_in_concat()),
    ]
    for model in models:
        log.clear()
        params, state, _ = model.init(KEY, (3,))
        y = model.apply(params, state, x)
        y2, _, pb = model.vjp(params, state, x)
        _, dx = pb(read_only(np.ones_like(y2)))
        assert y.flags.writeable and y2.flags.writeable and dx.flags.writeable  # fresh arrays
        assert any(e[0] == "dx" for e in log)
        for _, _, out, snapshot in log:
            assert not out.flags.writeable
            np.testing.assert_array_equal(out, snapshot)  # unchanged after the combinator ran
            assert not np.shares_memory(out, y2) and not np.shares_memory(out, dx)


# --- take ---------------------------------------------------------------------------------

def test_take_routes_a_tuple_and_passes_the_gradient_check():
    from fundl import take
    model = serial(fan_out(2), parallel(serial(take(0), dense(3)), take(1)), fan_in_concat())
    res = check_layer(model, ((4,), (2,)))          # x -> ((x0, x1), (x0, x1)) -> (dense(x0), x1)
    assert res.max_error < 1e-6
    assert {"x/0", "x/1", "params/parallel_1/serial_0/dense_1/w"} <= set(res.errors)
    a, b = _x((5, 4)), _x((5, 2), seed=2)
    params, state, out_shape = model.init(KEY, ((4,), (2,)))
    assert out_shape == (5,)
    _, _, pb = model.vjp(params, state, (a, b))
    _, (da, db) = pb(_x((5, 5), seed=3))
    np.testing.assert_array_equal(db, _x((5, 5), seed=3)[:, 3:])       # x1 passed straight
    mask = np.ones((5, 2), bool)
    y, _, pb = take(0).vjp({}, {}, (a, mask))
    assert y is a and pb(np.ones_like(a))[1][1] is None                  # no gradient for a mask
    with pytest.raises(LayerError, match=r"layer 'take': expected a tuple of inputs with an "
                                         r"element 2, got a tuple of 2"):
        take(2).apply({}, {}, (a, b))
    with pytest.raises(LayerError, match="single shape"):
        take(0).init(KEY, (3,))
    with pytest.raises(TypeError, match="take: index must be an int"):
        take(1.0)
