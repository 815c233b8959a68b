"""The Loss type, its error, and the input checks every loss shares."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import numpy as np

__all__ = ["Loss", "LossError"]


class LossError(ValueError):
    """Bad input to a loss: names the loss and the expected and actual shape, dtype or value."""


class Loss(NamedTuple):
    """A loss: ``value(pred, target)``, ``value_and_grad(pred, target)`` and its divisor.

    Every loss is a weighted mean ``S / W``: a sum ``S`` over what it counts
    (elements, examples, non-ignored labels weighted by their class) divided by
    their total weight ``W``.  ``total_weight(pred, target) -> W`` (a float >= 0)
    states that divisor, so that the loss over several batches -- an epoch in
    :func:`fundl.evaluate`, the ranks' parts of a global batch in
    :func:`fundl.distributed.make_step` -- is exactly ``sum S_b / sum W_b``,
    whatever the split.  ``None`` (a loss of your own) means a mean over the
    examples: ``W = pred.shape[0]`` (see :meth:`weight_of`).

    ``parts`` is set on a loss made by :func:`fundl.losses.combine`: its parts
    ``(output index, loss, weight)``, which :func:`fundl.evaluate`, fit and the
    data-parallel step add up one by one (``sum_i w_i S_i / W_i``); ``None`` otherwise.
    """

    # pred is an array, or a tuple of arrays for a combined loss (fundl.losses.combine); the
    # gradient has pred's structure
    value: Callable[[Any, Any], np.ndarray]
    value_and_grad: Callable[[Any, Any], Tuple[np.ndarray, Any]]
    name: str
    total_weight: Optional[Callable[[np.ndarray, Any], float]] = None
    parts: Optional[Tuple[Tuple[int, Loss, float], ...]] = None

    def __call__(self, pred: np.ndarray, target: Any) -> np.ndarray:
        return self.value(pred, target)

    def weight_of(self, pred: np.ndarray, target: Any) -> float:
        """The divisor ``W`` of this loss on ``(pred, target)``: ``total_weight``, or the
        number of examples ``pred.shape[0]`` for a loss that does not state one."""
        if self.total_weight is not None:
            return float(self.total_weight(pred, target))
        return float(np.shape(pred)[0]) if np.ndim(pred) else 1.0


def elements(pred: np.ndarray, target: Any) -> float:
    """``total_weight`` of a mean over every element of ``pred``."""
    return float(np.size(pred))


def examples(pred: np.ndarray, target: Any) -> float:
    """``total_weight`` of a mean over the examples (every leading position, classes last)."""
    shape = np.shape(pred)
    return float(np.prod(shape[:-1])) if shape else 1.0


def check_pred(name: str, pred: Any, *, class_axis: bool = False) -> None:
    """``pred`` is a float array (with a class axis if asked) holding at least one example."""
    if not isinstance(pred, np.ndarray) or pred.dtype.kind != "f":
        what = pred.dtype if isinstance(pred, np.ndarray) else type(pred).__name__
        raise LossError(f"{name}: expected a floating-point prediction array, got {what}")
    if class_axis and pred.ndim < 1:
        raise LossError(f"{name}: predictions need a class (last) axis, got a scalar")
    examples = int(np.prod(pred.shape[:-1])) if class_axis else pred.size
    if examples == 0:
        raise LossError(f"{name}: the batch is empty (prediction shape {pred.shape}); "
                        f"a mean over no examples is undefined")
    if class_axis and pred.shape[-1] == 0:
        raise LossError(f"{name}: predictions need at least one class, got shape {pred.shape}")


def working(pred: np.ndarray) -> np.ndarray:
    """``pred`` in the dtype a loss computes in: float32 for float16, else ``pred`` itself.

    A float16 loss is computed in float32 and its value and gradient rounded once to
    float16 at the end: float16 sums of per-example losses overflow past 65504 (a mean
    cross-entropy of 5 over 32k tokens), ``pred - target`` and its square overflow for
    moderate values, and a gradient ``1/N`` falls below float16's normal range for N
    beyond 16k.  float32 and float64 run as they are (no copy, no extra pass).
    """
    return pred if pred.dtype.itemsize >= 4 else pred.astype(np.float32)


def same_shape_target(name: str, pred: np.ndarray, target: Any, what: str = "target"
                      ) -> np.ndarray:
    """``target`` as an array of ``pred``'s shape and dtype (cast, never written to)."""
    target = np.asarray(target)
    if target.shape != pred.shape:
        raise LossError(f"{name}: prediction shape {pred.shape} and {what} shape "
                        f"{target.shape} differ")
    if target.dtype.kind not in "fiub":
        raise LossError(f"{name}: {what} must be numeric, got dtype {target.dtype}")
    return target.astype(pred.dtype, copy=False)


