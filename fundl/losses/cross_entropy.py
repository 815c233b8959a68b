"""Softmax cross-entropy on logits: the ``softmax_cross_entropy`` Loss and the
``cross_entropy(label_smoothing=, weights=, ignore_index=)`` factory.

Logits have shape ``(..., C)`` with the classes on the LAST axis (torch's
``CrossEntropyLoss`` puts them on axis 1: move it with ``np.moveaxis(x, 1, -1)``).
Targets are integer labels of shape ``logits.shape[:-1]`` or one-hot /
probability rows of the logits' shape.  Every leading position is one example.

Both are written as ``sum_i sum_c a_ic (-log softmax(z_i)_c) / D`` for a
non-negative target weighting ``a`` and a divisor ``D``, whose exact gradient is
``(softmax(z_i) * sum_c a_ic - a_i) / D``.  The log-sum-exp subtracts the row
maximum, so any finite logits give a finite value and gradient.  float16 logits
are computed in float32 (a float16 sum of per-token losses overflows past 65504)
and the value and gradient rounded once to float16.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import kernels

from ._base import (Loss, LossError, check_labels, check_pred, check_probabilities, examples,
                    class_weights, like, scalar, weights_for, working)

__all__ = ["softmax_cross_entropy", "cross_entropy"]

_SCE = "softmax_cross_entropy"


def _targets(name: str, pred: np.ndarray, target: Any, ignore_index: Optional[int] = None,
             cast: bool = True) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """``(labels, None)`` for integer labels, ``(None, probabilities)`` else, checked against
    ``pred``'s shape; the probabilities in ``pred``'s dtype when ``cast``, else as given."""
    target = np.asarray(target)
    if target.dtype.kind in "iu":
        return check_labels(name, pred, target, ignore_index), None
    if target.dtype.kind in "fb":
        if target.shape != pred.shape:
            raise LossError(
                f"{name}: one-hot (or probability) targets must have the "
                f"logits' shape {pred.shape}, got {target.shape}")
        if target.dtype.kind == "f":
            check_probabilities(name, target)
        return None, target.astype(pred.dtype, copy=False) if cast else target
    raise LossError(f"{name}: targets must be integer labels or float "
                    f"one-hot rows, got dtype {target.dtype}")


# --- the plain loss: a fused fast path ---------------------------------------------

def _sce_value(pred: np.ndarray, target: Any) -> np.ndarray:
    """Mean softmax cross-entropy ``-mean_i sum_c t_ic log softmax(z_i)_c`` over the examples."""
    check_pred(_SCE, pred, class_axis=True)
    work = working(pred)
    labels, onehot = _targets(_SCE, work, target)
    shifted = kernels.log_softmax(work)
    if labels is not None:
        picked = np.take_along_axis(shifted, labels[..., None], axis=-1)[..., 0]
        return scalar(-picked.mean(), pred.dtype)
    return scalar(-(onehot * shifted).sum(axis=-1).mean(), pred.dtype)


def _sce_value_and_grad(pred: np.ndarray, target: Any) -> Tuple[np.ndarray, np.ndarray]:
    check_pred(_SCE, pred, class_axis=True)
    work = working(pred)
    labels, onehot = _targets(_SCE, work, target)
    classes = pred.shape[-1]
    z = work.reshape(-1, classes)
    n = z.shape[0]  # examples the loss averages over
    # One exp pass and one (n, classes) buffer: e holds the shifted logits, then
    # exp of them, then the gradient.  log softmax is never materialised.
    e = z - z.max(axis=-1, keepdims=True)  # our own array from here on
    if labels is not None:
        rows = np.arange(n)
        flat_labels = labels.reshape(-1)
        picked_sum = e[rows, flat_labels].sum()  # sum of the true classes' shifted logits
    else:   # _targets gives probabilities whenever it gives no labels (no check per call)
        t = onehot.reshape(-1, classes)  # type: ignore[union-attr]
        row_mass = t.sum(axis=-1, keepdims=True)
        cross = np.vdot(t, e)  # sum_i sum_c t_ic shifted_ic
    np.exp(e, out=e)
    total = kernels.row_sums(e)[:, None]
    log_total = np.log(total)
    if labels is not None:
        # -mean log softmax(z)[label] = mean(log sum exp(shifted) - shifted[label])
        value = (log_total.sum() - picked_sum) / n
        e *= (1.0 / n) / total  # softmax / n  (python float: keeps float32)
        e[rows, flat_labels] -= e.dtype.type(1.0 / n)
    else:
        # Exact also for soft targets: d/dz -sum t log softmax(z) = softmax(z) sum t - t.
        value = (np.vdot(row_mass, log_total) - cross) / n
        e *= row_mass / (total * n)
        e -= t * e.dtype.type(1.0 / n)
    return scalar(value, pred.dtype), like(e.reshape(pred.shape), pred)


#: Cross-entropy of ``softmax(logits)`` (classes on the last axis) against
#: integer labels (shape ``logits.shape[:-1]``) or one-hot / probability rows
#: (shape ``logits.shape``, entries >= 0), averaged over the N examples (every
#: leading position): ``-mean_i sum_c t_ic log softmax(z_i)_c``.  Stable for
#: logits of any size (log-sum-exp with the row maximum subtracted); fused
#: gradient ``(softmax(z) * sum_c t_c - t) / N``, i.e. ``(softmax - onehot) / N``.
#: Equals torch's ``CrossEntropyLoss()`` with classes moved to the last axis.
#: ``cross_entropy(...)`` adds label smoothing, class weights and an ignore index.
softmax_cross_entropy = Loss(_sce_value, _sce_value_and_grad, _SCE, examples)


# --- with options ----------------------------------------------------------------

def cross_entropy(*, label_smoothing: float = 0.0, weights: Any = None,
                  ignore_index: Optional[int] = None) -> Loss:
    """Softmax cross-entropy with torch's ``CrossEntropyLoss`` options, as a Loss.

    ``cross_entropy()`` with no options *is* :data:`softmax_cross_entropy`.
    Logits ``z`` have shape ``(..., C)`` (classes last; torch uses axis 1), targets
    are integer labels of shape ``z.shape[:-1]`` or probability rows of ``z``'s
    shape.  With ``eps = label_smoothing`` in ``[0, 1]``, ``w`` the per-class
    ``weights`` (shape ``(C,)``, >= 0; all ones if None) and ``m_i = [y_i !=
    ignore_index]``, the loss is ``sum_i sum_c a_ic (-log softmax(z_i)_c) / D``:

    - integer labels: ``a_ic = m_i ((1 - eps) w_c [c == y_i] + eps w_c / C)`` and
      ``D = sum_i m_i w_{y_i}``, the weighted mean torch computes (it divides the
      smoothing term by the same sum of the counted targets' weights);
    - probability targets ``t``: ``a_ic = w_c ((1 - eps) t_ic + eps / C)`` and
      ``D = N`` the number of examples (torch does not weight the divisor here).
      ``ignore_index`` selects labels only: like torch, a non-negative one with
      probability targets raises; a negative one has nothing to match.

    Gradient: ``(softmax(z_i) * sum_c a_ic - a_i) / D``.  When ``D`` is 0 (every
    label ignored, or every counted label has weight 0) the value is 0 and the
    gradient all zeros (torch gives NaN): such a batch has nothing to learn from.
    Labels must lie in ``[0, C)`` or equal ``ignore_index`` (torch's default
    ``-100`` is not the default here: pass it to ignore padding).
    """
    name = "cross_entropy"
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise LossError(f"{name}: label_smoothing must lie in [0, 1], got {label_smoothing}")
    w64 = class_weights(name, weights)
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise LossError(f"{name}: ignore_index must be an int or None, got {ignore_index!r}")
        ignore_index = int(ignore_index)
    if eps == 0.0 and w64 is None and ignore_index is None:
        return softmax_cross_entropy

    def checked(pred: np.ndarray, target: Any):
        """``(labels or None, probabilities as given or None)``, checked (``pred`` is not
        widened: ``total_weight`` needs only the labels, ``terms`` widens it once)."""
        check_pred(name, pred, class_axis=True)
        labels, probs = _targets(name, pred, target, ignore_index, cast=False)
        if labels is None and ignore_index is not None and ignore_index >= 0:
            raise LossError(f"{name}: ignore_index={ignore_index} applies to integer "
                            f"labels only, got probability targets of shape {pred.shape}")
        return labels, probs

    def label_weights(flat: np.ndarray, w: Optional[np.ndarray], dtype: np.dtype):
        """``(keep, safe labels, row weights m_i w_{y_i})`` of flat integer labels."""
        keep = np.ones(flat.size, bool) if ignore_index is None else flat != ignore_index
        safe = np.where(keep, flat, 0)
        return keep, safe, keep.astype(dtype) if w is None else w[safe] * keep

    def total_weight(pred: np.ndarray, target: Any) -> float:
        """``D``: the summed weights of the counted labels, or the number of examples for
        probability targets (in float64: a float16 sum of many weights would overflow)."""
        labels, _ = checked(pred, target)
        if labels is None:
            return float(pred.size // pred.shape[-1])
        w = weights_for(name, w64, pred.shape[-1], np.dtype(np.float64))
        return float(label_weights(labels.reshape(-1), w, np.dtype(np.float64))[2].sum())

    def terms(pred: np.ndarray, target: Any):
        """``(shifted logits, exp of them, row sums, a, D)`` for the examples as rows."""
        labels, probs = checked(pred, target)
        z = working(pred).reshape(-1, pred.shape[-1])
        dtype = z.dtype
        classes = pred.shape[-1]
        w = weights_for(name, w64, classes, dtype)
        n = z.shape[0]
        if labels is None:
            a = probs.reshape(-1, classes).astype(dtype, copy=False)
            if eps:
                a = a * dtype.type(1.0 - eps) + dtype.type(eps / classes)
            if w is not None:
                a = a * w
            divisor = dtype.type(n)
        else:
            keep, safe, row_w = label_weights(labels.reshape(-1), w, dtype)
            divisor = row_w.sum()
            a = np.zeros((n, classes), dtype)
            if eps:
                a[...] = (w if w is not None else dtype.type(1.0)) * dtype.type(eps / classes)
                a *= keep[:, None]
            a[np.arange(n), safe] += row_w * dtype.type(1.0 - eps)
        with np.errstate(over="ignore"):
            shifted = z - z.max(axis=-1, keepdims=True)
        # A logit gap beyond the dtype's range gives -inf; clamp so a zero a_ic times
        # it stays 0 (the value is then finite whenever it is representable).
        np.maximum(shifted, np.finfo(dtype).min, out=shifted)
        ex = np.exp(shifted)
        total = ex.sum(axis=-1)
        return shifted, ex, total, a, divisor

    def loss_value(a, shifted, total, divisor, dtype):
        # sum_ic a_ic (log total_i - shifted_ic) / D
        return scalar((np.dot(a.sum(axis=-1), np.log(total)) - np.vdot(a, shifted)) / divisor,
                      dtype)

    def value(pred: np.ndarray, target: Any) -> np.ndarray:
        shifted, _, total, a, divisor = terms(pred, target)
        if divisor == 0:
            return scalar(0.0, pred.dtype)
        return loss_value(a, shifted, total, divisor, pred.dtype)

    def value_and_grad(pred: np.ndarray, target: Any) -> Tuple[np.ndarray, np.ndarray]:
        shifted, ex, total, a, divisor = terms(pred, target)
        if divisor == 0:
            return scalar(0.0, pred.dtype), np.zeros_like(pred)
        v = loss_value(a, shifted, total, divisor, pred.dtype)
        ex *= (a.sum(axis=-1) / (total * divisor))[:, None]  # softmax * sum_c a / D
        ex -= a / divisor
        return v, like(ex.reshape(pred.shape), pred)

    return Loss(value, value_and_grad, name, total_weight)
