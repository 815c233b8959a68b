""":func:`evaluate` and :func:`predict`: a model in eval mode over ``(x, y)`` arrays or a data
source, batch by batch."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..core import Layer
from ..data.batching import flatten_data, iter_batches, num_batches
from ..losses import Loss
from ..metrics import Metric, MetricSpec, loss_metric, probabilities, resolve
from .checks import check_batch_size
from .inputs import Caster, Data, float_dtype, inputs

__all__ = ["evaluate", "predict"]

Metrics = Union[None, Mapping[str, MetricSpec], Sequence[MetricSpec], MetricSpec]


def _named(loss: Optional[Loss], metrics: Metrics, who: str) -> Dict[str, Metric]:
    fns = resolve(metrics)
    if loss is None:
        return fns
    if not isinstance(loss, Loss):
        raise TypeError(f"{who}: loss must be a fundl Loss, got {type(loss).__name__}")
    if "loss" in fns:
        raise ValueError(f"{who}: a metric is called 'loss', and loss= reports the loss "
                         "under that name; rename the metric")
    return {"loss": loss_metric(loss), **fns}


def _batches(data: Data, batch_size: int, key: Any):
    """The batches of ``data`` in order, not yet cast (a rank casts only those it runs)."""
    if data.arrays:
        count = num_batches(data.n, batch_size)
        return iter_batches(data.leaves, data.rebuild, None, batch_size, count)
    return data._source_batches(key, 0)


def evaluate(model: Layer, params: Any, state: Any, data: Any, metrics: Metrics = None,
             batch_size: int = 256, comm: Any = None, *, loss: Optional[Loss] = None,
             key: Any = None) -> Dict[str, float]:
    """Metrics of ``model`` on ``data`` in eval mode (``apply(train=False)``), over the whole set.

    ``data`` is ``(x, y)``: ``x`` an array ``(n, ...)`` or, for a multi-input model
    (e.g. one built with :func:`~fundl.parallel`), a tuple of arrays sharing axis 0;
    ``y`` an array or, for a model with several outputs, a tuple of arrays (memmaps too),
    run in batches of ``batch_size`` in data order -- or a data source
    (:mod:`fundl.data.sources`) of ``(x, y)`` batches, run as it yields them (a callable
    source gets ``key``).  Float inputs of another dtype than the params are cast to it,
    with a warning (see :func:`fit`).

    ``loss``: a :class:`~fundl.losses.Loss`, reported first as ``"loss"``.  ``metrics``: a
    mapping ``{name: metric}``, a sequence of metrics or one; a metric is a name
    (``"accuracy"``, ``"top_5_accuracy"``, ``"f1"``, ``"mse"``, ...), a Loss, a
    :class:`fundl.metrics.Metric` or a function ``fn(pred, y) -> float`` returning a batch mean
    (:func:`fundl.metrics.at` picks one output of several).  At least one of the two.

    Returns ``{name: float}``, each exact over the whole set, whatever ``batch_size``: the
    metrics' stats (for a loss its numerator ``S`` and divisor ``W``, see
    :class:`fundl.metrics.Metric`) are summed over the batches in order and the value is
    made from the sums.  So a loss with ``ignore_index`` or class ``weights``, or an F1
    score, is the whole-set value, not a mean of batch values.

    ``comm`` (a :class:`fundl.distributed.Comm`; every rank passes the same ``data``): the
    ranks share the batches (rank ``r`` runs batches ``r, r + size, ...``) and every rank
    returns exactly the single-process result: each batch's stats are gathered and added in
    batch order.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"evaluate: model must be a fundl Layer, got {type(model).__name__}")
    fns = _named(loss, metrics, "evaluate")
    if not fns:
        raise ValueError("evaluate needs a loss or metrics, e.g. loss=fl.losses.mse or "
                         "metrics=['accuracy']")
    batch_size = check_batch_size(batch_size, "evaluate")
    d = Data(data, "evaluate: data")
    d.set_dtype(float_dtype(params), "evaluate", [False])
    return run_evaluate(model, params, state, d, fns, batch_size, comm, key)


def run_evaluate(model: Layer, params: Any, state: Any, d: Data, fns: Dict[str, Metric],
                 batch_size: int, comm: Any, key: Any) -> Dict[str, float]:
    """:func:`evaluate` on checked data and metrics (what fit runs on ``val_data``)."""
    rank, size = (0, 1) if comm is None else _rank_size(comm)
    rows: Dict[int, np.ndarray] = {}      # with comm: this rank's batches' stats
    total: Optional[np.ndarray] = None    # one process: the stats added up in batch order
    count, lengths = 0, None
    for b, (xb, yb) in enumerate(_batches(d, batch_size, key)):
        count = b + 1
        if b % size != rank:
            continue
        out = model.apply(params, state, d.cast(xb), key=None, train=False)
        parts = [np.asarray(m.stats(out, yb), np.float64).reshape(-1) for m in fns.values()]
        lengths = [p.size for p in parts] if lengths is None else lengths
        row = np.concatenate(parts)
        if comm is not None:
            rows[b] = row
        else:   # from zeros, in batch order: as _shared adds the ranks' rows
            total = np.zeros_like(row) if total is None else total
            total += row
    if comm is not None:
        return _shared(comm, fns, rows, count, lengths)
    if total is None or lengths is None:
        raise ValueError("evaluate: the data source yielded no batch")
    return _results(fns, total, lengths)


