"""Regression losses: ``mse``, ``l1`` and ``huber(delta)``.

Each takes a prediction of any shape and a target of the same shape and averages
over every element (N = ``pred.size``), as torch's ``MSELoss``, ``L1Loss`` and
``HuberLoss`` do with ``reduction='mean'``.  A float16 prediction is computed in
float32 (:func:`~fundl.losses._base.working`); value and gradient are in ``pred``'s dtype.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from ._base import Loss, LossError, check_pred, elements, like, same_shape_target, scalar, working

__all__ = ["mse", "l1", "huber"]


def _diff(name: str, pred: np.ndarray, target: Any) -> np.ndarray:
    """``pred - target`` in the working dtype (float32 for float16): a new array, ours."""
    check_pred(name, pred)
    work = working(pred)
    return work - same_shape_target(name, work, target)


# --- mean squared error ----------------------------------------------------------

def _mse_value(pred: np.ndarray, target: Any) -> np.ndarray:
    """Mean squared error ``mean((pred - target)^2)`` over every element."""
    diff = _diff("mse", pred, target)
    return scalar(np.mean(np.square(diff)), pred.dtype)


def _mse_value_and_grad(pred: np.ndarray, target: Any) -> Tuple[np.ndarray, np.ndarray]:
    diff = _diff("mse", pred, target)
    value = scalar(np.mean(np.square(diff)), pred.dtype)
    # d/dpred mean((pred - t)^2) = 2 (pred - t) / N, N = every element.
    diff *= diff.dtype.type(2.0 / diff.size)
    return value, like(diff, pred)


#: Mean squared error over every element of ``pred`` (any shape, target of the
#: same shape); gradient ``2 (pred - target) / N`` with N the number of elements.
mse = Loss(_mse_value, _mse_value_and_grad, "mse", elements)


# --- mean absolute error ---------------------------------------------------------

def _l1_value(pred: np.ndarray, target: Any) -> np.ndarray:
    """Mean absolute error ``mean(|pred - target|)`` over every element.

    Gradient ``sign(pred - target) / N`` (N = ``pred.size``), taken as 0 where
    ``pred == target`` (the subgradient torch's ``L1Loss`` also uses).
    """
    diff = _diff("l1", pred, target)
    return scalar(np.mean(np.abs(diff)), pred.dtype)


def _l1_value_and_grad(pred: np.ndarray, target: Any) -> Tuple[np.ndarray, np.ndarray]:
    diff = _diff("l1", pred, target)
    value = scalar(np.mean(np.abs(diff)), pred.dtype)
    np.sign(diff, out=diff)  # 0 at ties
    diff *= diff.dtype.type(1.0 / diff.size)
    return value, like(diff, pred)


#: Mean absolute error over every element (torch's ``L1Loss``); gradient
#: ``sign(pred - target) / N``, 0 where ``pred == target``.
l1 = Loss(_l1_value, _l1_value_and_grad, "l1", elements)


# --- Huber -------------------------------------------------------------------------

def huber(delta: float = 1.0) -> Loss:
    """Huber loss with threshold ``delta`` (torch's ``HuberLoss(delta=delta)``), mean over elements.

    With ``d = pred - target`` (any shape, target of the same shape), each element
    costs ``0.5 d^2`` where ``|d| <= delta`` and ``delta (|d| - 0.5 delta)``
    elsewhere; the loss is their mean over all N elements.  The gradient is
    ``clip(d, -delta, delta) / N`` (continuous: both pieces give ``delta sign(d)``
    at ``|d| = delta``).  ``delta`` must be a finite number > 0.
    """
    delta = float(delta)
    if not (np.isfinite(delta) and delta > 0):
        raise LossError(f"huber: delta must be a finite number > 0, got {delta}")

    def value(pred: np.ndarray, target: Any) -> np.ndarray:
        d = np.abs(_diff("huber", pred, target))
        quadratic = d <= delta
        cost = np.where(quadratic, 0.5 * d * d, delta * (d - 0.5 * delta))
        return scalar(np.mean(cost), pred.dtype)

    def value_and_grad(pred: np.ndarray, target: Any) -> Tuple[np.ndarray, np.ndarray]:
        d = _diff("huber", pred, target)
        a = np.abs(d)
        cost = np.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta))
        value = scalar(np.mean(cost), pred.dtype)
        np.clip(d, -delta, delta, out=d)
        d *= d.dtype.type(1.0 / d.size)
        return value, like(d, pred)

    return Loss(value, value_and_grad, "huber", elements)
