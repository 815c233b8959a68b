"""The training loop: :func:`fit` over :func:`~fundl.make_step`, :func:`evaluate`,
:func:`predict` and the :class:`EarlyStopping` callback.

Re-exported by :mod:`fundl`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import io, perf, random, tree
from .core import Layer
from .data.batching import flatten_data, iter_batches, num_batches
from .losses import Loss
from .metrics import MetricSpec, loss_metric, resolve
from .optim.base import Optimizer, as_lr
from .step import Schedule, TrainState, check_parts, make_step
from .validate import SpecError, TreeSpec, data_shapes

__all__ = ["fit", "evaluate", "predict", "EarlyStopping", "NonFiniteLossError"]

Callback = Callable[[TrainState, Dict[str, Any]], Optional[str]]
Metrics = Union[None, Mapping[str, MetricSpec], Sequence[MetricSpec]]


class NonFiniteLossError(FloatingPointError):
    """Training produced a ``nan`` or ``inf``: in the loss, or in the train state a step made.

    ``step`` is the step counter of the train state the failing step started
    from, ``loss`` that step's loss, ``where`` what was non-finite (``"loss"``,
    or the first non-finite leaf of the state it made, e.g.
    ``"params/dense_0/w"``: a step can report a finite loss and still make
    non-finite params; that shows as a non-finite loss one step later),
    ``train_state`` the last train state known to be finite everywhere (the one
    the failing step started from; when a state is only found non-finite later,
    the one last checked: at the start, at the end of an epoch or before a
    checkpoint) -- it is also what the checkpoint holds -- and ``history`` the
    history so far.
    """

    def __init__(self, step: int, loss: float, train_state: TrainState,
                 history: Dict[str, List[Any]], where: str = "loss"):
        self.step = step
        self.loss = loss
        self.train_state = train_state
        self.history = history
        self.where = where
        what = (f"non-finite training loss {loss} at step {step}" if where == "loss" else
                f"non-finite values in {where} after the step from step {step} (its loss "
                f"{loss} was finite)")
        super().__init__(f"{what}; err.train_state holds the last finite train state (step "
                         f"{train_state.step}). Try a smaller learning rate or gradient clipping.")

    def __reduce__(self):  # picklable (e.g. to send to another process) despite the custom __init__
        return (NonFiniteLossError, (self.step, self.loss, self.train_state, self.history,
                                     self.where))


# --- data ---------------------------------------------------------------------------------

def _inputs(x: Any, what: str) -> Any:
    """``x`` as an array, or a tuple of inputs (nested tuples allowed) for a multi-input model."""
    if isinstance(x, dict):
        raise TypeError(f"{what}: x is a dict, but fundl models take one array or a tuple of "
                        "arrays (fl.parallel); pass x as a tuple in the order of the model's "
                        "inputs")
    if isinstance(x, tuple):
        if not x:
            raise ValueError(f"{what}: x is an empty tuple; a multi-input x is a tuple of arrays")
        return tuple(_inputs(a, what) for a in x)
    return np.asarray(x)


def _pair(data: Any, what: str) -> Tuple[Any, Any, int]:
    """``(x, y, n)`` from ``data = (x, y)``: arrays sharing axis 0 (``x`` may be a tuple)."""
    if isinstance(data, np.ndarray) or not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{what} must be a pair (x, y) of arrays sharing axis 0 (x may be a "
                         "tuple of arrays for a multi-input model)")
    x = _inputs(data[0], what)
    leaves, rebuild = flatten_data((x, data[1]), what)
    x, y = rebuild(leaves)
    return x, y, leaves[0].shape[0]


def _take(x: Any, index: Any) -> Any:
    """``x[index]`` for an array or a (nested) tuple of arrays."""
    if isinstance(x, tuple):
        return tuple(_take(a, index) for a in x)
    return x[index]


def _describe(x: Any) -> str:
    if isinstance(x, tuple):
        return "(" + ", ".join(_describe(a) for a in x) + ")"
    return f"{x.dtype} of shape {tuple(x.shape)}"


def _float_dtype(params: Any) -> Optional[np.dtype]:
    """The float dtype of the params (``None`` for a model without float params)."""
    for leaf in tree.leaves(params):
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f":
            return leaf.dtype
    return None


def _cast_inputs(x: Any, dtype: Optional[np.dtype], what: str, warned: List[bool]) -> Any:
    """``x`` with its float arrays cast to ``dtype`` (the params'), warning once (``warned``)."""
    if isinstance(x, tuple):
        return tuple(_cast_inputs(a, dtype, what, warned) for a in x)
    if dtype is None or x.dtype.kind != "f" or x.dtype == dtype:
        return x
    if not warned[0]:
        warned[0] = True
        warnings.warn(
            f"{what}: x is {x.dtype} but the params are {dtype}: casting x to {dtype} (a copy "
            f"of the data). Pass {dtype} data (x.astype(np.{dtype})) to avoid the copy and this "
            f"warning, or train in {x.dtype} with params cast to it (fundl.tree.cast(params, "
            f"np.{x.dtype}), see fit's docstring)", UserWarning, stacklevel=3)
    return x.astype(dtype)


def _probe_rows(y: Any, n: int) -> np.ndarray:
    """A few example indices to try the model, loss and metrics on before training: the
    first example and, for integer labels, those holding the smallest and the largest label
    (so that a label out of range is found)."""
    rows = {0}
    for leaf in flatten_data(y)[0]:
        if leaf.dtype.kind in "iu" and leaf.size:
            for flat in (int(np.argmin(leaf)), int(np.argmax(leaf))):
                rows.add(int(np.unravel_index(flat, leaf.shape)[0]))
    return np.array(sorted(r for r in rows if r < n))


def _rethrow(err: Exception, context: str) -> Exception:
    """``err`` with ``context`` in front of its message, as a ValueError or TypeError."""
    kind = TypeError if isinstance(err, TypeError) else ValueError
    return kind(f"{context}: {err}")


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"fit: {name} must be a positive integer, got {value!r}")
    return int(value)


