import numpy as np
import pytest

import fundl as fl
from fundl.losses import LossError, kl_divergence, softmax_cross_entropy
from fundl.testing import read_only


def _probs(key, shape, zeros=False):
    p = fl.random.uniform(fl.random.key(key), shape, np.float64)
    if zeros:
        p[..., 0] = 0.0  # 0 log 0 = 0
    return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("shape", [(1, 2), (4, 3), (5, 10), (2, 3, 4)])
@pytest.mark.parametrize("zeros", [False, True])
def test_gradient_check(shape, zeros):
    t = _probs(1, shape, zeros)
    assert fl.check_vjp(kl_divergence, shape[1:], target=t, batch=shape[0]).max_error < 1e-6


def test_exact_value_with_zero_targets():
    log_q = read_only(np.log(np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]])))
    t = read_only(np.array([[0.0, 0.5, 0.5], [0.25, 0.25, 0.5]]))
    value, grad = kl_divergence.value_and_grad(log_q, t)
    # row 0: 0 log 0 + 2 * 0.5 log(0.5 / 0.25) = ln 2; row 1: identical distributions
    np.testing.assert_allclose(value, np.log(2) / 2, rtol=1e-15)
    np.testing.assert_array_equal(grad, -t / 2)
    assert kl_divergence(log_q, t) == value


def test_equals_cross_entropy_minus_entropy():
    x = fl.random.normal(fl.random.key(0), (2, 3, 5), np.float64)
    t = _probs(2, (2, 3, 5))
    log_q = x - np.log(np.exp(x).sum(-1, keepdims=True))
    entropy = -(t * np.log(t)).sum(-1).mean()
    np.testing.assert_allclose(kl_divergence(log_q, t), softmax_cross_entropy(x, t) - entropy,
                               rtol=1e-13)


def test_float32_preserved():
    value, grad = kl_divergence.value_and_grad(np.full((3, 2), -0.7, np.float32),
                                               np.full((3, 2), 0.5, np.float32))
    assert value.dtype == np.float32 and grad.dtype == np.float32


def test_errors():
    with pytest.raises(LossError, match=r"kl_divergence: the batch is empty \(prediction shape \(0, 3\)\)"):
        kl_divergence.value_and_grad(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(LossError, match="kl_divergence: probability targets must be >= 0 and not "
                                        "NaN, got a minimum of -0.1"):
        kl_divergence(np.zeros((1, 2)), np.array([[1.1, -0.1]]))
    with pytest.raises(LossError, match="got a minimum of nan"):
        kl_divergence.value_and_grad(np.zeros((1, 2)), np.array([[np.nan, 1.0]]))
    with pytest.raises(LossError, match=r"kl_divergence: prediction shape \(1, 2\) and target shape \(2,\)"):
        kl_divergence(np.zeros((1, 2)), np.array([0.5, 0.5]))
    with pytest.raises(LossError, match="class \\(last\\) axis, got a scalar"):
        kl_divergence(np.zeros(()), np.zeros(()))
