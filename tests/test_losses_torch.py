"""Every loss and option against torch in float64: values and gradients to 1e-6.

fundl keeps the classes on the last axis; torch's class losses take them on axis 1,
so 3-D inputs are compared after ``np.moveaxis(x, -1, 1)``.
"""

import numpy as np
import pytest

import fundl as fl
from fundl import losses

torch = pytest.importorskip("torch", reason="the PyTorch equivalence tests need torch")
F = torch.nn.functional

SHAPES = [(4, 3), (6, 10), (2, 3, 5)]


def _check(loss, x, target, torch_fn, torch_target, classes=True):
    """fundl's value and gradient against ``torch_fn(x_t, torch_target)``.

    ``classes``: x's last axis is a class axis, moved to axis 1 for torch."""
    value, grad = loss.value_and_grad(x, target)
    move = classes and x.ndim > 2
    xt = torch.tensor(np.moveaxis(x, -1, 1) if move else x, requires_grad=True)
    ref = torch_fn(xt, torch_target)
    ref.backward()
    ref_grad = xt.grad.numpy()
    if move:
        ref_grad = np.moveaxis(ref_grad, 1, -1)
    np.testing.assert_allclose(value, ref.item(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-12)


def _x(shape, seed=0):
    return 3 * fl.random.normal(fl.random.key(seed), shape, np.float64)


def _labels(shape, ignore=None):
    labels = fl.random.randint(fl.random.key(1), shape[:-1], 0, shape[-1])
    if ignore is not None:
        labels = np.where(fl.random.uniform(fl.random.key(2), shape[:-1]) < 0.3, ignore, labels)
    return labels


def _tlabels(labels):
    return torch.tensor(labels, dtype=torch.int64)


def _probs(shape):
    p = fl.random.uniform(fl.random.key(3), shape, np.float64)
    return p / p.sum(-1, keepdims=True)


def _class_first(a):
    return torch.tensor(np.moveaxis(a, -1, 1) if a.ndim > 2 else a)


@pytest.mark.parametrize("shape", SHAPES + [(3,)])
def test_regression_losses(shape):
    x, t = _x(shape), _x(shape, 1)
    tt = torch.tensor(t)
    _check(losses.mse, x, t, F.mse_loss, tt, classes=False)
    _check(losses.l1, x, t, F.l1_loss, tt, classes=False)
    for delta in (1.0, 0.4, 2.5):
        _check(losses.huber(delta), x, t, lambda a, b: F.huber_loss(a, b, delta=delta), tt,
               classes=False)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, -100, 1])
def test_cross_entropy_labels(shape, eps, weighted, ignore):
    w = fl.random.uniform(fl.random.key(4), shape[-1:], np.float64) + 0.1 if weighted else None
    loss = losses.cross_entropy(label_smoothing=eps, weights=w, ignore_index=ignore)
    labels = _labels(shape, ignore)
    wt = None if w is None else torch.tensor(w)

    def fn(a, b):
        return F.cross_entropy(a, b, weight=wt, label_smoothing=eps,
                               ignore_index=-100 if ignore is None else ignore)

    _check(loss, _x(shape), labels, fn, _tlabels(labels))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_probability_targets(shape, eps, weighted):
    w = fl.random.uniform(fl.random.key(4), shape[-1:], np.float64) + 0.1 if weighted else None
    loss = losses.cross_entropy(label_smoothing=eps, weights=w)
    t = _probs(shape)
    wt = None if w is None else torch.tensor(w)

    def fn(a, b):
        return F.cross_entropy(a, b, weight=wt, label_smoothing=eps)

    _check(loss, _x(shape), t, fn, _class_first(t))


@pytest.mark.parametrize("shape", SHAPES)
def test_nll(shape):
    x = _x(shape)
    log_probs = x - np.log(np.exp(x).sum(-1, keepdims=True))
    labels = _labels(shape)
    _check(losses.nll, log_probs, labels, F.nll_loss, _tlabels(labels))


@pytest.mark.parametrize("shape", SHAPES)
def test_kl_divergence_batchmean(shape):
    x = _x(shape)
    log_q = x - np.log(np.exp(x).sum(-1, keepdims=True))
    t = _probs(shape)
    t[0, ..., 0] = 0.0  # 0 log 0 = 0 in both
    # torch's batchmean divides by the size of axis 0; fundl by every leading position
    per = int(np.prod(shape[1:-1]))

    def fn(a, b):
        return F.kl_div(a, b, reduction="batchmean") / per

    _check(losses.kl_divergence, log_q, t, fn, _class_first(t))


@pytest.mark.parametrize("shape", SHAPES + [(5,)])
@pytest.mark.parametrize("pos_weight", [None, 2.5, "vector"])
def test_binary_cross_entropy_with_logits(shape, pos_weight):
    if pos_weight == "vector":
        pos_weight = fl.random.uniform(fl.random.key(5), shape[-1:], np.float64) * 3
    loss = losses.binary_cross_entropy_with_logits(pos_weight=pos_weight)
    x, t = _x(shape), fl.random.uniform(fl.random.key(6), shape, np.float64)
    t[..., 0] = 1.0
    pw = None if pos_weight is None else torch.tensor(np.asarray(pos_weight, np.float64))

    def fn(a, b):
        return F.binary_cross_entropy_with_logits(a, b, pos_weight=pw)

    _check(loss, x, t, fn, torch.tensor(t), classes=False)