def _check_batch_size(value: Any, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: batch_size must be an integer >= 1, got {value!r}")
    return int(value)


# --- evaluate and predict ------------------------------------------------------------------

def evaluate(model: Layer, params: Any, state: Any, data: Tuple[Any, Any],
             metrics: Metrics = None, batch_size: int = 256, comm: Any = None
             ) -> Dict[str, float]:
    """Metrics of ``model`` on ``data = (x, y)`` in eval mode (``apply(train=False)``).

    ``x`` is an array ``(n, ...)`` or, for a multi-input model (e.g. one
    built with :func:`~fundl.parallel`), a tuple of arrays sharing axis 0;
    ``y`` an array ``(n, ...)``.  Float inputs of another dtype than the
    params are cast to it, with a warning (see :func:`fit`).

    ``metrics``: a mapping ``{name: metric}`` or a sequence of metrics; a metric
    is a name (``"accuracy"``, ``"top_5_accuracy"``, ``"mse"``, ``"mae"``,
    ``"cross_entropy"``), a :class:`~fundl.losses.Loss` or a function
    ``fn(pred, y) -> float`` returning a batch mean.  Runs batches of
    ``batch_size`` in data order and returns ``{name: float}``, each the mean
    over all examples (batch means weighted by batch size).

    ``comm`` (a :class:`fundl.distributed.Comm`; every rank passes the whole
    ``data``): the ranks share the batches (rank ``r`` runs batches
    ``r, r + size, ...``) and every rank returns exactly the single-process
    result: the per-batch sums are gathered and added in batch order.
    """
    fns = resolve(metrics)
    if not fns:
        raise ValueError("evaluate needs metrics, e.g. metrics=['accuracy'] or "
                         "{'loss': fundl.losses.mse}")
    batch_size = _check_batch_size(batch_size, "evaluate")
    x, y, n = _pair(data, "evaluate: data")
    x = _cast_inputs(x, _float_dtype(params), "evaluate", [False])
    if comm is not None:
        return _evaluate_shared(model, params, state, x, y, n, fns, batch_size, comm)
    totals = dict.fromkeys(fns, 0.0)
    for lo in range(0, n, batch_size):
        part = slice(lo, lo + batch_size)
        xb, yb = _take(x, part), y[part]
        out = model.apply(params, state, xb, key=None, train=False)
        for name, fn in fns.items():
            totals[name] += float(fn(out, yb)) * yb.shape[0]
    return {name: total / n for name, total in totals.items()}


def _evaluate_shared(model: Layer, params: Any, state: Any, x: Any, y: np.ndarray, n: int,
                     fns: Dict[str, Any], batch_size: int, comm: Any) -> Dict[str, float]:
    """:func:`evaluate` with the batches shared round-robin by the ranks of ``comm``.

    Each rank fills its batches' rows of a ``(batches, metrics)`` table of
    ``metric * batch size`` (zeros elsewhere); one sum over ranks (adding
    zeros is exact) gives every rank the whole table, which is then added up
    in batch order exactly as the single-process loop does.
    """
    from .distributed.comm import as_comm
    comm = as_comm(comm)
    names = list(fns)
    count = num_batches(n, batch_size)
    plans = comm.gather_all((n, count))
    if plans != [(n, count)] * comm.size:
        raise ValueError(f"evaluate: every rank must pass the same data and batch_size; "
                         f"(examples, batches) per rank: {plans}")
    table = np.zeros((count, len(names)), np.float64)
    for b in range(comm.rank, count, comm.size):
        part = slice(b * batch_size, (b + 1) * batch_size)
        xb, yb = _take(x, part), y[part]
        out = model.apply(params, state, xb, key=None, train=False)
        for j, name in enumerate(names):
            table[b, j] = float(fns[name](out, yb)) * yb.shape[0]
    table = comm.sum(table)
    totals = dict.fromkeys(names, 0.0)
    for b in range(count):
        for j, name in enumerate(names):
            totals[name] += float(table[b, j])
    return {name: total / n for name, total in totals.items()}


def predict(model: Layer, params: Any, state: Any, x: Any, batch_size: int = 256) -> Any:
    """The outputs of ``model`` on ``x`` in eval mode (``apply(train=False)``), batch by batch.

    ``x`` is an array ``(n, ...)`` or a tuple of arrays sharing axis 0 (a
    multi-input model); float inputs of another dtype than the params are cast
    to it, with a warning.  The model runs on batches of ``batch_size``
    examples in data order and the outputs are concatenated on axis 0: an
    array ``(n, ...)``, or for a model with several outputs (a tuple, or
    nested tuples and dicts) the same structure with each output concatenated.
    Like ``model.apply(params, state, x)`` on the whole of ``x``, with at most
    ``batch_size`` examples in memory at once.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"predict: model must be a fundl Layer, got {type(model).__name__}")
    batch_size = _check_batch_size(batch_size, "predict")
    x = _inputs(x, "predict")
    leaves, rebuild = flatten_data(x, "predict: x")
    n = leaves[0].shape[0]
    x = _cast_inputs(rebuild(leaves), _float_dtype(params), "predict", [False])
    outs = [model.apply(params, state, _take(x, slice(lo, lo + batch_size)), key=None, train=False)
            for lo in range(0, n, batch_size)]
    parts = [flatten_data(out, "predict: the model's output") for out in outs]
    columns = zip(*(p[0] for p in parts))
    return parts[0][1]([np.concatenate(col, axis=0) for col in columns])


# --- early stopping --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop training when ``monitor`` stops improving; with ``restore_best``, fit returns the
    best epoch's train state.

    A callback for :func:`fit` (``callbacks=[fl.EarlyStopping("val_loss", patience=3)]``).
    ``monitor`` names a key of fit's per-epoch logs (``"loss"``, ``"val_loss"``,
    ``"val_accuracy"``, ...); ``mode`` is ``"min"`` (lower is better) or
    ``"max"``.  An epoch improves when its value beats the best so far by more
    than ``min_delta`` (the first finite value always does; ``nan`` never
    does); training stops after ``patience`` epochs in a row without an
    improvement (``patience=0``: at the first one).

    ``restore_best=True``: :func:`fit` returns the train state of the end of
    the best epoch (whether training stopped early or ran out of epochs);
    bit-identical to a run with ``epochs=`` that epoch.  The history covers
    every epoch that ran, and the checkpoint, if any, still holds the last
    state reached, so that training can resume from it.

    The object is an immutable configuration, reusable across fit calls:
    fit calls :meth:`begin` once per run, which returns a fresh tracker
    ``run(train_state, logs) -> "stop" | None`` with ``run.end(train_state)``
    giving the state fit returns (``run.best``, ``run.best_epoch`` and
    ``run.best_state`` hold what it saw).  In a hand-written loop::

        run = es.begin()
        for ...:                     # each epoch
            if run(ts, logs) == "stop":
                break
        ts = run.end(ts)

    Note: a resumed run starts a new tracker, which does not know the best
    value of the run before it.
    """

    monitor: str = "val_loss"
    patience: int = 3
    mode: str = "min"
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.monitor, str) or not self.monitor:
            raise TypeError(f"EarlyStopping: monitor must be the name of a log, e.g. 'val_loss', "
                            f"got {self.monitor!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, (int, np.integer)) \
                or self.patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0, got "
                             f"{self.patience!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {self.mode!r}")
        if not (isinstance(self.min_delta, (int, float, np.integer, np.floating))
                and not isinstance(self.min_delta, bool) and self.min_delta >= 0):
            raise ValueError(f"EarlyStopping: min_delta must be a number >= 0, got "
                             f"{self.min_delta!r}")
        if not isinstance(self.restore_best, (bool, np.bool_)):
            raise TypeError(f"EarlyStopping: restore_best must be True or False, got "
                            f"{self.restore_best!r}")

    def begin(self, names: Optional[Sequence[str]] = None) -> "EarlyStoppingRun":
        """A fresh tracker for one run; ``names`` (the log keys fit will pass) is checked to hold
        ``monitor``, so that a typo fails before training, not after an epoch."""
        if names is not None and self.monitor not in names:
            hint = " (validation logs need val_data=)" if self.monitor.startswith("val_") else ""
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not among the logs "
                             f"{list(names)}{hint}")
        return EarlyStoppingRun(self)

    def __call__(self, train_state: TrainState, logs: Dict[str, Any]) -> Optional[str]:
        raise TypeError("EarlyStopping keeps the best value across epochs in a tracker: pass it "
                        "to fit(callbacks=[...]), which makes one per run, or use "
                        "run = early_stopping.begin() and call run(train_state, logs)")


