import numpy as np
import pytest

import fundl as fl
from fundl import LayerError
from fundl.layers.dense import dense
from fundl.testing import check_layer, read_only


@pytest.mark.parametrize("in_shape,features", [((1,), 1), ((5,), 3), ((7,), 16), ((4, 6), 2)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_contract_and_gradients(in_shape, features, use_bias):
    result = check_layer(dense(features, use_bias=use_bias), in_shape, batch=4)
    assert result.max_error < 1e-6
    assert set(result.errors) == {"x", "params/w"} | ({"params/b"} if use_bias else set())


def test_dense_forward_is_x_w_plus_b_and_shapes():
    layer = dense(3)
    params, state, out_shape = layer.init(fl.random.key(0), (4,))
    assert params["w"].shape == (4, 3) and params["b"].shape == (3,)
    assert params["w"].dtype == np.float32 and out_shape == (3,)
    assert state == {}
    x = fl.random.normal(fl.random.key(1), (5, 4))
    params = {"w": fl.random.normal(fl.random.key(2), (4, 3)), "b": np.array([1, 2, 3], np.float32)}
    y = layer.apply(params, state, x)
    np.testing.assert_allclose(y, x.astype(np.float64) @ params["w"] + params["b"], rtol=1e-6)


def test_dense_pullback_exact_values():
    # Hand-computed: x = [[1, 2]], w = [[1, 0, 2], [0, 1, 1]], dy = [[1, 10, 100]].
    x = read_only(np.array([[1.0, 2.0]]))
    params = read_only({"w": np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]), "b": np.zeros(3)})
    y, _, pullback = dense(3).vjp(params, {}, x)
    np.testing.assert_array_equal(y, [[1.0, 2.0, 4.0]])
    grads, dx = pullback(np.array([[1.0, 10.0, 100.0]]))
    np.testing.assert_array_equal(grads["w"], [[1.0, 10.0, 100.0], [2.0, 20.0, 200.0]])
    np.testing.assert_array_equal(grads["b"], [1.0, 10.0, 100.0])
    np.testing.assert_array_equal(dx, [[201.0, 110.0]])  # dy @ w.T, not w.T @ y


def test_dense_skips_input_gradient_when_not_needed():
    layer = dense(2)
    params, state, _ = layer.init(fl.random.key(0), (3,))
    x = np.ones((2, 3), np.float32)
    _, _, pullback = layer.vjp(params, state, x, need_dx=False)
    grads, dx = pullback(np.ones((2, 2), np.float32))
    assert dx is None and grads["w"].shape == (3, 2)


def test_dense_float64_params_keep_float64():
    layer = dense(2, dtype=np.float64)
    params, state, _ = layer.init(fl.random.key(0), (3,))
    assert params["w"].dtype == np.float64
    y = layer.apply(params, state, np.ones((2, 3)))
    assert y.dtype == np.float64


def test_dense_errors_name_layer_and_shapes():
    model = fl.serial(fl.dense(4), fl.relu(), fl.dense(2))
    params, state, _ = model.init(fl.random.key(0), (10,))
    with pytest.raises(LayerError) as info:
        model.apply(params, state, np.zeros((8, 12), np.float32))
    msg = str(info.value)
    assert "dense_0" in msg and "(batch, ..., 10)" in msg and "(8, 12)" in msg
    with pytest.raises(LayerError, match="floating-point input, got dtype int64"):
        model.apply(params, state, np.zeros((8, 10), np.int64))
    with pytest.raises(LayerError, match="float64 does not match the parameter dtype float32"):
        model.apply(params, state, np.zeros((8, 10), np.float64))
    with pytest.raises(LayerError, match="dense_0"):
        model.vjp(params, state, np.zeros((8, 3), np.float32))
    with pytest.raises(LayerError, match=r"input shape \(\.\.\., in\)"):
        fl.dense(3).init(fl.random.key(0), ())
    with pytest.raises(ValueError):
        fl.dense(0)


def test_dense_default_init_is_glorot_uniform():
    params, _, _ = dense(300).init(fl.random.key(0), (200,))
    limit = np.sqrt(6.0 / 500)
    w = params["w"]
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert abs(w.var() - limit ** 2 / 3) < 0.02 * limit ** 2
    assert not params["b"].any()