def check_probabilities(name: str, t: np.ndarray, upper: Optional[float] = None) -> None:
    """Every entry of ``t`` is >= 0 (and <= ``upper``): one reduction each, NaN fails too."""
    if t.size == 0:
        return
    low = t.min()
    if not low >= 0:  # also catches NaN, which min propagates
        raise LossError(f"{name}: probability targets must be >= 0 and not NaN, "
                        f"got a minimum of {low}")
    if upper is not None:
        high = t.max()
        if not high <= upper:
            raise LossError(f"{name}: probability targets must lie in [0, {upper:g}], "
                            f"got a maximum of {high}")


def check_labels(name: str, pred: np.ndarray, target: Any,
                 ignore_index: Optional[int] = None) -> np.ndarray:
    """Integer labels of shape ``pred.shape[:-1]`` in ``[0, classes)`` (or ``ignore_index``)."""
    target = np.asarray(target)
    classes = pred.shape[-1]
    if target.dtype.kind not in "iu":
        raise LossError(f"{name}: labels must be integers, got dtype {target.dtype}")
    if target.shape != pred.shape[:-1]:
        raise LossError(f"{name}: integer labels must have shape {pred.shape[:-1]} "
                        f"for predictions of shape {pred.shape}, got {target.shape}")
    if ignore_index is None:
        # One reduction: negative labels wrap to huge values as unsigned integers.
        unsigned = target.view(target.dtype.str.replace("i", "u"))
        if target.size and unsigned.max() >= classes:
            raise LossError(f"{name}: labels must lie in [0, {classes}), "
                            f"got values in [{target.min()}, {target.max()}]")
        return target
    counted = target[target != ignore_index]
    if counted.size and (counted.min() < 0 or counted.max() >= classes):
        raise LossError(f"{name}: labels must lie in [0, {classes}) or equal "
                        f"ignore_index={ignore_index}, got other values in "
                        f"[{counted.min()}, {counted.max()}]")
    return target


def class_weights(name: str, weights: Any) -> Optional[np.ndarray]:
    """A private float64 copy of per-class ``weights`` (1-D, finite, >= 0), or None."""
    if weights is None:
        return None
    w = np.array(weights, dtype=np.float64)  # a copy: later changes to the caller's array don't leak in
    if w.ndim != 1 or w.size == 0:
        raise LossError(f"{name}: weights must be a non-empty 1-D array (one per class), "
                        f"got shape {w.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise LossError(f"{name}: weights must be finite and >= 0, got {w}")
    w.flags.writeable = False
    return w


def weights_for(name: str, w: Optional[np.ndarray], classes: int, dtype: np.dtype
                ) -> Optional[np.ndarray]:
    """``w`` in ``dtype`` after checking it has one entry per class."""
    if w is None:
        return None
    if w.shape != (classes,):
        raise LossError(f"{name}: weights must have shape ({classes},), one per class of "
                        f"the predictions, got {w.shape}")
    return w.astype(dtype, copy=False)


def scalar(value: Any, dtype: np.dtype) -> np.ndarray:
    """A 0-d array of ``dtype`` (a float16 value beyond its range is inf, without a warning)."""
    if dtype.itemsize >= 4:
        return np.asarray(value, dtype=dtype)
    with np.errstate(over="ignore"):
        return np.asarray(value, dtype=dtype)


def like(grad: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The gradient ``grad`` (computed in :func:`working`'s dtype) in ``pred``'s dtype."""
    if grad.dtype == pred.dtype:
        return grad
    with np.errstate(over="ignore"):
        return grad.astype(pred.dtype)