class EarlyStoppingRun:
    """The tracker of one run of :class:`EarlyStopping` (made by :meth:`EarlyStopping.begin`)."""

    def __init__(self, config: EarlyStopping) -> None:
        self.config = config
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.best_state: Optional[TrainState] = None
        self.wait = 0

    def __call__(self, train_state: TrainState, logs: Dict[str, Any]) -> Optional[str]:
        c = self.config
        if c.monitor not in logs:
            raise ValueError(f"EarlyStopping: monitor {c.monitor!r} is not among the logs "
                             f"{list(logs)}")
        value = float(logs[c.monitor])
        if math.isfinite(value) and (
                self.best is None
                or (c.mode == "min" and value < self.best - c.min_delta)
                or (c.mode == "max" and value > self.best + c.min_delta)):
            self.best, self.best_epoch, self.wait = value, logs.get("epoch"), 0
            if c.restore_best:
                self.best_state = train_state  # train states are immutable: no copy needed
            return None
        self.wait += 1
        return "stop" if self.wait >= c.patience else None

    def end(self, train_state: TrainState) -> TrainState:
        """The state fit returns: the best epoch's with ``restore_best`` (if any epoch had a
        finite value), else ``train_state``."""
        if self.config.restore_best and self.best_state is not None:
            return self.best_state
        return train_state


