import numpy as np
import pytest

import fundl as fl
from fundl.losses import LossError, binary_cross_entropy_with_logits, sigmoid_binary_cross_entropy
from fundl.testing import read_only

BCE = sigmoid_binary_cross_entropy
LOSSES = [BCE, binary_cross_entropy_with_logits(pos_weight=2.5),
          binary_cross_entropy_with_logits(pos_weight=[0.5, 3.0, 1.0])]


@pytest.mark.parametrize("shape", [(1, 3), (4, 3), (2, 5, 3)])
@pytest.mark.parametrize("loss", LOSSES, ids=["plain", "pw_scalar", "pw_vector"])
def test_gradient_check_soft_and_hard_targets(loss, shape):
    soft = fl.random.uniform(fl.random.key(1), shape, np.float64)
    hard = (soft > 0.5).astype(np.float64)
    for target in (soft, hard):
        assert fl.check_vjp(loss, shape[1:], target=target, batch=shape[0]).max_error < 1e-6


def test_exact_values():
    x = read_only(np.array([[0.0, np.log(3.0)], [-np.log(3.0), 2.0]]))
    t = read_only(np.array([[1.0, 0.0], [1.0, 0.25]]))
    value, grad = BCE.value_and_grad(x, t)
    sig = np.array([[0.5, 0.75], [0.25, 1 / (1 + np.exp(-2.0))]])
    expect = -(t * np.log(sig) + (1 - t) * np.log(1 - sig)).mean()
    np.testing.assert_allclose(value, expect, rtol=1e-14)
    np.testing.assert_allclose(grad, (sig - t) / 4, rtol=1e-14)
    v2, g2 = binary_cross_entropy_with_logits(pos_weight=3.0).value_and_grad(x, t)
    expect2 = -(3 * t * np.log(sig) + (1 - t) * np.log(1 - sig)).mean()
    np.testing.assert_allclose(v2, expect2, rtol=1e-14)
    np.testing.assert_allclose(g2, (3 * t * (sig - 1) + (1 - t) * sig) / 4, rtol=1e-14)


def test_no_pos_weight_is_the_plain_loss_and_ones_match_it():
    assert binary_cross_entropy_with_logits() is BCE
    x = fl.random.normal(fl.random.key(0), (3, 4), np.float64)
    t = fl.random.uniform(fl.random.key(1), (3, 4), np.float64)
    a = BCE.value_and_grad(x, t)
    b = binary_cross_entropy_with_logits(pos_weight=np.ones(4)).value_and_grad(x, t)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-14)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", LOSSES, ids=["plain", "pw_scalar", "pw_vector"])
def test_stable_for_huge_logits_and_dtype_preserved(loss, dtype):
    x = read_only(np.array([[1e4, -1e4, 0.0], [-3e38, 3e38, 50.0]], dtype))
    t = read_only(np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]], dtype))
    value, grad = loss.value_and_grad(x, t)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert value.dtype == dtype and grad.dtype == dtype and grad.shape == (2, 3)
    # every prediction is (almost) right: loss ln 2 / 6 from the 0.5 target, tiny rest
    assert loss(x, t) == value
    if loss is BCE:
        np.testing.assert_allclose(value, np.log(2) / 6, rtol=1e-6)
        np.testing.assert_allclose(grad, np.array([[0, 0, 0], [0, 0, -1.9287e-22]]) / 6,
                                   atol=1e-12)


def test_errors():
    with pytest.raises(LossError, match=r"sigmoid_binary_cross_entropy: the batch is empty"):
        BCE.value_and_grad(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(LossError, match=r"sigmoid_binary_cross_entropy: probability targets must "
                                        r"lie in \[0, 1\], got a maximum of 2.0"):
        BCE(np.zeros(3), np.array([0.0, 2.0, 1.0]))
    with pytest.raises(LossError, match="must be >= 0 and not NaN, got a minimum of nan"):
        BCE.value_and_grad(np.zeros(2), np.array([0.0, np.nan]))
    with pytest.raises(LossError, match="must be >= 0 and not NaN, got a minimum of -1.0"):
        LOSSES[1](np.zeros(2), np.array([-1.0, 1.0]))
    with pytest.raises(LossError, match=r"prediction shape \(2,\) and target shape \(3,\)"):
        BCE(np.zeros(2), np.zeros(3))
    with pytest.raises(LossError, match=r"binary_cross_entropy_with_logits: pos_weight of shape "
                                        r"\(3,\) does not broadcast to the logits' shape \(2, 2\)"):
        LOSSES[2](np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(LossError, match=r"pos_weight of shape \(2, 3\) does not broadcast"):
        binary_cross_entropy_with_logits(pos_weight=np.ones((2, 3)))(np.zeros(3), np.zeros(3))
    with pytest.raises(LossError, match="pos_weight must be finite and >= 0"):
        binary_cross_entropy_with_logits(pos_weight=-1.0)
    with pytest.raises(LossError, match="pos_weight must be numbers"):
        binary_cross_entropy_with_logits(pos_weight="a")
