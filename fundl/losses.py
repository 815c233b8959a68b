"""Losses: each gives its value and its exact gradient with respect to the prediction.

A :class:`Loss` is a named tuple of two pure functions::

    value = loss(pred, target)                       # same as loss.value(pred, target)
    value, dpred = loss.value_and_grad(pred, target)

``value`` is a 0-d numpy float in ``pred``'s dtype; ``dpred`` has ``pred``'s shape
and dtype.  Losses average over the batch, so ``dpred`` carries the ``1/N``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

import numpy as np

__all__ = ["Loss", "mse", "softmax_cross_entropy", "LossError"]


class LossError(ValueError):
    """Bad input to a loss: names the loss and both shapes or dtypes."""


class Loss(NamedTuple):
    """A loss: ``value(pred, target)`` and ``value_and_grad(pred, target)``."""

    value: Callable[[np.ndarray, Any], np.ndarray]
    value_and_grad: Callable[[np.ndarray, Any], Tuple[np.ndarray, np.ndarray]]
    name: str

    def __call__(self, pred: np.ndarray, target: Any) -> np.ndarray:
        return self.value(pred, target)


def _check_pred(name: str, pred: Any) -> None:
    if not isinstance(pred, np.ndarray) or pred.dtype.kind != "f":
        what = pred.dtype if isinstance(pred, np.ndarray) else type(pred).__name__
        raise LossError(f"{name}: expected a floating-point prediction array, got {what}")


# --- mean squared error ----------------------------------------------------------

def _mse_check(pred, target):
    _check_pred("mse", pred)
    target = np.asarray(target)
    if target.shape != pred.shape:
        raise LossError(f"mse: prediction shape {pred.shape} and target shape "
                        f"{target.shape} differ")
    return target


def _mse_value(pred, target):
    target = _mse_check(pred, target)
    diff = pred - target.astype(pred.dtype, copy=False)
    return np.asarray(np.mean(np.square(diff)), dtype=pred.dtype)


def _mse_value_and_grad(pred, target):
    target = _mse_check(pred, target)
    diff = pred - target.astype(pred.dtype, copy=False)
    value = np.asarray(np.mean(np.square(diff)), dtype=pred.dtype)
    # d/dpred mean((pred - t)^2) = 2 (pred - t) / N, N = every element.
    diff *= pred.dtype.type(2.0 / diff.size)  # diff is our own array
    return value, diff


#: Mean squared error over every element of ``pred`` (any shape, target of the
#: same shape); gradient ``2 (pred - target) / N`` with N the number of elements.
mse = Loss(_mse_value, _mse_value_and_grad, "mse")


# --- softmax cross-entropy on logits ---------------------------------------------

def _labels_and_onehot(pred, target):
    """Returns (int labels or None, one-hot target or None)."""
    target = np.asarray(target)
    classes = pred.shape[-1]
    if target.dtype.kind in "iu":
        if target.shape != pred.shape[:-1]:
            raise LossError(
                f"softmax_cross_entropy: integer labels must have shape {pred.shape[:-1]} "
                f"for logits of shape {pred.shape}, got {target.shape}")
        # One reduction: negative labels wrap to huge values as unsigned integers.
        unsigned = target.view(target.dtype.str.replace("i", "u"))
        if target.size and unsigned.max() >= classes:
            raise LossError(f"softmax_cross_entropy: labels must lie in [0, {classes}), "
                            f"got values in [{target.min()}, {target.max()}]")
        return target, None
    if target.dtype.kind in "fb":
        if target.shape != pred.shape:
            raise LossError(
                f"softmax_cross_entropy: one-hot (or probability) targets must have the "
                f"logits' shape {pred.shape}, got {target.shape}")
        return None, target.astype(pred.dtype, copy=False)
    raise LossError(f"softmax_cross_entropy: targets must be integer labels or float "
                    f"one-hot rows, got dtype {target.dtype}")


def _log_softmax(pred):
    shifted = pred - pred.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    shifted -= log_norm
    return shifted


def _sce_check(pred, target):
    _check_pred("softmax_cross_entropy", pred)
    if pred.ndim < 1:
        raise LossError("softmax_cross_entropy: logits need a class axis, got a scalar")
    return _labels_and_onehot(pred, target)


def _sce_nll(log_probs, labels, onehot):
    if labels is not None:
        picked = np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
        return -picked.mean()
    return -(onehot * log_probs).sum(axis=-1).mean()


def _sce_value(pred, target):
    labels, onehot = _sce_check(pred, target)
    return np.asarray(_sce_nll(_log_softmax(pred), labels, onehot), dtype=pred.dtype)


def _sce_value_and_grad(pred, target):
    labels, onehot = _sce_check(pred, target)
    classes = pred.shape[-1]
    z = pred.reshape(-1, classes)
    n = z.shape[0]  # examples the loss averages over
    # One exp pass and one (n, classes) buffer: e holds the shifted logits, then
    # exp of them, then the gradient.  log softmax is never materialised.
    e = z - z.max(axis=-1, keepdims=True)  # our own array from here on
    if labels is not None:
        rows = np.arange(n)
        flat_labels = labels.reshape(-1)
        picked_sum = e[rows, flat_labels].sum()  # sum of the true classes' shifted logits
    else:
        t = onehot.reshape(-1, classes)
        row_mass = t.sum(axis=-1, keepdims=True)
        cross = np.vdot(t, e)  # sum_i sum_c t_ic shifted_ic
    np.exp(e, out=e)
    total = e.sum(axis=-1, keepdims=True)
    log_total = np.log(total)
    if labels is not None:
        # -mean log softmax(z)[label] = mean(log sum exp(shifted) - shifted[label])
        value = (log_total.sum() - picked_sum) / n
        e *= (1.0 / n) / total  # softmax / n  (python float: keeps float32)
        e[rows, flat_labels] -= pred.dtype.type(1.0 / n)
    else:
        # Exact also for soft targets: d/dz -sum t log softmax(z) = softmax(z) sum t - t.
        value = (np.vdot(row_mass, log_total) - cross) / n
        e *= row_mass / (total * n)
        e -= t * pred.dtype.type(1.0 / n)
    return np.asarray(value, dtype=pred.dtype), e.reshape(pred.shape)


#: Cross-entropy of ``softmax(logits)`` against integer labels (shape
#: ``logits.shape[:-1]``) or one-hot / probability rows (shape ``logits.shape``),
#: averaged over the examples.  Stable for logits of any size (log-sum-exp with
#: the row maximum subtracted); fused gradient ``(softmax - onehot) / N``.
softmax_cross_entropy = Loss(_sce_value, _sce_value_and_grad, "softmax_cross_entropy")
