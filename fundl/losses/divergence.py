"""Kullback-Leibler divergence: ``kl_divergence`` (inputs as torch's ``KLDivLoss``)."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from ._base import (Loss, check_pred, check_probabilities, examples, like, same_shape_target,
                    scalar, working)

__all__ = ["kl_divergence"]


def _terms(pred: np.ndarray, target: Any):
    """``(t, N, value)`` in the working dtype (float32 for float16: the float16 sums of
    ``t log t`` and ``t pred`` over 40k examples overflowed, and their difference was NaN)."""
    check_pred("kl_divergence", pred, class_axis=True)
    pred = working(pred)
    t = same_shape_target("kl_divergence", pred, target)
    check_probabilities("kl_divergence", t)
    examples = pred.size // pred.shape[-1]
    # sum t log t with 0 log 0 = 0: log of 1 where t == 0 (no warning, no -inf).
    entropy_term = np.vdot(t, np.log(np.where(t > 0, t, 1)))
    return t, examples, (entropy_term - np.vdot(t, pred)) / examples


def _kl_value(pred: np.ndarray, target: Any) -> np.ndarray:
    """``sum_i sum_c t_ic (log t_ic - pred_ic) / N``: KL(target || exp(pred)), mean over examples.

    As torch's ``KLDivLoss(reduction='batchmean')``: ``pred`` are
    log-probabilities (e.g. a log-softmax output), ``target`` probabilities
    (>= 0, not NaN) of the same shape ``(..., C)``, with ``0 log 0 = 0``.  The
    sum runs over the classes (last axis) and the mean over the N examples, every
    leading position: for 2-D ``(N, C)`` input this is torch's ``batchmean``;
    for ``(N, T, C)`` torch divides by ``N`` only, so its value is ``T`` times
    this one.  Gradient: ``-target / N``.  float16 is computed in float32.
    """
    _, _, value = _terms(pred, target)
    return scalar(value, pred.dtype)


def _kl_value_and_grad(pred: np.ndarray, target: Any) -> Tuple[np.ndarray, np.ndarray]:
    t, examples, value = _terms(pred, target)
    return scalar(value, pred.dtype), like(t * t.dtype.type(-1.0 / examples), pred)


#: KL divergence ``sum t (log t - pred) / N`` of log-probabilities ``pred`` from
#: probability targets (shape ``(..., C)``, sum over the last axis, mean over the
#: N examples; torch's ``KLDivLoss(reduction='batchmean')`` for 2-D input;
#: ``0 log 0 = 0``); gradient ``-target / N``.
kl_divergence = Loss(_kl_value, _kl_value_and_grad, "kl_divergence", examples)
