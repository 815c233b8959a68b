"""Metrics: pure functions of predictions and targets, and the :class:`Metric` record that lets
:func:`fundl.evaluate` and :func:`fundl.fit` add them up exactly over batches.

A metric over a data set is not always the mean of its batch values: an F1 score, a loss with
``ignore_index`` or class weights, any ratio.  So every metric is a :class:`Metric`, a pair of
pure functions: ``stats(pred, target)`` gives a small float64 vector of *sums* over a batch
(correct predictions and examples, a confusion matrix, a loss's numerator ``S`` and divisor
``W``), and ``result(stats)`` turns the sums of any number of batches into the value.  Sums add
over batches and ranks, so ``evaluate`` is independent of ``batch_size`` and of the number of
MPI ranks.  Calling a metric on one batch, ``metric(pred, target)``, gives its value there.

Classification metrics take logits (or probabilities, whose argmax is the same) of shape
``(n, classes)`` -- or ``(..., classes)``, each leading position an example -- and integer
labels of shape ``(n,)`` or one-hot rows of shape ``(n, classes)``.  A single logit per
example (shape ``(n, 1)`` or ``(n,)`` with labels of that shape, as for
:func:`fundl.losses.sigmoid_binary_cross_entropy`) is a binary classifier: the prediction is
``logit > 0``.  For a model with several outputs (a tuple), :func:`at` applies a metric to one
of them: ``metrics={"accuracy": fl.metrics.at(0, "accuracy"), "mae": fl.metrics.at(1, "mae")}``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import kernels
from .losses import Loss, softmax_cross_entropy

__all__ = [
    "Metric", "accuracy", "binary_accuracy", "top_k_accuracy", "precision", "recall", "f1",
    "confusion_matrix", "mse", "mae", "cross_entropy", "probabilities", "at", "loss_metric",
    "from_function", "Mean", "weighted_mean", "get", "resolve", "higher_is_better",
]


class Metric(NamedTuple):
    """A metric that adds up exactly over batches: ``result(sum of stats(pred, target))``.

    - ``stats(pred, target) -> np.ndarray``: a 1-D float64 vector of sums over the batch
      (its length may depend on the shapes, e.g. the number of classes, never on the batch
      size);
    - ``result(stats) -> float``: the value from the stats summed over any set of batches;
    - ``name``: the key it gets in ``evaluate``'s result and fit's history;
    - ``higher_is_better``: ``True`` (accuracy), ``False`` (an error) or ``None`` (unknown),
      read by ``EarlyStopping(mode="auto")`` and friends.

    ``metric(pred, target)`` is ``result(stats(pred, target))``, a Python float.
    """

    stats: Callable[[Any, Any], np.ndarray]
    result: Callable[[np.ndarray], float]
    name: str
    higher_is_better: Optional[bool] = None

    def __call__(self, pred: Any, target: Any) -> float:
        return float(self.result(self.stats(pred, target)))


def _ratio(stats: np.ndarray) -> float:
    """``stats[0] / stats[1]``: a mean from its sum and count (``nan`` for a count of 0)."""
    return float(stats[0] / stats[1]) if stats[1] else float("nan")


# --- classification ------------------------------------------------------------------------

def _is_binary(logits: np.ndarray, labels: np.ndarray) -> bool:
    """One logit per example: shape ``(..., 1)`` with labels of that shape or without the 1,
    or logits and labels of one shape that has no class axis to speak of (``(n,)``)."""
    if logits.ndim >= 1 and logits.shape[-1] == 1:
        return labels.shape in (logits.shape, logits.shape[:-1])
    return logits.ndim == 1 and labels.shape == logits.shape


def _binary_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """0/1 integer labels from integer, bool or float 0/1 targets (else a ValueError)."""
    if labels.dtype.kind not in "iubf":
        raise ValueError(f"{name}: binary targets must be 0/1 numbers, got dtype {labels.dtype}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        low, high = labels.min(), labels.max()
        raise ValueError(f"{name}: a single logit per example is a binary classifier, whose "
                         f"targets are 0 or 1, got values in [{low}, {high}] (a one-output "
                         f"regression? use 'mse' or 'mae')")
    return labels.astype(np.int64, copy=False)


def _labels(logits: np.ndarray, labels: Any, name: str) -> np.ndarray:
    """Integer labels of shape ``logits.shape[:-1]`` (one-hot rows are argmax'ed)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim < 1:
        raise ValueError(f"{name}: logits need a class axis, got a scalar")
    if logits.shape[-1] < 2:
        raise ValueError(f"{name}: needs scores for at least 2 classes on the last axis, got "
                         f"shape {logits.shape} (a one-logit binary classifier takes 0/1 "
                         f"targets of shape {logits.shape} or {logits.shape[:-1]}; a one-output "
                         f"regression? use 'mse' or 'mae')")
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


def _classes_and_predictions(logits: Any, labels: Any, name: str):
    """``(classes, true labels, predicted labels)``, flat: argmax for class scores, ``logit > 0``
    for one logit per example."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if _is_binary(logits, labels):
        truth = _binary_labels(labels, name).reshape(-1)
        guess = (logits.reshape(-1) > 0).astype(np.int64)
        return 2, truth, guess
    truth = _labels(logits, labels, name)
    return logits.shape[-1], truth.reshape(-1), np.argmax(logits, axis=-1).reshape(-1)


def _accuracy_stats(logits: Any, labels: Any) -> np.ndarray:
    _, truth, guess = _classes_and_predictions(logits, labels, "accuracy")
    if truth.size == 0:
        raise ValueError("accuracy: no examples")
    return np.array([np.count_nonzero(truth == guess), truth.size], np.float64)


#: Fraction of examples whose ``argmax(logits)`` equals the label (ties: first index); for one
#: logit per example (binary), whose ``logit > 0`` equals the 0/1 target.
accuracy = Metric(_accuracy_stats, _ratio, "accuracy", True)


def binary_accuracy(threshold: float = 0.0) -> Metric:
    """Elementwise accuracy of ``pred > threshold`` against 0/1 targets of ``pred``'s shape.

    ``threshold=0`` for logits, ``0.5`` for probabilities; every element counts (multi-label
    outputs too).
    """
    threshold = float(threshold)

    def stats(pred: Any, target: Any) -> np.ndarray:
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.shape != target.shape and not (pred.ndim and pred.shape[-1] == 1
                                               and target.shape == pred.shape[:-1]):
            raise ValueError(f"binary_accuracy: prediction shape {pred.shape} and target shape "
                             f"{target.shape} differ")
        truth = _binary_labels(target, "binary_accuracy").reshape(-1)
        if truth.size == 0:
            raise ValueError("binary_accuracy: no examples")
        return np.array([np.count_nonzero((pred.reshape(-1) > threshold) == truth), truth.size],
                        np.float64)
    return Metric(stats, _ratio, "binary_accuracy", True)


def top_k_accuracy(logits: np.ndarray, labels: Any, k: int) -> float:
    """Fraction of examples whose label is among the ``k`` highest logits.

    Ties are ordered by class index, as ``argmax`` does, so ``k=1`` equals
    :func:`accuracy`: the label's rank is the number of classes with a larger
    logit plus the number of lower-indexed classes with an equal one.
    """
    return top_k(k)(logits, labels)


def top_k(k: int) -> Metric:
    """The :class:`Metric` of :func:`top_k_accuracy` for ``k``, named ``top_<k>_accuracy``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"top_k_accuracy: k must be an integer >= 1, got {k!r}")
    k = int(k)

    def stats(logits: Any, labels: Any) -> np.ndarray:
        labels = _labels(logits, labels, "top_k_accuracy")
        logits = np.asarray(logits)
        classes = logits.shape[-1]
        if k > classes:
            raise ValueError(f"top_k_accuracy: k must be in [1, {classes}], got {k}")
        if labels.size == 0:
            raise ValueError("top_k_accuracy: no examples")
        flat = logits.reshape(-1, classes)
        lab = labels.reshape(-1)
        own = flat[np.arange(flat.shape[0]), lab][:, None]
        before = np.arange(classes)[None, :] < lab[:, None]
        rank = np.count_nonzero((flat > own) | ((flat == own) & before), axis=1)
        return np.array([np.count_nonzero(rank < k), lab.size], np.float64)
    return Metric(stats, _ratio, f"top_{k}_accuracy", True)


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


