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
             metrics: Metrics = None, batch_size: int = 256) -> Dict[str, float]:
    """Metrics of ``model`` on ``data = (x, y)`` in eval mode (``apply(train=False)``).

    ``metrics``: a mapping ``{name: metric}`` or a sequence of metrics; a metric
    is a name (``"accuracy"``, ``"top_5_accuracy"``, ``"mse"``, ``"mae"``,
    ``"cross_entropy"``), a :class:`~fundl.losses.Loss` or a function
    ``fn(pred, y) -> float`` returning a batch mean.  Runs batches of
    ``batch_size`` in data order and returns ``{name: float}``, each the mean
    over all examples (batch means weighted by batch size).
    """
    fns = resolve(metrics)
    if not fns:
        raise ValueError("evaluate needs metrics, e.g. metrics=['accuracy'] or "
                         "{'loss': fundl.losses.mse}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be an integer >= 1, got {batch_size!r}")
    x, y = _pair(data, "evaluate: data")
    n = x.shape[0]
    totals = dict.fromkeys(fns, 0.0)
    for lo in range(0, n, int(batch_size)):
        xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
        out = model.apply(params, state, xb, key=None, train=False)
        for name, fn in fns.items():
            totals[name] += float(fn(out, yb)) * xb.shape[0]
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
        progress: Union[bool, str] = "auto", shuffle: bool = True, drop_last: bool = False
        ) -> Tuple[TrainState, Dict[str, List[Any]]]:
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
    step_fn = make_step(model, loss, optimizer)
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
            io.save(checkpoint_path, state)
            saved[0] = state.step

    bar = _Progress(progress, target, ts.step)
    stop = False
    try:
        while ts.step < target and not stop:
            epoch, first = divmod(ts.step, per_epoch)
            order = random.permutation(random.fold_in(k_data, epoch), n) if shuffle else None
            loss_sum, seen = 0.0, 0
            for batch in iter_batches((x, y), False, order, batch_size, per_epoch, start=first):
                if ts.step >= target:
                    break
                new_ts, out = step_fn(ts, batch, lr)
                value = out["loss"]
                if not math.isfinite(value):
                    checkpoint(ts)
                    raise NonFiniteLossError(ts.step, value, ts, history)
                ts = new_ts
                size = batch[0].shape[0]
                loss_sum += value * size
                seen += size
                bar.update(ts.step, epoch + 1, value)
                if checkpoint_every is not None and ts.step % int(checkpoint_every) == 0:
                    checkpoint(ts)
            logs: Dict[str, Any] = {"epoch": epoch + 1, "step": ts.step,
                                    "loss": loss_sum / seen if seen else float("nan")}
            if val_data is not None:
                scores = evaluate(model, ts.params, ts.state, val_data, val_metrics,
                                  batch_size=max(batch_size, 256))
                logs.update({f"val_{k}": v for k, v in scores.items()})
            for k, v in logs.items():
                history[k].append(v)
            checkpoint(ts)
            for cb in callbacks:
                if cb(ts, dict(logs)) == "stop":
                    stop = True
    finally:
        bar.close()
    return ts, history
