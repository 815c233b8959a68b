import numpy as np
import pytest

import fundl as fl
from fundl import stateless_layer
from fundl.gradcheck import GradCheckError, check_vjp


def buggy_dense(bug):
    """dense with a deliberate gradient slip: 'half_dw', 'dx_from_y' (the seed's) or 'transpose'."""
    def init(key, in_shape):
        n = in_shape[0]
        return {"w": fl.random.normal(key, (n, n)), "b": np.zeros(n, np.float32)}, in_shape

    def apply(params, x):
        return x @ params["w"] + params["b"]

    def vjp(params, x):
        y = apply(params, x)

        def pullback(dy):
            dw = x.T @ dy
            dx = dy @ params["w"].T
            if bug == "half_dw":
                dw = dw / 2
            elif bug == "dx_from_y":
                dx = y @ params["w"].T
            elif bug == "transpose":
                dx = dy @ params["w"]
            return {"w": dw, "b": dy.sum(0)}, dx
        return y, pullback

    return stateless_layer("buggy", init, apply, vjp)


@pytest.mark.parametrize("bug,path", [("half_dw", "params/buggy_1/w"), ("dx_from_y", "x"),
                                      ("transpose", "x")])
def test_check_vjp_catches_wrong_gradients_and_names_the_path(bug, path):
    model = fl.serial(fl.tanh(), buggy_dense(bug), fl.sigmoid())
    with pytest.raises(GradCheckError, match=path):
        check_vjp(model, (4,))
    result = check_vjp(model, (4,), raise_on_failure=False)
    assert not result.passed and result.worst_path == path and result.max_error > 1e-2
    assert check_vjp(fl.serial(fl.tanh(), buggy_dense(None), fl.sigmoid()), (4,)).passed


def test_check_vjp_catches_mse_without_two_over_n():
    seed_mse = fl.Loss(fl.losses.mse.value,
                       lambda p, t: (fl.losses.mse.value(p, t), p - t), "seed_mse")
    with pytest.raises(GradCheckError):
        check_vjp(seed_mse, (2,), target=np.zeros((3, 2)))
    assert check_vjp(fl.losses.mse, (2,), target=np.zeros((3, 2))).passed


def test_check_vjp_reports_every_leaf_and_is_tight():
    result = check_vjp(fl.serial(fl.dense(3), fl.tanh(), fl.dense(2)), (5,), batch=4)
    assert set(result.errors) == {"params/dense_0/w", "params/dense_0/b", "params/dense_2/w",
                                  "params/dense_2/b", "x"}
    assert result.max_error < 1e-7
    assert "passed" in str(result)


def test_check_vjp_detects_wrong_gradient_shape_and_dtype():
    def vjp_shape(params, x):
        return x * 1.0, lambda dy: ({}, dy[:, :1])
    layer = stateless_layer("bad", lambda k, s: ({}, s), lambda p, x: x, vjp_shape)
    with pytest.raises(GradCheckError, match="shape"):
        check_vjp(layer, (3,))

    def vjp_dtype(params, x):
        return x * 1.0, lambda dy: ({}, dy.astype(np.float32))
    layer = stateless_layer("bad", lambda k, s: ({}, s), lambda p, x: x, vjp_dtype)
    with pytest.raises(GradCheckError, match="dtype"):
        check_vjp(layer, (3,))


def test_check_vjp_accepts_explicit_x_and_params():
    x = np.array([[0.5, -1.0]])
    params = {"w": np.array([[1.0], [2.0]]), "b": np.array([0.0])}
    result = check_vjp(fl.dense(1), x=x, params=params)
    assert result.passed


def test_exactly_zero_gradient_is_not_a_false_alarm():
    """A bias followed by centring has gradient exactly 0; finite differences give rounding noise."""
    def center_vjp(params, x):
        return x - x.mean(0), lambda dy: ({}, dy - dy.mean(0))
    center = stateless_layer("center", lambda k, s: ({}, s), lambda p, x: x - x.mean(0), center_vjp)
    result = check_vjp(fl.serial(fl.dense(4), center, fl.tanh()), (3,), batch=5)
    assert result.passed and result.errors["params/dense_0/b"] < 1e-6
