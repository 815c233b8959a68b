"""Binary cross-entropy on logits: ``sigmoid_binary_cross_entropy`` and
``binary_cross_entropy_with_logits(pos_weight=)``.

Each element of the logits ``x`` (any shape) is an independent binary
prediction ``sigmoid(x)`` against a target ``t`` in ``[0, 1]`` of the same
shape; the loss is the mean over all N elements, as torch's
``BCEWithLogitsLoss`` with ``reduction='mean'``.  A float16 prediction is computed
in float32; value and gradient are in the prediction's dtype.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ._base import (Loss, LossError, check_pred, check_probabilities, elements, like,
                    same_shape_target, scalar, working)

__all__ = ["sigmoid_binary_cross_entropy", "binary_cross_entropy_with_logits"]


def _make(name: str, pos_weight: Optional[np.ndarray]) -> Loss:
    def terms(pred: np.ndarray, target: Any):
        check_pred(name, pred)
        pred = working(pred)
        t = same_shape_target(name, pred, target)
        check_probabilities(name, t, upper=1.0)
        e = np.exp(-np.abs(pred))  # in (0, 1]: never overflows
        # softplus(x) - x t = max(x, 0) - x t + log1p(exp(-|x|))
        cost = np.maximum(pred, 0) - pred * t + np.log1p(e)
        pw = None
        if pos_weight is not None:
            try:
                shape = np.broadcast_shapes(pos_weight.shape, pred.shape)
            except ValueError:
                shape = None
            if shape != pred.shape:
                raise LossError(f"{name}: pos_weight of shape {pos_weight.shape} does not "
                                f"broadcast to the logits' shape {pred.shape}")
            pw = pos_weight.astype(pred.dtype, copy=False)
            # + (p - 1) t softplus(-x), softplus(-x) = max(-x, 0) + log1p(exp(-|x|))
            extra = (pw - 1) * t
            cost += extra * (np.maximum(-pred, 0) + np.log1p(e))
        else:
            extra = None
        return t, e, cost, extra

    def value(pred: np.ndarray, target: Any) -> np.ndarray:
        cost = terms(pred, target)[2]
        return scalar(np.mean(cost), pred.dtype)

    def value_and_grad(pred: np.ndarray, target: Any) -> Tuple[np.ndarray, np.ndarray]:
        t, e, cost, extra = terms(pred, target)
        v = scalar(np.mean(cost), pred.dtype)
        # sigmoid(x) from e = exp(-|x|): 1 / (1 + e) for x >= 0, e / (1 + e) below.
        sig = np.where(pred >= 0, 1.0, e)
        sig /= 1 + e
        grad = sig - t  # d/dx [softplus(x) - x t]
        if extra is not None:
            grad += extra * (sig - 1)  # d/dx softplus(-x) = sigmoid(x) - 1
        grad *= e.dtype.type(1.0 / pred.size)
        return v, like(grad.astype(e.dtype, copy=False), pred)

    return Loss(value, value_and_grad, name, elements)


#: Mean binary cross-entropy of ``sigmoid(logits)`` against targets in ``[0, 1]``
#: of the logits' shape (any shape), over all N elements:
#: ``mean(max(x, 0) - x t + log1p(exp(-|x|)))`` (stable for any finite x);
#: gradient ``(sigmoid(x) - t) / N``.  Equals torch's ``BCEWithLogitsLoss()``.
sigmoid_binary_cross_entropy = _make("sigmoid_binary_cross_entropy", None)


def binary_cross_entropy_with_logits(*, pos_weight: Any = None) -> Loss:
    """Binary cross-entropy on logits with torch's ``BCEWithLogitsLoss(pos_weight=)``.

    ``pos_weight`` (finite, >= 0, any shape that broadcasts to the logits', e.g.
    ``(C,)`` for the last axis as in torch) scales the positive term:
    ``l = -[p t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))]
    = softplus(x) - x t + (p - 1) t softplus(-x)``, mean over all N elements;
    gradient ``(sigmoid(x) - t + (p - 1) t (sigmoid(x) - 1)) / N``.  Without
    ``pos_weight`` this is :data:`sigmoid_binary_cross_entropy` itself.
    """
    if pos_weight is None:
        return sigmoid_binary_cross_entropy
    name = "binary_cross_entropy_with_logits"
    try:
        pw = np.array(pos_weight, dtype=np.float64)  # a private copy
    except (TypeError, ValueError):
        raise LossError(f"{name}: pos_weight must be numbers, got {pos_weight!r}") from None
    if not (np.isfinite(pw).all() and (pw >= 0).all()):
        raise LossError(f"{name}: pos_weight must be finite and >= 0, got {pw}")
    pw.flags.writeable = False
    return _make(name, pw)