def _confusion_stats(name: str) -> Callable[[Any, Any], np.ndarray]:
    def stats(logits: Any, labels: Any) -> np.ndarray:
        classes, truth, guess = _classes_and_predictions(logits, labels, name)
        if truth.size == 0:
            raise ValueError(f"{name}: no examples")
        return confusion_matrix(truth, guess, classes).reshape(-1).astype(np.float64)
    return stats


def _macro(kind: str) -> Callable[[np.ndarray], float]:
    """Macro average of per-class precision, recall or F1 from a flattened confusion matrix,
    over the classes that occur among the targets or the predictions (as scikit-learn's
    ``average="macro"``); a class whose denominator is 0 scores 0."""
    def result(stats: np.ndarray) -> float:
        classes = int(round(np.sqrt(stats.size)))
        cm = np.asarray(stats, np.float64).reshape(classes, classes)
        tp = np.diag(cm)
        actual, predicted = cm.sum(axis=1), cm.sum(axis=0)
        seen = (actual > 0) | (predicted > 0)
        if not seen.any():
            return float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(predicted > 0, tp / predicted, 0.0)
            r = np.where(actual > 0, tp / actual, 0.0)
            f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        score = {"precision": p, "recall": r, "f1": f}[kind]
        return float(score[seen].mean())
    return result


