"""Metrics: pure functions of predictions and targets that return Python floats.

Each metric averages over the examples of a batch, so a weighted average by
batch size over batches gives the metric over a whole data set (this is what
:func:`fundl.evaluate` does).  Classification metrics take logits (or
probabilities) of shape ``(n, classes)`` and integer labels of shape ``(n,)``
or one-hot rows of shape ``(n, classes)``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, NamedTuple, Sequence, Union

import numpy as np

from .losses import Loss, softmax_cross_entropy

__all__ = [
    "accuracy", "top_k_accuracy", "confusion_matrix", "mse", "mae", "cross_entropy",
    "loss_metric", "Mean", "weighted_mean", "get", "resolve",
]

Metric = Callable[[np.ndarray, Any], float]


def _labels(logits: np.ndarray, labels: Any, name: str) -> np.ndarray:
    """Integer labels of shape ``logits.shape[:-1]`` (one-hot rows are argmax'ed)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim < 1:
        raise ValueError(f"{name}: logits need a class axis, got a scalar")
    if logits.shape[-1] < 2:
        raise ValueError(f"{name}: needs scores for at least 2 classes on the last axis, got "
                         f"shape {logits.shape} (a one-output regression? use 'mse' or 'mae')")
    if labels.dtype.kind in "iu" and labels.shape == logits.shape[:-1]:
        classes = logits.shape[-1]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"{name}: labels must lie in [0, {classes}), "
                             f"got values in [{labels.min()}, {labels.max()}]")
        return labels
    if labels.dtype.kind in "fb" and labels.shape == logits.shape:
        return np.argmax(labels, axis=-1)
    raise ValueError(f"{name}: expected integer labels of shape {logits.shape[:-1]} or one-hot "
                     f"rows of shape {logits.shape}, got {labels.dtype} labels of shape "
                     f"{labels.shape}")


def accuracy(logits: np.ndarray, labels: Any) -> float:
    """Fraction of examples whose ``argmax(logits)`` equals the label (ties: first index)."""
    labels = _labels(logits, labels, "accuracy")
    if labels.size == 0:
        raise ValueError("accuracy: no examples")
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def top_k_accuracy(logits: np.ndarray, labels: Any, k: int) -> float:
    """Fraction of examples whose label is among the ``k`` highest logits.

    Ties are ordered by class index, as ``argmax`` does, so ``k=1`` equals
    :func:`accuracy`: the label's rank is the number of classes with a larger
    logit plus the number of lower-indexed classes with an equal one.
    """
    labels = _labels(logits, labels, "top_k_accuracy")
    logits = np.asarray(logits)
    classes = logits.shape[-1]
    if not 1 <= int(k) <= classes:
        raise ValueError(f"top_k_accuracy: k must be in [1, {classes}], got {k}")
    if labels.size == 0:
        raise ValueError("top_k_accuracy: no examples")
    flat = logits.reshape(-1, classes)
    lab = labels.reshape(-1)
    own = flat[np.arange(flat.shape[0]), lab][:, None]
    before = np.arange(classes)[None, :] < lab[:, None]
    rank = np.count_nonzero((flat > own) | ((flat == own) & before), axis=1)
    return float(np.mean(rank < int(k)))


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts: row = true label, column = prediction.

    ``preds`` are integer class predictions of ``labels``'s shape, or logits
    with one more (class) axis, which are argmax'ed.
    """
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    num_classes = int(num_classes)
    if preds.ndim == labels.ndim + 1 and preds.dtype.kind == "f":
        preds = np.argmax(preds, axis=-1)
    for what, a in (("labels", labels), ("preds", preds)):
        if a.dtype.kind not in "iu":
            raise ValueError(f"confusion_matrix: {what} must be integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {what} must lie in [0, {num_classes}), "
                             f"got values in [{a.min()}, {a.max()}]")
    if labels.shape != preds.shape:
        raise ValueError(f"confusion_matrix: labels shape {labels.shape} and preds shape "
                         f"{preds.shape} differ")
    flat = labels.reshape(-1).astype(np.int64) * num_classes + preds.reshape(-1)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _pair(pred: Any, target: Any, name: str) -> tuple:
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction shape {pred.shape} and target shape "
                         f"{target.shape} differ")
    if pred.size == 0:
        raise ValueError(f"{name}: no examples")
    return pred.astype(np.float64, copy=False), target.astype(np.float64, copy=False)


def mse(pred: np.ndarray, target: Any) -> float:
    """Mean squared error over every element (float64 accumulation)."""
    p, t = _pair(pred, target, "mse")
    return float(np.mean(np.square(p - t)))


def mae(pred: np.ndarray, target: Any) -> float:
    """Mean absolute error over every element (float64 accumulation)."""
    p, t = _pair(pred, target, "mae")
    return float(np.mean(np.abs(p - t)))


def cross_entropy(logits: np.ndarray, labels: Any) -> float:
    """Mean softmax cross-entropy of ``logits`` against labels (computed in float64)."""
    logits64 = np.asarray(logits, dtype=np.float64)
    lab = _labels(logits64, labels, "cross_entropy")
    return float(softmax_cross_entropy(logits64, lab.astype(np.int64, copy=False)))


def loss_metric(loss: Loss) -> Metric:
    """A metric from a :class:`~fundl.losses.Loss`: its batch value as a Python float."""
    def metric(pred: np.ndarray, target: Any) -> float:
        return float(loss.value(pred, target))
    metric.__name__ = loss.name
    return metric


class Mean(NamedTuple):
    """A running weighted mean, as an immutable value: ``Mean().add(v, n).add(w, m).value``."""

    total: float = 0.0
    count: float = 0.0

    def add(self, value: float, weight: float = 1.0) -> "Mean":
        """A new Mean with ``value`` added ``weight`` times."""
        return Mean(self.total + float(value) * float(weight), self.count + float(weight))

    @property
    def value(self) -> float:
        """The mean so far (``nan`` before anything was added)."""
        return self.total / self.count if self.count else float("nan")


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """``sum(values * weights) / sum(weights)`` in float64 (e.g. batch means by batch size)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape or v.ndim != 1 or v.size == 0:
        raise ValueError(f"weighted_mean: expected two equal-length non-empty sequences, got "
                         f"shapes {v.shape} and {w.shape}")
    return float(np.dot(v, w) / w.sum())


