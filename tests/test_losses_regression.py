import numpy as np
import pytest

import fundl as fl
from fundl.losses import LossError, huber, l1, mse
from fundl.testing import read_only

SHAPES = [(1, 1), (4, 3), (3, 5, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", [l1, huber(), huber(0.3), huber(delta=2.5)],
                         ids=["l1", "huber1", "huber0.3", "huber2.5"])
def test_gradient_check(loss, shape):
    target = fl.random.normal(fl.random.key(1), shape, np.float64)
    result = fl.check_vjp(loss, shape[1:], target=target, batch=shape[0])
    assert result.max_error < 1e-7


def test_l1_exact_value_and_gradient_zero_at_ties():
    pred = read_only(np.array([[1.0, 2.0], [3.0, -5.0]]))
    target = read_only(np.array([[0.0, 2.0], [4.0, 1.0]]))
    value, grad = l1.value_and_grad(pred, target)
    assert value == (1 + 0 + 1 + 6) / 4
    np.testing.assert_array_equal(grad, np.array([[1.0, 0.0], [-1.0, -1.0]]) / 4)
    assert l1(pred, target) == value


def test_huber_exact_values_both_pieces():
    pred = read_only(np.array([0.5, -3.0, 2.0, 1.0]))
    target = read_only(np.zeros(4))
    value, grad = huber(1.0).value_and_grad(pred, target)
    # 0.5*0.25, 1*(3-0.5), 1*(2-0.5), 0.5*1 (|d| = delta: both pieces agree)
    assert value == pytest.approx((0.125 + 2.5 + 1.5 + 0.5) / 4, rel=1e-15)
    np.testing.assert_allclose(grad, np.array([0.5, -1.0, 1.0, 1.0]) / 4, rtol=1e-15)
    v2, g2 = huber(delta=2.0).value_and_grad(pred, target)
    assert v2 == pytest.approx((0.125 + 2 * (3 - 1) + 0.5 * 4 + 0.5) / 4, rel=1e-15)
    np.testing.assert_allclose(g2, np.array([0.5, -2.0, 2.0, 1.0]) / 4, rtol=1e-15)
    assert huber(1.0)(pred, target) == value


@pytest.mark.parametrize("loss", [mse, l1, huber(0.5)], ids=["mse", "l1", "huber"])
def test_float32_preserved(loss):
    pred = fl.random.normal(fl.random.key(0), (4, 3))
    value, grad = loss.value_and_grad(read_only(pred), read_only(np.ones((4, 3))))
    assert value.dtype == np.float32 and grad.dtype == np.float32 and grad.shape == (4, 3)
    assert loss(pred, np.ones((4, 3))).dtype == np.float32


@pytest.mark.parametrize("loss", [mse, l1, huber()], ids=["mse", "l1", "huber"])
def test_empty_batch_raises(loss):
    with pytest.raises(LossError, match=rf"{loss.name}: the batch is empty \(prediction shape \(0, 3\)\)"):
        loss.value_and_grad(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(LossError, match="the batch is empty"):
        loss(np.zeros((0, 3)), np.zeros((0, 3)))


def test_errors_name_the_loss():
    with pytest.raises(LossError, match=r"l1: prediction shape \(2, 3\) and target shape \(3, 2\)"):
        l1(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(LossError, match=r"huber: prediction shape \(2,\) and target shape \(3,\)"):
        huber().value_and_grad(np.zeros(2), np.zeros(3))
    with pytest.raises(LossError, match="huber: delta must be a finite number > 0, got 0.0"):
        huber(0)
    with pytest.raises(LossError, match="huber: delta must be a finite number > 0, got nan"):
        huber(float("nan"))
    with pytest.raises(LossError, match="l1: expected a floating-point prediction"):
        l1(np.zeros(3, np.int32), np.zeros(3))
    with pytest.raises(LossError, match="l1: target must be numeric, got dtype <U1"):
        l1(np.zeros(1), np.array(["a"]))
