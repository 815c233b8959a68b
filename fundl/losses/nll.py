"""Negative log-likelihood on log-probabilities: ``nll``."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from ._base import Loss, check_labels, check_pred, examples, scalar

__all__ = ["nll"]


def _checked(pred: np.ndarray, target: Any) -> np.ndarray:
    check_pred("nll", pred, class_axis=True)
    return check_labels("nll", pred, target)


def _nll_value(pred: np.ndarray, target: Any) -> np.ndarray:
    """``-mean_i pred[i, y_i]``: the mean negative log-likelihood of the labels.

    ``pred`` holds log-probabilities of shape ``(..., C)`` (e.g. a log-softmax
    output), classes on the LAST axis; labels are integers of shape
    ``pred.shape[:-1]`` in ``[0, C)``; the mean is over the N examples (every
    leading position).  This is torch's ``NLLLoss()`` for ``(N, C)`` input, and
    for ``(N, C, d1, ...)`` input once its class axis 1 is moved last.  The
    gradient is ``-1/N`` at each example's label and 0 elsewhere.
    """
    labels = _checked(pred, target)
    picked = np.take_along_axis(pred, labels[..., None], axis=-1)
    return scalar(-_mean(picked), pred.dtype)


def _mean(picked: np.ndarray) -> np.ndarray:
    """The mean of the picked log-probabilities, summed in float32 at least."""
    return picked.mean(dtype=np.float32) if picked.dtype.itemsize < 4 else picked.mean()


def _nll_value_and_grad(pred: np.ndarray, target: Any) -> Tuple[np.ndarray, np.ndarray]:
    labels = _checked(pred, target)
    classes = pred.shape[-1]
    flat = labels.reshape(-1)
    rows = np.arange(flat.size)
    value = scalar(-_mean(pred.reshape(-1, classes)[rows, flat]), pred.dtype)
    grad = np.zeros((flat.size, classes), pred.dtype)
    grad[rows, flat] = -1.0 / flat.size   # rounded once to pred's dtype
    return value, grad.reshape(pred.shape)


#: Mean negative log-likelihood ``-mean_i pred[i, y_i]`` of log-probabilities
#: ``pred`` (shape ``(..., C)``, classes LAST; torch's ``NLLLoss`` has them on
#: axis 1) against integer labels of shape ``pred.shape[:-1]``; gradient ``-1/N``
#: at the labels, 0 elsewhere.
nll = Loss(_nll_value, _nll_value_and_grad, "nll", examples)