_BY_NAME: Dict[str, Metric] = {
    "accuracy": accuracy,
    "mse": mse,
    "mae": mae,
    "cross_entropy": cross_entropy,
    "softmax_cross_entropy": cross_entropy,
}


def get(name: str) -> Metric:
    """The metric called ``name``: ``accuracy``, ``top_<k>_accuracy``, ``mse``, ``mae``,
    ``cross_entropy`` (alias ``softmax_cross_entropy``)."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    parts = name.split("_")
    if len(parts) == 3 and parts[0] == "top" and parts[1].isdigit() and parts[2] == "accuracy":
        k = int(parts[1])

        def top_k(logits: np.ndarray, labels: Any) -> float:
            return top_k_accuracy(logits, labels, k)
        top_k.__name__ = name
        return top_k
    raise ValueError(f"unknown metric {name!r}; known: {sorted(_BY_NAME)} and top_<k>_accuracy")


MetricSpec = Union[str, Loss, Metric]


def resolve(metrics: Union[None, Mapping[str, MetricSpec], Sequence[MetricSpec]]
            ) -> Dict[str, Metric]:
    """Named metric functions from a mapping ``{name: metric}`` or a sequence.

    Each metric is a name for :func:`get`, a :class:`~fundl.losses.Loss`
    (named by its ``name``) or a function ``fn(pred, target) -> float``
    (named by its ``__name__``).
    """
    if metrics is None:
        return {}
    if isinstance(metrics, (str, Loss)) or callable(metrics) and not isinstance(metrics, Mapping):
        metrics = [metrics]
    items = list(metrics.items()) if isinstance(metrics, Mapping) else \
        [(_name_of(m), m) for m in metrics]
    out: Dict[str, Metric] = {}
    for name, m in items:
        if isinstance(m, str):
            fn = get(m)
        elif isinstance(m, Loss):
            fn = loss_metric(m)
        elif callable(m):
            fn = m
        else:
            raise TypeError(f"metric {name!r}: expected a name, a Loss or a function, "
                            f"got {type(m).__name__}")
        if name in out:
            raise ValueError(f"two metrics are called {name!r}; pass a dict to name them")
        out[name] = fn
    return out


def _name_of(m: Any) -> str:
    if isinstance(m, str):
        return m
    if isinstance(m, Loss):
        return m.name
    return getattr(m, "__name__", type(m).__name__)