#: Macro-averaged precision: per class ``tp / (tp + fp)``, averaged over the classes present
#: in the targets or the predictions (scikit-learn's ``precision_score(average="macro")``).
precision = Metric(_confusion_stats("precision"), _macro("precision"), "precision", True)
#: Macro-averaged recall ``tp / (tp + fn)`` (scikit-learn's ``recall_score(average="macro")``).
recall = Metric(_confusion_stats("recall"), _macro("recall"), "recall", True)
#: Macro-averaged F1, the per-class harmonic mean of precision and recall, averaged
#: (scikit-learn's ``f1_score(average="macro")``).
f1 = Metric(_confusion_stats("f1"), _macro("f1"), "f1", True)


def probabilities(logits: Any) -> np.ndarray:
    """Class probabilities from logits: softmax over the last axis, or for one logit per example
    (last axis 1, a binary classifier) the sigmoid, the probability of class 1.  Keeps the dtype.
    """
    logits = np.asarray(logits)
    if logits.dtype.kind != "f":
        raise ValueError(f"probabilities: expected float logits, got dtype {logits.dtype}")
    if logits.ndim < 1:
        raise ValueError("probabilities: logits need a class axis, got a scalar")
    if logits.shape[-1] == 1:
        return kernels.sigmoid(logits)
    return kernels.softmax(logits)


# --- regression and losses ---------------------------------------------------------------------

def _pair(pred: Any, target: Any, name: str) -> tuple:
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction shape {pred.shape} and target shape "
                         f"{target.shape} differ")
    if pred.size == 0:
        raise ValueError(f"{name}: no examples")
    return pred.astype(np.float64, copy=False), target.astype(np.float64, copy=False)


def _mse_stats(pred: Any, target: Any) -> np.ndarray:
    p, t = _pair(pred, target, "mse")
    return np.array([np.sum(np.square(p - t)), p.size], np.float64)


def _mae_stats(pred: Any, target: Any) -> np.ndarray:
    p, t = _pair(pred, target, "mae")
    return np.array([np.sum(np.abs(p - t)), p.size], np.float64)


#: Mean squared error over every element (float64 accumulation).
mse = Metric(_mse_stats, _ratio, "mse", False)
#: Mean absolute error over every element (float64 accumulation).
mae = Metric(_mae_stats, _ratio, "mae", False)


def _ce_stats(logits: Any, labels: Any) -> np.ndarray:
    logits64 = np.asarray(logits, dtype=np.float64)
    lab = _labels(logits64, labels, "cross_entropy").astype(np.int64, copy=False)
    count = lab.size
    return np.array([float(softmax_cross_entropy(logits64, lab)) * count, count], np.float64)


