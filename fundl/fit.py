"""The training loop: :func:`fit` over :func:`~fundl.train.make_step`, and :func:`evaluate`.

Re-exported by :mod:`fundl.train` and :mod:`fundl`.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import io, random
from .core import Layer
from .data.batching import iter_batches, as_arrays, num_batches
from .losses import Loss
from .metrics import MetricSpec, loss_metric, resolve
from .optim.base import Optimizer
from .step import Schedule, TrainState, make_step

__all__ = ["fit", "evaluate", "NonFiniteLossError"]

Callback = Callable[[TrainState, Dict[str, Any]], Optional[str]]
Metrics = Union[None, Mapping[str, MetricSpec], Sequence[MetricSpec]]


class NonFiniteLossError(FloatingPointError):
    """The training loss became ``nan`` or ``inf``.

    ``step`` is the step counter of the train state the failing step started
    from, ``loss`` the value, ``train_state`` the last train state with a
    finite loss (the one *before* the failing step; it is also written to the
    checkpoint when checkpointing is on) and ``history`` the history so far.
    """

    def __init__(self, step: int, loss: float, train_state: TrainState,
                 history: Dict[str, List[Any]]):
        self.step = step
        self.loss = loss
        self.train_state = train_state
        self.history = history
        super().__init__(f"non-finite training loss {loss} at step {step}; err.train_state "
                         f"holds the last finite train state (step {train_state.step}). "
                         "Try a smaller learning rate or gradient clipping.")


def _pair(data: Any, what: str) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(data, np.ndarray) or not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{what} must be a pair (x, y) of arrays sharing axis 0")
    (x, y), _ = as_arrays(tuple(data), what)
    return x, y


def evaluate(model: Layer, params: Any, state: Any, data: Tuple[Any, Any],
             metrics: Metrics = None, batch_size: int = 256, comm: Any = None
             ) -> Dict[str, float]:
    """Metrics of ``model`` on ``data = (x, y)`` in eval mode (``apply(train=False)``).

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
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be an integer >= 1, got {batch_size!r}")
    x, y = _pair(data, "evaluate: data")
    n = x.shape[0]
    batch_size = int(batch_size)
    if comm is not None:
        return _evaluate_shared(model, params, state, x, y, fns, batch_size, comm)
    totals = dict.fromkeys(fns, 0.0)
    for lo in range(0, n, batch_size):
        xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
        out = model.apply(params, state, xb, key=None, train=False)
        for name, fn in fns.items():
            totals[name] += float(fn(out, yb)) * xb.shape[0]
    return {name: total / n for name, total in totals.items()}


def _evaluate_shared(model: Layer, params: Any, state: Any, x: np.ndarray, y: np.ndarray,
                     fns: Dict[str, Any], batch_size: int, comm: Any) -> Dict[str, float]:
    """:func:`evaluate` with the batches shared round-robin by the ranks of ``comm``.

    Each rank fills its batches' rows of a ``(batches, metrics)`` table of
    ``metric * batch size`` (zeros elsewhere); one sum over ranks (adding
    zeros is exact) gives every rank the whole table, which is then added up
    in batch order exactly as the single-process loop does.
    """
    from .distributed.comm import as_comm
    comm = as_comm(comm)
    n = x.shape[0]
    names = list(fns)
    count = num_batches(n, batch_size)
    plans = comm.gather_all((n, count))
    if plans != [(n, count)] * comm.size:
        raise ValueError(f"evaluate: every rank must pass the same data and batch_size; "
                         f"(examples, batches) per rank: {plans}")
    table = np.zeros((count, len(names)), np.float64)
    for b in range(comm.rank, count, comm.size):
        lo = b * batch_size
        xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
        out = model.apply(params, state, xb, key=None, train=False)
        for j, name in enumerate(names):
            table[b, j] = float(fns[name](out, yb)) * xb.shape[0]
    table = comm.sum(table)
    totals = dict.fromkeys(names, 0.0)
    for b in range(count):
        for j, name in enumerate(names):
            totals[name] += float(table[b, j])
    return {name: total / n for name, total in totals.items()}


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


