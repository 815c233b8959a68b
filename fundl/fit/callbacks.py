"""Callbacks for :func:`fundl.fit`: a small typed protocol, and the ones most training runs use.

A callback is a :class:`Callback` (override only the hooks you need) or a plain function
``cb(train_state, logs)`` called at the end of every epoch.  The hooks::

    on_train_begin(info)                 # info: a TrainInfo (log names, steps, ...)
    on_batch_end(train_state, logs)      # after every step: logs = {"epoch", "step", "loss", "lr"}
    on_epoch_end(train_state, logs)      # logs: this epoch's history entry (whole epochs only)
    on_train_end(train_state)            # may return the train state fit returns
    get_state() / set_state(state)       # what a checkpoint keeps, so that resume is exact

``on_batch_end`` and ``on_epoch_end`` (and a function callback) return what fit should do:

- ``None``: go on;
- ``"stop"`` or ``Control(stop=True)``: stop training (after this step or epoch);
- ``Control(lr_factor=f)``: multiply the learning rate by ``f`` from the next step on (the
  rate is ``lr(step) * scale``; ``scale`` starts at 1, lives in fit's loop state and is
  checkpointed, and ``history["lr"]`` records the rate each epoch ran with).

Anything else (``True``, ``"STOP"``, a number) is a ``TypeError`` naming the callback: a
return value is never silently ignored.  A callback object keeps the state of one run
(``on_train_begin`` resets it); it serves one ``fit`` at a time.
"""

from __future__ import annotations

import math
import os
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from ..metrics import higher_is_better
from ..step import TrainState

__all__ = ["Callback", "Control", "TrainInfo", "EarlyStopping", "ReduceLROnPlateau",
           "CSVLogger", "ModelCheckpoint", "FunctionCallback", "resolve_callbacks", "decision"]


class Control(NamedTuple):
    """What a callback asks of fit: ``stop`` training, and/or multiply the learning rate by
    ``lr_factor`` (a finite number > 0) from the next step on."""

    stop: bool = False
    lr_factor: Optional[float] = None


class TrainInfo(NamedTuple):
    """What fit tells its callbacks before the first step.

    ``names``: the keys of every epoch's logs (``"epoch"``, ``"step"``, ``"loss"``, the
    training metrics, ``"lr"``, ``"val_loss"``, ``"val_<metric>"``); ``start_step`` the train
    state's step counter at the start (> 0 when resuming); ``target`` the step training ends
    at; ``steps_per_epoch``; ``higher_is_better`` for each log whose direction fit knows
    (from its metrics: ``True``, ``False`` or ``None``); ``lead``: this process writes files
    (always, except on ranks other than 0 under ``comm=``).
    """

    names: Sequence[str]
    start_step: int
    target: int
    steps_per_epoch: int
    higher_is_better: Mapping[str, Optional[bool]]
    lead: bool = True


Decision = Union[None, str, Control]


class Callback:
    """Base class of fit's callbacks: every hook is optional and does nothing here.

    Subclasses override what they need (see :mod:`fundl.fit.callbacks`).  A callback with
    state that training depends on (a best value, a patience counter, a lowered learning
    rate) returns it from :meth:`get_state` as a pytree of numbers, strings, ``None`` and
    arrays (a ``TrainState`` too), and takes it back in :meth:`set_state`: fit keeps it
    beside its checkpoints, so a resumed run continues exactly.
    """

    def on_train_begin(self, info: TrainInfo) -> None:
        """Called once before the first step; reset the run's state here."""

    def on_batch_end(self, train_state: TrainState, logs: Mapping[str, Any]) -> Decision:
        """Called after every step (only if overridden: it costs nothing otherwise)."""
        return None

    def on_epoch_end(self, train_state: TrainState, logs: Mapping[str, Any]) -> Decision:
        """Called after every epoch with its history entry (after validation)."""
        return None

    def on_train_end(self, train_state: TrainState) -> Optional[TrainState]:
        """Called once when training ends; a TrainState returned is what fit returns."""
        return None

    def get_state(self) -> Any:
        """The run's state to checkpoint (``None``: nothing)."""
        return None

    def set_state(self, state: Any) -> None:
        """Take back what :meth:`get_state` gave (on resume, after ``on_train_begin``)."""

    @property
    def has_state(self) -> bool:
        """Whether this callback keeps state for checkpoints (it overrides get_state)."""
        return type(self).get_state is not Callback.get_state

    @property
    def per_batch(self) -> bool:
        return type(self).on_batch_end is not Callback.on_batch_end


