import numpy as np
import pytest

import fundl as fl
from fundl.losses import LossError, nll, softmax_cross_entropy
from fundl.testing import read_only


@pytest.mark.parametrize("shape", [(1, 2), (4, 3), (5, 10), (2, 3, 4), (3, 2, 2, 5)])
def test_gradient_check(shape):
    labels = fl.random.randint(fl.random.key(2), shape[:-1], 0, shape[-1])
    assert fl.check_vjp(nll, shape[1:], target=labels, batch=shape[0]).max_error < 1e-6


def test_exact_value_and_gradient():
    log_probs = read_only(np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])))
    value, grad = nll.value_and_grad(log_probs, read_only(np.array([1, 2])))
    np.testing.assert_allclose(value, -(np.log(0.25) + np.log(0.7)) / 2, rtol=1e-15)
    np.testing.assert_array_equal(grad, [[0, -0.5, 0], [0, 0, -0.5]])
    assert nll(log_probs, np.array([1, 2])) == value


def test_of_log_softmax_equals_cross_entropy():
    x = fl.random.normal(fl.random.key(0), (2, 3, 4), np.float64)
    labels = fl.random.randint(fl.random.key(1), (2, 3), 0, 4)
    log_probs = x - np.log(np.exp(x).sum(-1, keepdims=True))
    np.testing.assert_allclose(nll(log_probs, labels), softmax_cross_entropy(x, labels), rtol=1e-14)


def test_float32_preserved():
    value, grad = nll.value_and_grad(np.zeros((3, 2), np.float32), np.array([0, 1, 1]))
    assert value.dtype == np.float32 and grad.dtype == np.float32


def test_errors():
    with pytest.raises(LossError, match=r"nll: the batch is empty \(prediction shape \(0, 4\)\)"):
        nll.value_and_grad(np.zeros((0, 4)), np.zeros(0, np.int64))
    with pytest.raises(LossError, match=r"nll: labels must lie in \[0, 4\), got values in \[-1, 2\]"):
        nll(np.zeros((2, 4)), np.array([2, -1]))
    with pytest.raises(LossError, match=r"nll: labels must lie in \[0, 4\), got values in \[0, 4\]"):
        nll.value_and_grad(np.zeros((2, 4)), np.array([0, 4]))
    with pytest.raises(LossError, match=r"nll: integer labels must have shape \(2,\) for "
                                        r"predictions of shape \(2, 4\), got \(2, 4\)"):
        nll(np.zeros((2, 4)), np.zeros((2, 4), np.int64))
    with pytest.raises(LossError, match="nll: labels must be integers, got dtype float64"):
        nll(np.zeros((2, 4)), np.zeros(2))