def _rank_size(comm: Any):
    from ..distributed.comm import as_comm
    c = as_comm(comm)
    return c.rank, c.size


def _results(fns: Dict[str, Metric], total: np.ndarray, lengths: List[int]) -> Dict[str, float]:
    out, at = {}, 0
    for (name, m), k in zip(fns.items(), lengths):
        out[name] = float(m.result(total[at:at + k]))
        at += k
    return out


def _shared(comm: Any, fns: Dict[str, Metric], rows: Dict[int, np.ndarray], count: int,
            lengths: Optional[List[int]]) -> Dict[str, float]:
    """:func:`evaluate`'s sums with the batches shared by the ranks of ``comm``.

    Each rank fills its batches' rows of a ``(batches, stats)`` table (zeros elsewhere); one
    sum over ranks (adding zeros is exact) gives every rank the whole table, which is then
    added up in batch order exactly as the single-process loop does.
    """
    from ..distributed.comm import as_comm
    comm = as_comm(comm)
    plans = comm.gather_all((count, lengths), "evaluate's batch count")
    counts = {p[0] for p in plans}
    if len(counts) != 1:
        raise ValueError(f"evaluate: every rank must pass the same data and batch_size; "
                         f"batches per rank: {[p[0] for p in plans]}")
    known = [p[1] for p in plans if p[1] is not None]
    if not known:
        raise ValueError("evaluate: the data yielded no batch")
    lengths = known[0]
    table = np.zeros((count, sum(lengths)), np.float64)
    for b, row in rows.items():
        table[b] = row
    table = comm.sum(table, "evaluate's sums")
    total = np.zeros(sum(lengths), np.float64)
    for b in range(count):
        total += table[b]
    return _results(fns, total, lengths)


def predict(model: Layer, params: Any, state: Any, x: Any, batch_size: int = 256, *,
            proba: bool = False, key: Any = None) -> Any:
    """The outputs of ``model`` on ``x`` in eval mode (``apply(train=False)``), batch by batch.

    ``x`` is an array ``(n, ...)`` or a tuple of arrays sharing axis 0 (a multi-input
    model; memmaps too), run in batches of ``batch_size`` in data order; or a data source
    of ``(x, y)`` batches (the ``y`` are not used; a callable source gets ``key``).  Float
    inputs of another dtype than the params are cast to it, with a warning.  The outputs
    are concatenated on axis 0: an array ``(n, ...)``, or for a model with several outputs
    (a tuple, or nested tuples and dicts) the same structure with each output concatenated.
    Like ``model.apply(params, state, x)`` on the whole of ``x``, with at most
    ``batch_size`` examples in memory at once.

    ``proba=True``: class probabilities instead of logits (:func:`fundl.metrics.probabilities`:
    a softmax over the last axis, or the sigmoid of a single logit); for a model with
    several outputs, apply ``fl.metrics.probabilities`` to the output that holds logits.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"predict: model must be a fundl Layer, got {type(model).__name__}")
    batch_size = check_batch_size(batch_size, "predict")
    if not isinstance(proba, (bool, np.bool_)):
        raise TypeError(f"predict: proba must be True or False, got {proba!r}")
    cast = Caster(float_dtype(params), "predict")
    from ..data.sources import check_source, epoch_batches, is_source
    listed = isinstance(x, list) and all(isinstance(b, (tuple, list)) for b in x)
    if listed or (is_source(x) and not isinstance(x, list)):
        check_source(x, "predict: x")
        parts = (cast(inputs(batch[0], "predict: x")) for batch in epoch_batches(x, key))
    else:
        x = inputs(x, "predict")
        leaves, rebuild = flatten_data(x, "predict: x")
        count = num_batches(leaves[0].shape[0], batch_size)
        parts = (cast(xb) for xb in iter_batches(leaves, rebuild, None, batch_size, count))
    outs = []
    for xb in parts:
        out = model.apply(params, state, xb, key=None, train=False)
        if proba:
            if not isinstance(out, np.ndarray):
                raise ValueError("predict: proba=True needs a model with one output (logits); "
                                 "for several outputs apply fl.metrics.probabilities to the "
                                 "one that holds logits")
            out = probabilities(out)
        outs.append(out)
    if not outs:
        raise ValueError("predict: the data source yielded no batch")
    flat = [flatten_data(out, "predict: the model's output") for out in outs]
    columns = zip(*(p[0] for p in flat))
    return flat[0][1]([np.concatenate(col, axis=0) for col in columns])