class FunctionCallback(Callback):
    """A function ``fn(train_state, logs)`` called at the end of every epoch."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def on_epoch_end(self, train_state: TrainState, logs: Mapping[str, Any]) -> Decision:
        return self.fn(train_state, logs)

    def __repr__(self) -> str:
        return f"FunctionCallback({self.__name__})"


def resolve_callbacks(callbacks: Any) -> List[Callback]:
    """fit's ``callbacks=``: a list of callbacks (or one), each a :class:`Callback` or a
    function ``cb(train_state, logs)``."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or (callable(callbacks) and
                                           not isinstance(callbacks, (list, tuple))):
        callbacks = [callbacks]
    if isinstance(callbacks, (str, bytes, dict)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"fit: callbacks must be a list of callbacks (fl.Callback objects "
                        f"or functions cb(train_state, logs)), got {type(callbacks).__name__}")
    out: List[Callback] = []
    for i, cb in enumerate(callbacks):
        if isinstance(cb, Callback):
            out.append(cb)
        elif isinstance(cb, type) and issubclass(cb, Callback):
            raise TypeError(f"fit: callbacks[{i}] is the class {cb.__name__}; pass an instance, "
                            f"e.g. {cb.__name__}(...)")
        elif callable(cb):
            out.append(FunctionCallback(cb))
        else:
            raise TypeError(f"fit: callbacks[{i}] must be a function cb(train_state, logs) or "
                            f"a fl.Callback, got {type(cb).__name__}")
    return out


def _label(i: int, cb: Callback) -> str:
    name = cb.__name__ if isinstance(cb, FunctionCallback) else type(cb).__name__
    return f"callbacks[{i}] ({name})"


def decision(value: Any, i: int, cb: Callback, hook: str) -> Control:
    """What a callback's return value asks for, or a TypeError for anything but ``None``,
    ``"stop"`` and a :class:`Control`."""
    if value is None:
        return Control()
    if isinstance(value, str) and value == "stop":
        return Control(stop=True)
    if isinstance(value, Control):
        stop = value.stop
        if not isinstance(stop, (bool, np.bool_)):
            raise TypeError(f"fit: {_label(i, cb)}.{hook} returned Control(stop={stop!r}); "
                            "stop must be True or False")
        factor = value.lr_factor
        if factor is not None:
            ok = isinstance(factor, (int, float, np.integer, np.floating)) and \
                not isinstance(factor, bool) and math.isfinite(factor) and factor > 0
            if not ok:
                raise ValueError(f"fit: {_label(i, cb)}.{hook} returned Control(lr_factor="
                                 f"{factor!r}); lr_factor must be a finite number > 0")
        return Control(bool(stop), None if factor is None else float(factor))
    raise TypeError(f"fit: {_label(i, cb)}.{hook} returned {value!r}; a callback returns None "
                    f"(go on), 'stop' or fl.Control(stop=..., lr_factor=...)")


# --- the direction of a monitored value -------------------------------------------------------

def _check_monitor(who: str, monitor: Any) -> str:
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(f"{who}: monitor must be the name of a log, e.g. 'val_loss', got "
                        f"{monitor!r}")
    return monitor


def _check_mode(who: str, mode: Any) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{who}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


def _nonneg(who: str, name: str, value: Any, integer: bool = False) -> Any:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= 0 \
            or not math.isfinite(value):
        what = "an integer" if integer else "a number"
        raise ValueError(f"{who}: {name} must be {what} >= 0, got {value!r}")
    return int(value) if integer else float(value)