def _load_tqdm() -> Any:
    """``tqdm.tqdm`` if installed, else ``None`` (a function so tests can replace it)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class _Progress:
    """A progress display of steps and loss on stderr: tqdm if installed, else a ``\\r`` line."""

    def __init__(self, mode: Union[bool, str], total: int, initial: int):
        if mode not in (True, False, "auto"):
            raise ValueError(f"progress must be True, False or 'auto', got {mode!r}")
        self.stream = sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.on = mode is True or (mode == "auto" and bool(isatty()))
        self.total, self.bar, self.last = total, None, 0.0
        if self.on:
            tqdm = _load_tqdm()
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, file=self.stream, unit="step",
                                dynamic_ncols=True)

    def update(self, step: int, epoch: int, loss: float) -> None:
        if not self.on:
            return
        now = time.monotonic()
        due = now - self.last >= 0.1 or step == self.total
        if self.bar is not None:
            self.bar.update(1)
            if due:
                self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4g}", refresh=False)
        elif due:
            self.stream.write(f"\rstep {step}/{self.total}  epoch {epoch}  loss {loss:.4g}   ")
            self.stream.flush()
        if due:
            self.last = now

    def close(self) -> None:
        if not self.on:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self.stream.write("\n")
            self.stream.flush()


# --- fit: checks before the first step -------------------------------------------------------

def _non_finite_path(ts: TrainState) -> Optional[str]:
    """The path of the first float leaf of the train state holding a nan or inf, or ``None``.

    One sum per leaf (a finite sum means finite elements); only a leaf whose sum is not
    finite is looked at elementwise (its elements may be finite and their sum overflow).
    """
    for root, part in (("params", ts.params), ("state", ts.state), ("opt_state", ts.opt_state)):
        for leaf in tree.leaves(part):
            if not (isinstance(leaf, np.ndarray) and leaf.dtype.kind in "fc" and leaf.size):
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                total = np.add.reduce(leaf, axis=None)
            if not np.isfinite(total) and not np.isfinite(leaf).all():
                for path, same in tree.flatten_with_paths(part):
                    if same is leaf:
                        return f"{root}/{path}"
    return None


def _check_train_state(ts: Any, model: Layer, optimizer: Optimizer, in_shape: Any) -> None:
    """A resumed train state must match the model (as init makes it for the data's shapes)
    and the optimizer, and be finite."""
    if not isinstance(ts, TrainState):
        raise TypeError(f"fit: train_state must be a TrainState (from TrainState.create or "
                        f"fundl.io.load of a checkpoint), got {type(ts).__name__}")
    if isinstance(ts.step, bool) or not isinstance(ts.step, (int, np.integer)) or ts.step < 0:
        raise ValueError(f"fit: train_state.step must be an integer >= 0, got {ts.step!r}")
    try:
        params, state, _ = model.init(random.key(0), in_shape)
    except (ValueError, TypeError) as err:
        raise _rethrow(err, f"fit: train_data x (per-example shape {in_shape}) does not fit "
                            "the model") from err
    try:
        TreeSpec(params).check(ts.params, "train_state.params")
        TreeSpec(state).check(ts.state, "train_state.state")
    except SpecError as err:
        raise SpecError(f"fit: train_state does not match the model (for inputs of per-example "
                        f"shape {in_shape}): {err}") from None
    try:
        TreeSpec(optimizer.init(ts.params)).check(ts.opt_state, "train_state.opt_state")
    except SpecError as err:
        raise SpecError(f"fit: train_state.opt_state does not match the optimizer "
                        f"{optimizer.name!r} (optimizer.init(params) makes another structure): "
                        f"{err}. Resume with the optimizer the state was trained with, or start "
                        f"its state afresh: train_state._replace(opt_state=optimizer.init("
                        f"train_state.params))") from None
    bad = _non_finite_path(ts)
    if bad is not None:
        raise ValueError(f"fit: train_state holds non-finite values ({bad}); resume from an "
                         "earlier checkpoint")


def _preflight(model: Layer, loss: Loss, fns: Dict[str, Any], ts: TrainState,
               train: Tuple[Any, Any, int], val: Optional[Tuple[Any, Any, int]]) -> None:
    """Run the model, the loss and the metrics on a few examples of the training and the
    validation data, so that what does not fit fails now, naming the argument, and not after
    an epoch of training."""
    sets = [("train_data", train)] + ([("val_data", val)] if val is not None else [])
    for what, (x, y, n) in sets:
        rows = _probe_rows(y, n)
        xb, yb = _take(x, rows), _take(y, rows)
        try:
            out = model.apply(ts.params, ts.state, xb, key=None, train=False)
        except (ValueError, TypeError) as err:
            raise _rethrow(err, f"fit: {what} x ({_describe(x)}) does not fit the model") from err
        got = _describe(out) if isinstance(out, (np.ndarray, tuple)) else type(out).__name__
        try:
            loss.value(out, yb)
        except (ValueError, TypeError) as err:
            raise _rethrow(err, f"fit: the loss {loss.name} does not fit the model's output "
                                f"({got} for {len(rows)} examples) and {what} y "
                                f"({_describe(y)})") from err
        if what != "val_data":
            continue
        for name, fn in fns.items():
            try:
                float(fn(out, yb))
            except (ValueError, TypeError) as err:
                raise _rethrow(err, f"fit: metrics: {name!r} does not fit the model's output "
                                    f"({got} for {len(rows)} examples) and val_data y "
                                    f"({_describe(y)})") from err


def _begin(callbacks: Iterable[Any], names: List[str]) -> List[Any]:
    """The per-run callbacks: ``cb.begin(names)`` for an object that has ``begin``, else ``cb``."""
    runs = []
    for i, cb in enumerate(callbacks):
        begin = getattr(cb, "begin", None)
        run = begin(names) if callable(begin) else cb
        if not callable(run):
            raise TypeError(f"fit: callbacks[{i}] must be a function cb(train_state, logs) or "
                            f"an object with begin(), got {type(cb).__name__}")
        runs.append(run)
    return runs


# --- fit ----------------------------------------------------------------------------------------

def fit(model: Layer, loss: Loss, optimizer: Optimizer, train_data: Tuple[Any, Any], *,
        key: Any, epochs: Optional[int] = None, steps: Optional[int] = None,
        batch_size: int = 128, lr: Union[float, Schedule] = 1e-3,
        val_data: Optional[Tuple[Any, Any]] = None, metrics: Metrics = (),
        train_state: Optional[TrainState] = None, checkpoint_path: Any = None,
        checkpoint_every: Optional[int] = None, callbacks: Iterable[Any] = (),
        progress: Union[bool, str] = "auto", shuffle: bool = True, drop_last: bool = False,
        comm: Any = None, keep_freed_memory: bool = True
        ) -> Tuple[TrainState, Dict[str, List[Any]]]:
    """Train ``model`` on ``train_data = (x, y)``; returns ``(train_state, history)``.

    - ``x`` is an array ``(n, ...)`` or, for a multi-input model (e.g. one
      built with :func:`~fundl.parallel`), a tuple of arrays sharing axis 0
      (the model is initialised with the tuple of their per-example shapes;
      dicts are refused, as no fundl model takes one); ``y`` an array ``(n, ...)``.
    - dtypes: float inputs of another dtype than the params (float64 data for
      the default float32 params) are cast to the params' dtype, once per
      call, with a warning: a copy of the data.  Pass data of the params'
      dtype to avoid it, or train in float64 by giving float64 params::

          ts = fl.TrainState.create(key, model, opt, in_shape)
          p64 = fl.tree.cast(ts.params, np.float64)
          ts = ts._replace(params=p64, state=fl.tree.cast(ts.state, np.float64),
                           opt_state=opt.init(p64))
          fl.fit(model, loss, opt, (x64, y), key=key, epochs=5, train_state=ts)
    - Before the first step fit checks its arguments and fails with an error
      naming the argument: ``model``/``loss``/``optimizer`` of the right
      types, ``epochs``/``steps``/``batch_size``/``checkpoint_every``
      positive integers, ``lr``, a given ``train_state`` against the model
      (init's params and state for the data's shapes) and the optimizer
      (``optimizer.init(params)``'s structure), and the model, loss and
      metrics on a few examples of ``train_data`` and ``val_data``.
    - ``key`` initialises the model (``TrainState.create`` with in_shape
      ``x.shape[1:]``, unless ``train_state`` is given to resume) and orders
      the data: epoch ``e`` visits ``random.permutation(fold_in(k_data, e), n)``
      in batches of ``batch_size``, and the batch of step ``s`` is batch
      ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``.  So resuming
      from a checkpoint (``train_state=fundl.io.load(path)`` and the same
      ``key``, data and ``batch_size``), even mid-epoch, gives bit-identical
      results to an uninterrupted run.
    - ``epochs`` / ``steps`` (exactly one) are targets for the train state's
      step counter: training stops when ``train_state.step`` reaches
      ``epochs * steps_per_epoch`` (or ``steps``).  Re-running an interrupted
      call with ``train_state=`` its checkpoint finishes the same run; to train
      ``k`` more epochs, raise ``epochs`` by ``k``.
    - ``lr``: a number or a schedule ``lr(step) -> float``.
    - ``val_data = (x, y)``: after each epoch, :func:`evaluate` on it (eval
      mode) with the training loss and ``metrics`` (see :func:`evaluate`);
      ``metrics`` are computed on ``val_data`` only.
    - ``history``: lists, one entry per epoch (a run that ends mid-epoch adds
      one for the partial epoch): ``"epoch"`` (1-based), ``"step"``,
      ``"loss"`` (mean training loss over the epoch's batches run by this
      call, weighted by batch size) and ``"val_<name>"`` per validation metric.
    - ``callbacks``: functions ``cb(train_state, logs)`` called after each
      epoch with that epoch's history entry; returning ``"stop"`` ends
      training.  An object with a ``begin(names)`` method (such as
      :class:`EarlyStopping`) is a callback factory: fit calls it once per run
      with the names of the logs and uses the callback it returns; if that has
      ``end(train_state) -> train_state``, fit returns what ``end`` gives
      (``EarlyStopping(restore_best=True)``: the best epoch's state).
    - ``checkpoint_path``: the train state is saved (atomically, with
      :func:`fundl.io.save`) every ``checkpoint_every`` steps if given, after
      every epoch, and at the end; a checkpoint only ever holds a state
      training reached that is finite everywhere.
    - ``progress``: ``"auto"`` shows a progress bar with the loss on stderr
      when it is a terminal, ``True`` always, ``False`` never (tqdm if
      installed, else a one-line ``\\r`` display).
    - A non-finite loss, or a step that makes non-finite params, state or
      optimizer state (e.g. an overflow), raises :class:`NonFiniteLossError`
      with the last finite train state (saved to ``checkpoint_path`` when
      checkpointing is on).
    - ``comm`` (a :class:`fundl.distributed.Comm`, e.g. ``dist.world()``):
      data-parallel training; every rank calls ``fit`` with the same
      arguments and the whole ``train_data`` (one array ``x``).  ``batch_size``
      is the global batch; each rank trains on its shard of it
      (``batches(..., shard=(rank, size))``) with
      :func:`fundl.distributed.make_step` (``optimizer`` must contain
      :func:`~fundl.distributed.mean_gradients`); the initial (or given)
      train state is rank 0's, broadcast.  The losses in ``history``, the
      validation scores (:func:`evaluate` with ``comm``) and so the callbacks'
      logs are global and identical on every rank; a callback's ``"stop"`` on
      any rank stops every rank.  Only rank 0 shows progress and writes
      checkpoints; every rank returns after the last one is written, so each
      can resume from the same file (``train_state=fundl.io.load(path)``).
      A non-finite loss is global too: every rank raises
      :class:`NonFiniteLossError` at the same step.
    - ``keep_freed_memory`` (default True): before the first step, fit calls
      :func:`fundl.perf.keep_freed_memory`, so that the arrays a step frees are
      reused by the next instead of being returned to the OS and page-faulted
      back in (process-wide, glibc only, never undone; the resident size stays
      near a step's peak).  Measured in fresh processes (``python3 -m
      benchmarks.alloc``, 2026-12-03, SGD): 2,500-4,400 page faults per step
      gone, CNN 25.1 -> 19.3 ms per step, CNN with batch norm 53.8 -> 47.4, LSTM
      21.0 -> 16.8, transformer 68.4 -> 62.9, MLP Adam 4.80 -> 3.55; the MLP with
      SGD (no faults) unchanged.  ``keep_freed_memory=False`` leaves the
      process's allocator as it is.
    """
    check_parts("fit", model, loss, optimizer)
    x, y, n = _pair(train_data, "fit: train_data")
    if (epochs is None) == (steps is None):
        raise ValueError("fit needs exactly one of epochs= or steps=")
    batch_size = _check_batch_size(batch_size, "fit")
    per_epoch = num_batches(n, batch_size, drop_last)
    if per_epoch == 0:
        raise ValueError(f"fit: drop_last with batch_size {batch_size} > {n} examples leaves no batch")
    target = (_check_count(epochs, "epochs") * per_epoch if epochs is not None
              else _check_count(steps, "steps"))
    every = _check_count(checkpoint_every, "checkpoint_every") if checkpoint_every is not None \
        else None
    if not callable(lr):
        try:
            as_lr(lr)
        except (ValueError, TypeError) as err:
            raise _rethrow(err, "fit: lr") from None
    val = _pair(val_data, "fit: val_data") if val_data is not None else None
    try:
        fns = resolve(metrics)
    except (ValueError, TypeError) as err:
        raise _rethrow(err, "fit: metrics") from None
    if fns and val is None:
        warnings.warn(f"fit: metrics {list(fns)} are computed on val_data only, and no "
                      "val_data was given", UserWarning, stacklevel=2)
    val_metrics = {"loss": loss_metric(loss), **fns}
    if comm is not None and isinstance(x, tuple):
        raise ValueError("fit: with comm=, x must be one array (fundl.distributed.make_step "
                         "does not take a tuple of inputs)")

    k_init, k_data = random.split(key)
    in_shape = data_shapes(x)
    if train_state is None:
        try:
            ts = TrainState.create(k_init, model, optimizer, in_shape)
        except (ValueError, TypeError) as err:
            raise _rethrow(err, f"fit: train_data x ({_describe(x)}) does not fit the "
                                "model") from err
    else:
        _check_train_state(train_state, model, optimizer, in_shape)
        ts = train_state
    if callable(lr):
        try:
            as_lr(lr(ts.step))
        except (ValueError, TypeError) as err:
            raise _rethrow(err, f"fit: lr (the schedule at step {ts.step})") from None
    dtype, warned = _float_dtype(ts.params), [False]
    x = _cast_inputs(x, dtype, "fit", warned)
    if val is not None:
        val = (_cast_inputs(val[0], dtype, "fit", warned), val[1], val[2])
    _preflight(model, loss, fns, ts, (x, y, n), val)
    history: Dict[str, List[Any]] = {"epoch": [], "step": [], "loss": []}
    if val is not None:
        for name in val_metrics:
            history[f"val_{name}"] = []
    runs = _begin(callbacks, list(history))

    shard = None
    if comm is None:
        step_fn = make_step(model, loss, optimizer)
    else:
        from . import distributed
        comm = distributed.as_comm(comm)
        plan = (n, batch_size, per_epoch, target)
        plans = comm.gather_all(plan)
        if plans != [plan] * comm.size:
            raise ValueError("fit: every rank must pass the same data, batch_size and "
                             f"epochs/steps; (examples, batch_size, steps per epoch, target) "
                             f"per rank: {plans}")
        ts = distributed.broadcast(comm, ts)
        step_fn = distributed.make_step(model, loss, optimizer, comm)
        shard = (comm.rank, comm.size)
    lead = comm is None or comm.rank == 0
    if ts.step >= target:
        warnings.warn(f"fit: the train state is already at step {ts.step} >= the target "
                      f"{target}; nothing to do (epochs/steps count from step 0)", stacklevel=2)
        return ts, history

    if keep_freed_memory:
        perf.keep_freed_memory()
    saved = [-1]  # the step last written, so that one step is not saved twice
    # The last train state known to be finite everywhere.  Checking every leaf after every
    # step cost 15% of an MLP-512 step (0.19 ms of 1.30 with sgd, 0.5 of 3.1 with adam),
    # so the state is checked where it matters: before a checkpoint is written, at the end
    # of each epoch, and when a loss is not finite (a non-finite state makes the next
    # step's loss non-finite).
    good = [ts]
    last_value = float("nan")

    def verified(state: TrainState, value: float) -> None:
        """Raise unless ``state`` is finite (on every rank); else remember it as good."""
        where = _non_finite_path(state)
        if comm is not None and comm.any(where is not None) and where is None:
            where = "the train state of another rank"
        if where is not None:
            raise NonFiniteLossError(good[0].step, value, good[0], history, where)
        good[0] = state

    def checkpoint(state: TrainState) -> None:
        if checkpoint_path is not None and saved[0] != state.step:
            if state is not good[0]:  # a checkpoint only ever holds a finite state
                verified(state, float("nan"))
            if lead:
                io.save(checkpoint_path, state)
            saved[0] = state.step

    leaves, rebuild = flatten_data((x, y), "fit: train_data")
    bar = _Progress(progress if lead else False, target, ts.step)
    stop = False
    try:
        while ts.step < target and not stop:
            epoch, first = divmod(ts.step, per_epoch)
            order = random.permutation(random.fold_in(k_data, epoch), n) if shuffle else None
            loss_sum, seen = 0.0, 0
            for batch in iter_batches(leaves, rebuild, order, batch_size, per_epoch, start=first,
                                      shard=shard):
                if ts.step >= target:
                    break
                new_ts, out = step_fn(ts, batch, lr)
                value = out["loss"]
                if not math.isfinite(value):  # the loss is the same on every rank
                    where = _non_finite_path(ts)
                    if comm is not None and comm.any(where is not None) and where is None:
                        where = "the train state of another rank"
                    if where is None:
                        good[0] = ts
                    checkpoint(good[0])
                    if comm is not None:
                        comm.barrier()  # the checkpoint is on disk before any rank goes on
                    if where is None:
                        raise NonFiniteLossError(ts.step, value, ts, history, "loss")
                    # ts came from a step with a finite loss and non-finite results
                    raise NonFiniteLossError(ts.step - 1, last_value, good[0], history, where)
                ts, last_value = new_ts, value
                size = batch[1].shape[0] if comm is None else out["examples"]
                loss_sum += value * size
                seen += size
                bar.update(ts.step, epoch + 1, value)
                if every is not None and ts.step % every == 0:
                    checkpoint(ts)
            logs: Dict[str, Any] = {"epoch": epoch + 1, "step": ts.step,
                                    "loss": loss_sum / seen if seen else float("nan")}
            if val is not None:
                scores = evaluate(model, ts.params, ts.state, (val[0], val[1]), val_metrics,
                                  batch_size=max(batch_size, 256), comm=comm)
                logs.update({f"val_{k}": v for k, v in scores.items()})
            verified(ts, logs["loss"])
            for k, v in logs.items():
                history[k].append(v)
            checkpoint(ts)
            for run in runs:
                if run(ts, dict(logs)) == "stop":
                    stop = True
            if comm is not None:
                stop = comm.any(stop)
    finally:
        bar.close()
    if comm is not None:
        comm.barrier()  # rank 0's last checkpoint is written before fit returns anywhere
    for run in runs:
        end = getattr(run, "end", None)
        if callable(end):
            ts = end(ts)
    return ts, history