#: Mean softmax cross-entropy of ``logits`` against labels (computed in float64).
cross_entropy = Metric(_ce_stats, _ratio, "cross_entropy", False)


def loss_metric(loss: Loss) -> Metric:
    """A :class:`Metric` from a :class:`~fundl.losses.Loss`: its whole-set value.

    Every loss is a weighted mean ``S / W`` (:attr:`Loss.total_weight`), so the
    stats are ``(S, W) = (value * W, W)`` and the result ``sum S / sum W``:
    exactly the loss of the whole set, whatever the batches.  A combination of
    losses (:func:`fundl.losses.combine`) keeps ``(S_i, W_i)`` per part.
    """
    if loss.parts is not None:
        return _combined_metric(loss, loss.parts)

    def stats(pred: Any, target: Any) -> np.ndarray:
        weight = loss.weight_of(pred, target)
        value = float(loss.value(pred, target)) if weight else 0.0
        return np.array([value * weight, weight], np.float64)

    def result(stats: np.ndarray) -> float:
        return float(stats[0] / stats[1]) if stats[1] else 0.0
    return Metric(stats, result, loss.name, False)


def _combined_metric(loss: Loss, parts: Sequence[Any]) -> Metric:
    """``sum_i w_i S_i / W_i`` over the parts ``(index, loss_i, w_i)`` of a combined loss."""
    metrics = [(index, loss_metric(part), float(weight)) for index, part, weight in parts]

    def stats(pred: Any, target: Any) -> np.ndarray:
        return np.concatenate([m.stats(pred[i], target[i]) for i, m, _ in metrics])

    def result(stats: np.ndarray) -> float:
        total = 0.0
        for j, (_, m, weight) in enumerate(metrics):
            total += weight * m.result(stats[2 * j: 2 * j + 2])
        return total
    return Metric(stats, result, loss.name, False)


def at(index: int, metric: Union[str, Loss, Metric, Callable[[Any, Any], float]],
       name: Optional[str] = None) -> Metric:
    """``metric`` on output ``index`` of a model with several outputs (a tuple) and the target
    at the same index: ``fl.metrics.at(0, "accuracy")`` for the first head.  Named
    ``<metric>_<index>`` unless ``name`` is given (a dict key in ``metrics=`` names it too)."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"metrics.at: index must be an integer >= 0, got {index!r}")
    index = int(index)
    inner = _as_metric(metric, _name_of(metric))

    def stats(pred: Any, target: Any) -> np.ndarray:
        for what, v in (("output", pred), ("target", target)):
            if not isinstance(v, (tuple, list)) or len(v) <= index:
                got = f"a tuple of {len(v)}" if isinstance(v, (tuple, list)) else \
                    type(v).__name__
                raise ValueError(f"{inner.name} at {index}: the model's {what} must be a tuple "
                                 f"with an element {index}, got {got}")
        return inner.stats(pred[index], target[index])
    return Metric(stats, inner.result, name or f"{inner.name}_{index}", inner.higher_is_better)


def from_function(fn: Callable[[Any, Any], float], name: Optional[str] = None) -> Metric:
    """A :class:`Metric` from ``fn(pred, target) -> float``, a mean over the examples of a batch:
    the stats are ``(fn * n, n)`` with ``n`` the batch's examples (axis 0 of the target), so
    the result is the mean over all examples (batch means weighted by batch size)."""
    def stats(pred: Any, target: Any) -> np.ndarray:
        first = target
        while isinstance(first, (tuple, list)) and first:
            first = first[0]
        n = np.shape(first)[0] if np.ndim(first) else 1
        return np.array([float(fn(pred, target)) * n, n], np.float64)
    label = name or str(getattr(fn, "__name__", type(fn).__name__))
    return Metric(stats, _ratio, label, _direction_of(label))


# --- running means ------------------------------------------------------------------------

class Mean(NamedTuple):
    """A running weighted mean, as an immutable value: ``Mean().add(v, n).add(w, m).value``."""

    total: float = 0.0
    count: float = 0.0  # type: ignore[assignment]  # shadows tuple.count; the public name

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


# --- names -----------------------------------------------------------------------------------

_BY_NAME: Dict[str, Metric] = {
    "accuracy": accuracy,
    "binary_accuracy": binary_accuracy(),
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "mse": mse,
    "mae": mae,
    "cross_entropy": cross_entropy,
    "softmax_cross_entropy": cross_entropy._replace(name="softmax_cross_entropy"),
}


def get(name: str) -> Metric:
    """The metric called ``name``: ``accuracy``, ``binary_accuracy``, ``top_<k>_accuracy``,
    ``precision``, ``recall``, ``f1`` (macro), ``mse``, ``mae``, ``cross_entropy`` (alias
    ``softmax_cross_entropy``)."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    parts = name.split("_")
    if len(parts) == 3 and parts[0] == "top" and parts[1].isdigit() and parts[2] == "accuracy":
        return top_k(int(parts[1]))
    raise ValueError(f"unknown metric {name!r}; known: {sorted(_BY_NAME)} and top_<k>_accuracy")