def _resolve_mode(who: str, monitor: str, mode: str, info: TrainInfo) -> bool:
    """``True`` when larger values of ``monitor`` are better; checks that fit logs it."""
    if monitor not in info.names:
        hint = " (validation logs need val_data=)" if monitor.startswith("val_") else ""
        raise ValueError(f"{who}: monitor {monitor!r} is not among the logs "
                         f"{list(info.names)}{hint}")
    if mode != "auto":
        return mode == "max"
    higher = higher_is_better(monitor, info.higher_is_better)
    if higher is None:
        raise ValueError(f"{who}: mode='auto' cannot tell whether a higher or a lower "
                         f"{monitor!r} is better; pass mode='max' or mode='min'")
    return higher


class _Tracker:
    """The best value of a monitored log so far, and the epochs since it improved."""

    def __init__(self) -> None:
        self.best: Optional[float] = None
        self.wait = 0

    def improves(self, value: float, higher: bool, min_delta: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best + min_delta if higher else value < self.best - min_delta


def _value(who: str, monitor: str, logs: Mapping[str, Any]) -> float:
    if monitor not in logs:
        raise ValueError(f"{who}: monitor {monitor!r} is not among the logs {list(logs)}")
    return float(logs[monitor])


# --- early stopping --------------------------------------------------------------------------

class EarlyStopping(Callback):
    """Stop training when ``monitor`` stops improving; with ``restore_best``, fit returns the
    best epoch's train state.

    ``monitor`` names a key of fit's per-epoch logs (``"loss"``, ``"val_loss"``,
    ``"val_accuracy"``, ...).  ``mode``: ``"max"`` (higher is better), ``"min"``, or
    ``"auto"`` (the default): ``max`` for accuracy-like logs (accuracy, precision, recall,
    f1, a metric declaring ``higher_is_better``), ``min`` for losses and errors, and a
    ``ValueError`` before training when the name does not tell.  An epoch improves when its
    value beats the best so far by more than ``min_delta`` (the first finite value always
    does; ``nan`` never does); training stops after ``patience`` epochs in a row without an
    improvement (``patience=0``: at the first one).

    ``restore_best=True``: fit returns the train state of the end of the best epoch
    (whether training stopped early or ran out of epochs); bit-identical to a run with
    ``epochs=`` that epoch.  The history covers every epoch that ran, and fit's checkpoint
    still holds the last state reached; the best state, the best value and the patience
    count are kept beside it (:meth:`get_state`), so a resumed run goes on exactly.
    After a run, ``best``, ``best_epoch`` and ``best_state`` hold what it saw.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, mode: str = "auto",
                 min_delta: float = 0.0, restore_best: bool = True) -> None:
        who = "EarlyStopping"
        self.monitor = _check_monitor(who, monitor)
        self.patience = _nonneg(who, "patience", patience, integer=True)
        self.mode = _check_mode(who, mode)
        self.min_delta = _nonneg(who, "min_delta", min_delta)
        if not isinstance(restore_best, (bool, np.bool_)):
            raise TypeError(f"{who}: restore_best must be True or False, got {restore_best!r}")
        self.restore_best = bool(restore_best)
        self._reset()

    def _reset(self) -> None:
        self.tracker = _Tracker()
        self.best_epoch: Optional[int] = None
        self.best_state: Optional[TrainState] = None
        self.higher: Optional[bool] = None if self.mode == "auto" else self.mode == "max"

    @property
    def best(self) -> Optional[float]:
        return self.tracker.best

    def __repr__(self) -> str:
        return (f"EarlyStopping({self.monitor!r}, patience={self.patience}, mode={self.mode!r}, "
                f"min_delta={self.min_delta}, restore_best={self.restore_best})")

    def on_train_begin(self, info: TrainInfo) -> None:
        self._reset()
        self.higher = _resolve_mode("EarlyStopping", self.monitor, self.mode, info)

    def on_epoch_end(self, train_state: TrainState, logs: Mapping[str, Any]) -> Decision:
        if self.higher is None:  # used outside fit without on_train_begin
            self.higher = _resolve_mode("EarlyStopping", self.monitor, self.mode,
                                        TrainInfo(list(logs), 0, 0, 0, {}))
        value = _value("EarlyStopping", self.monitor, logs)
        t = self.tracker
        if t.improves(value, self.higher, self.min_delta):
            t.best, t.wait, self.best_epoch = value, 0, logs.get("epoch")
            if self.restore_best:
                self.best_state = train_state  # train states are immutable: no copy needed
            return None
        t.wait += 1
        return "stop" if t.wait >= self.patience else None

    def on_train_end(self, train_state: TrainState) -> Optional[TrainState]:
        if self.restore_best and self.best_state is not None:
            return self.best_state
        return None

    def get_state(self) -> Any:
        return {"best": self.tracker.best, "wait": self.tracker.wait,
                "best_epoch": self.best_epoch, "best_state": self.best_state}

    def set_state(self, state: Any) -> None:
        self.tracker.best, self.tracker.wait = state["best"], int(state["wait"])
        self.best_epoch, self.best_state = state["best_epoch"], state["best_state"]


# --- the learning rate on a plateau --------------------------------------------------------------

class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs (Keras's ``ReduceLROnPlateau``).

    An epoch improves as for :class:`EarlyStopping` (``mode``, ``min_delta``).  After a
    reduction, ``cooldown`` epochs pass before the count starts again.  The rate never goes
    below ``min_lr``: a reduction that would is cut to ``min_lr``, and none is made once the
    rate is there.  The rate is ``lr(step) * scale`` with fit's ``scale`` (1 at the start);
    a reduction multiplies ``scale`` (``Control(lr_factor=...)``), which fit checkpoints with
    this callback's best value and counters, so a resumed run continues with the lowered rate,
    bit for bit.  ``history["lr"]`` shows the rate of each epoch.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 mode: str = "auto", min_delta: float = 0.0, cooldown: int = 0,
                 min_lr: float = 0.0) -> None:
        who = "ReduceLROnPlateau"
        self.monitor = _check_monitor(who, monitor)
        if isinstance(factor, bool) or not isinstance(factor, (int, float, np.floating)) \
                or not 0.0 < factor < 1.0:
            raise ValueError(f"{who}: factor must be a number in (0, 1), got {factor!r}")
        self.factor = float(factor)
        self.patience = _nonneg(who, "patience", patience, integer=True)
        self.mode = _check_mode(who, mode)
        self.min_delta = _nonneg(who, "min_delta", min_delta)
        self.cooldown = _nonneg(who, "cooldown", cooldown, integer=True)
        self.min_lr = _nonneg(who, "min_lr", min_lr)
        self._reset()

    def _reset(self) -> None:
        self.tracker = _Tracker()
        self.cooling = 0
        self.higher: Optional[bool] = None if self.mode == "auto" else self.mode == "max"

    def __repr__(self) -> str:
        return (f"ReduceLROnPlateau({self.monitor!r}, factor={self.factor}, "
                f"patience={self.patience}, mode={self.mode!r}, cooldown={self.cooldown}, "
                f"min_lr={self.min_lr})")

    def on_train_begin(self, info: TrainInfo) -> None:
        self._reset()
        self.higher = _resolve_mode("ReduceLROnPlateau", self.monitor, self.mode, info)

    def on_epoch_end(self, train_state: TrainState, logs: Mapping[str, Any]) -> Decision:
        value = _value("ReduceLROnPlateau", self.monitor, logs)
        t = self.tracker
        if self.cooling > 0:
            self.cooling -= 1
            t.wait = 0
        if t.improves(value, bool(self.higher), self.min_delta):
            t.best, t.wait = value, 0
            return None
        if self.cooling > 0:
            return None
        t.wait += 1
        if t.wait < self.patience:
            return None
        t.wait = 0
        rate = float(logs["lr"])
        if not rate > self.min_lr:
            return None
        new = max(rate * self.factor, self.min_lr)
        self.cooling = self.cooldown
        return Control(lr_factor=new / rate)

    def get_state(self) -> Any:
        return {"best": self.tracker.best, "wait": self.tracker.wait, "cooling": self.cooling}

    def set_state(self, state: Any) -> None:
        self.tracker.best, self.tracker.wait = state["best"], int(state["wait"])
        self.cooling = int(state["cooling"])


# --- files ------------------------------------------------------------------------------------

class CSVLogger(Callback):
    """Append each epoch's logs to a CSV file ``path`` (a header line with the log names, then
    one row per epoch; numbers written exactly, as ``repr`` does).

    A run that starts from step 0 writes a new file; a resumed run keeps the rows of the
    epochs up to its starting step (dropping any written after the checkpoint it resumes
    from) and appends.  Only the lead process writes (rank 0 under ``comm=``).
    """

    def __init__(self, path: Any) -> None:
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise TypeError(f"CSVLogger: path must be a file path, got "
                            f"{type(path).__name__}") from None
        self.names: Optional[List[str]] = None
        self.lead = True

    def on_train_begin(self, info: TrainInfo) -> None:
        from .checks import check_checkpoint_path
        check_checkpoint_path(self.path, "CSVLogger: path")
        self.lead, self.names = info.lead, list(info.names)
        if not self.lead:
            return
        import csv
        kept: List[List[str]] = []
        if info.start_step > 0 and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))
            if rows and rows[0] == self.names and "step" in self.names:
                at = self.names.index("step")
                kept = [r for r in rows[1:] if len(r) == len(self.names)
                        and int(r[at]) <= info.start_step]
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.names)
            writer.writerows(kept)

    def on_epoch_end(self, train_state: TrainState, logs: Mapping[str, Any]) -> Decision:
        if not self.lead:
            return None
        import csv
        names = self.names or list(logs)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([repr(logs[k]) if isinstance(logs.get(k), float) else
                                    logs.get(k, "") for k in names])
        return None


class ModelCheckpoint(Callback):
    """Save the train state (or only its params) at the end of epochs with
    :func:`fundl.io.save`: every epoch, or with ``best_only`` only when ``monitor`` improved
    (``mode`` as for :class:`EarlyStopping`).

    ``path`` may hold ``{epoch}`` and ``{step}`` (``"run/epoch{epoch:03d}.npz"``) to keep one
    file per save; otherwise each save replaces the last (atomically).  ``what``:
    ``"train_state"`` (load with ``fl.io.load(path)`` and resume from it) or ``"params"``.
    The directory is checked before training.  Only the lead process writes.
    """

    def __init__(self, path: Any, monitor: str = "val_loss", mode: str = "auto",
                 best_only: bool = True, what: str = "train_state") -> None:
        who = "ModelCheckpoint"
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise TypeError(f"{who}: path must be a file path, got {type(path).__name__}") \
                from None
        self.monitor = _check_monitor(who, monitor)
        self.mode = _check_mode(who, mode)
        if not isinstance(best_only, (bool, np.bool_)):
            raise TypeError(f"{who}: best_only must be True or False, got {best_only!r}")
        self.best_only = bool(best_only)
        if what not in ("train_state", "params"):
            raise ValueError(f"{who}: what must be 'train_state' or 'params', got {what!r}")
        self.what = what
        self.tracker = _Tracker()
        self.higher: Optional[bool] = None
        self.lead = True
        self.saved: List[str] = []

    def on_train_begin(self, info: TrainInfo) -> None:
        from .checks import check_checkpoint_path
        sample = self.path.format(epoch=0, step=0) if "{" in self.path else self.path
        check_checkpoint_path(sample, "ModelCheckpoint: path")
        self.tracker, self.lead, self.saved = _Tracker(), info.lead, []
        self.higher = _resolve_mode("ModelCheckpoint", self.monitor, self.mode, info) \
            if self.best_only else None

    def on_epoch_end(self, train_state: TrainState, logs: Mapping[str, Any]) -> Decision:
        if self.best_only:
            value = _value("ModelCheckpoint", self.monitor, logs)
            if not self.tracker.improves(value, bool(self.higher), 0.0):
                return None
            self.tracker.best = value
        if self.lead:
            from .. import io
            file = self.path.format(epoch=logs.get("epoch"), step=logs.get("step"))
            io.save(file, train_state if self.what == "train_state" else train_state.params)
            self.saved.append(file)
        return None

    def get_state(self) -> Any:
        return {"best": self.tracker.best}

    def set_state(self, state: Any) -> None:
        self.tracker.best = state["best"]