def fit(model: Layer, loss: Loss, optimizer: Optimizer, train_data: Tuple[Any, Any], *,
        key: Any, epochs: Optional[int] = None, steps: Optional[int] = None,
        batch_size: int = 128, lr: Union[float, Schedule] = 1e-3,
        val_data: Optional[Tuple[Any, Any]] = None, metrics: Metrics = (),
        train_state: Optional[TrainState] = None, checkpoint_path: Any = None,
        checkpoint_every: Optional[int] = None, callbacks: Iterable[Callback] = (),
        progress: Union[bool, str] = "auto", shuffle: bool = True, drop_last: bool = False,
        comm: Any = None) -> Tuple[TrainState, Dict[str, List[Any]]]:
    """Train ``model`` on ``train_data = (x, y)``; returns ``(train_state, history)``.

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
      mode) with the training loss and ``metrics`` (see :func:`evaluate`).
    - ``history``: lists, one entry per epoch (a run that ends mid-epoch adds
      one for the partial epoch): ``"epoch"`` (1-based), ``"step"``,
      ``"loss"`` (mean training loss over the epoch's batches run by this
      call, weighted by batch size) and ``"val_<name>"`` per validation metric.
    - ``callbacks``: functions ``cb(train_state, logs)`` called after each
      epoch with that epoch's history entry; returning ``"stop"`` ends training.
    - ``checkpoint_path``: the train state is saved (atomically, with
      :func:`fundl.io.save`) every ``checkpoint_every`` steps if given, after
      every epoch, and at the end.
    - ``progress``: ``"auto"`` shows a progress bar with the loss on stderr
      when it is a terminal, ``True`` always, ``False`` never (tqdm if
      installed, else a one-line ``\\r`` display).
    - A non-finite loss raises :class:`NonFiniteLossError` with the last finite
      train state (saved to ``checkpoint_path`` when checkpointing is on).
    - ``comm`` (a :class:`fundl.distributed.Comm`, e.g. ``dist.world()``):
      data-parallel training; every rank calls ``fit`` with the same
      arguments and the whole ``train_data``.  ``batch_size`` is the global
      batch; each rank trains on its shard of it
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
    """
    x, y = _pair(train_data, "fit: train_data")
    if (epochs is None) == (steps is None):
        raise ValueError("fit needs exactly one of epochs= or steps=")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be an integer >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    n = x.shape[0]
    per_epoch = num_batches(n, batch_size, drop_last)
    if per_epoch == 0:
        raise ValueError(f"fit: drop_last with batch_size {batch_size} > {n} examples leaves no batch")
    target = int(epochs) * per_epoch if epochs is not None else int(steps)  # type: ignore[arg-type]
    if target < 0:
        raise ValueError(f"fit: epochs/steps must be >= 0, got {epochs if epochs is not None else steps}")
    if checkpoint_every is not None and int(checkpoint_every) < 1:
        raise ValueError(f"fit: checkpoint_every must be >= 1 steps, got {checkpoint_every}")
    if val_data is not None:
        _pair(val_data, "fit: val_data")
    val_metrics = {"loss": loss_metric(loss), **resolve(metrics)}
    callbacks = tuple(callbacks)

    k_init, k_data = random.split(key)
    ts = train_state if train_state is not None else TrainState.create(k_init, model, optimizer,
                                                                        x.shape[1:])
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
    history: Dict[str, List[Any]] = {"epoch": [], "step": [], "loss": []}
    if val_data is not None:
        for name in val_metrics:
            history[f"val_{name}"] = []
    if ts.step >= target:
        warnings.warn(f"fit: the train state is already at step {ts.step} >= the target "
                      f"{target}; nothing to do (epochs/steps count from step 0)", stacklevel=2)
        return ts, history

    saved = [-1]  # the step last written, so that one step is not saved twice

    def checkpoint(state: TrainState) -> None:
        if checkpoint_path is not None and saved[0] != state.step:
            if lead:
                io.save(checkpoint_path, state)
            saved[0] = state.step

    bar = _Progress(progress if lead else False, target, ts.step)
    stop = False
    try:
        while ts.step < target and not stop:
            epoch, first = divmod(ts.step, per_epoch)
            order = random.permutation(random.fold_in(k_data, epoch), n) if shuffle else None
            loss_sum, seen = 0.0, 0
            for batch in iter_batches((x, y), False, order, batch_size, per_epoch, start=first,
                                      shard=shard):
                if ts.step >= target:
                    break
                new_ts, out = step_fn(ts, batch, lr)
                value = out["loss"]
                if not math.isfinite(value):
                    checkpoint(ts)
                    if comm is not None:
                        comm.barrier()  # the checkpoint is on disk before any rank goes on
                    raise NonFiniteLossError(ts.step, value, ts, history)
                ts = new_ts
                size = batch[0].shape[0] if comm is None else out["examples"]
                loss_sum += value * size
                seen += size
                bar.update(ts.step, epoch + 1, value)
                if checkpoint_every is not None and ts.step % int(checkpoint_every) == 0:
                    checkpoint(ts)
            logs: Dict[str, Any] = {"epoch": epoch + 1, "step": ts.step,
                                    "loss": loss_sum / seen if seen else float("nan")}
            if val_data is not None:
                scores = evaluate(model, ts.params, ts.state, val_data, val_metrics,
                                  batch_size=max(batch_size, 256), comm=comm)
                logs.update({f"val_{k}": v for k, v in scores.items()})
            for k, v in logs.items():
                history[k].append(v)
            checkpoint(ts)
            for cb in callbacks:
                if cb(ts, dict(logs)) == "stop":
                    stop = True
            if comm is not None:
                stop = comm.any(stop)
    finally:
        bar.close()
    if comm is not None:
        comm.barrier()  # rank 0's last checkpoint is written before fit returns anywhere
    return ts, history