MetricSpec = Union[str, Loss, Metric, Callable[[Any, Any], float]]


def _as_metric(m: Any, name: str) -> Metric:
    if isinstance(m, Metric):
        return m if m.name == name else m._replace(name=name)
    if isinstance(m, str):
        found = get(m)
        return found if found.name == name else found._replace(name=name)
    if isinstance(m, Loss):
        found = loss_metric(m)
        return found if found.name == name else found._replace(name=name)
    if callable(m):
        return from_function(m, name)
    raise TypeError(f"metric {name!r}: expected a name, a Loss, a fl.metrics.Metric or a "
                    f"function, got {type(m).__name__}")


def resolve(metrics: Union[None, Mapping[str, MetricSpec], Sequence[MetricSpec], MetricSpec]
            ) -> Dict[str, Metric]:
    """Named :class:`Metric` records from a mapping ``{name: metric}``, a sequence, or one metric.

    Each metric is a name for :func:`get`, a :class:`~fundl.losses.Loss`
    (named by its ``name``), a :class:`Metric`, or a function
    ``fn(pred, target) -> float`` returning a batch mean (named by its
    ``__name__``; see :func:`from_function`).
    """
    if metrics is None:
        return {}
    if isinstance(metrics, (str, Loss, Metric)) or callable(metrics) and \
            not isinstance(metrics, Mapping):
        metrics = [metrics]
    items = list(metrics.items()) if isinstance(metrics, Mapping) else \
        [(_name_of(m), m) for m in metrics]
    out: Dict[str, Metric] = {}
    for name, m in items:
        if name in out:
            raise ValueError(f"two metrics are called {name!r}; pass a dict to name them")
        out[name] = _as_metric(m, name)
    return out


def _name_of(m: Any) -> str:
    if isinstance(m, str):
        return m
    if isinstance(m, (Loss, Metric)):
        return m.name
    return getattr(m, "__name__", type(m).__name__)


_HIGHER = ("accuracy", "acc", "precision", "recall", "f1", "auc", "r2", "iou", "dice")
_LOWER = ("loss", "error", "mse", "mae", "rmse", "entropy", "l1", "huber", "nll",
          "divergence", "kl", "perplexity", "bits")


def _direction_of(name: str) -> Optional[bool]:
    words = name.lower().replace("-", "_").split("_")
    if any(w in _HIGHER for w in words):
        return True
    if any(w in _LOWER for w in words):
        return False
    return None


def higher_is_better(name: str, known: Optional[Mapping[str, Optional[bool]]] = None
                     ) -> Optional[bool]:
    """Whether a larger value of the log ``name`` is better: ``known[name]`` if it says
    (fit passes its metrics' ``higher_is_better``), else by the words in the name, a ``val_``
    prefix aside: accuracy-like (``accuracy``, ``precision``, ``recall``, ``f1``, ``auc``, ...)
    -> ``True``; loss-like (``loss``, ``mse``, ``mae``, ``error``, ``cross_entropy``, ...) ->
    ``False``; ``None`` when it cannot tell."""
    if known is not None and known.get(name) is not None:
        return known[name]
    base = name[4:] if name.startswith("val_") else name
    if known is not None and known.get(base) is not None:
        return known[base]
    return _direction_of(base)
