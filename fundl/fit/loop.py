""":func:`fit`: the training loop over :func:`~fundl.make_step`."""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .. import random
from ..core import Layer
from ..losses import Loss
from ..metrics import Metric, MetricSpec, loss_metric, resolve
from ..optim.base import Optimizer, as_lr
from ..step import Schedule, TrainState, check_parts, make_step
from ..validate import data_shapes
from .callbacks import Callback, TrainInfo, decision, resolve_callbacks
from .checks import (check_batch_size, check_checkpoint_path, check_count, check_train_state,
                     non_finite_path, preflight, rethrow)
from .errors import NonFiniteLossError
from .evaluate import run_evaluate
from .inputs import Data, describe, float_dtype
from .loop_state import LoopFile
from .progress import Progress
from . import ranks

__all__ = ["fit"]

Metrics = Union[None, Mapping[str, MetricSpec], Sequence[MetricSpec], MetricSpec]


class _EpochSums:
    """The running sums of one epoch's training loss (``S``, ``W``) and metric stats, from the
    train-mode outputs each step computes: its loss sees them (see ``observing``)."""

    def __init__(self, loss: Loss, metrics: Dict[str, Metric], lengths: Dict[str, int]) -> None:
        self.loss, self.metrics = loss, metrics
        self.spans: List[Tuple[str, int, int]] = []
        at = 2
        for name in metrics:
            self.spans.append((name, at, at + lengths[name]))
            at += lengths[name]
        self.sums = np.zeros(at, np.float64)

    def reset(self) -> None:
        self.sums = np.zeros_like(self.sums)

    def add(self, pred: Any, target: Any, value: Any) -> None:
        weight = self.loss.weight_of(pred, target)
        row = self.sums.copy()
        row[0] += float(value) * weight
        row[1] += weight
        for name, lo, hi in self.spans:
            row[lo:hi] += self.metrics[name].stats(pred, target)
        self.sums = row

    def observing(self) -> Loss:
        """``loss`` with the same value and gradient, that adds each batch it sees to the sums."""
        inner = self.loss

        def value_and_grad(pred: Any, target: Any):
            value, grad = inner.value_and_grad(pred, target)
            self.add(pred, target, value)
            return value, grad
        return inner._replace(value_and_grad=value_and_grad)   # a combination keeps its parts

    def logs(self, sums: np.ndarray) -> Dict[str, float]:
        out = {"loss": float(sums[0] / sums[1]) if sums[1] else float("nan")}
        for name, lo, hi in self.spans:
            out[name] = float(self.metrics[name].result(sums[lo:hi]))
        return out


def fit(model: Layer, loss: Loss, optimizer: Optimizer, train_data: Any, *,
        key: Any, epochs: Optional[int] = None, steps: Optional[int] = None,
        batch_size: int = 128, lr: Union[float, Schedule] = 1e-3,
        val_data: Any = None, metrics: Metrics = (),
        train_state: Optional[TrainState] = None, checkpoint_path: Any = None,
        checkpoint_every: Optional[int] = None, callbacks: Any = (),
        progress: Union[bool, str] = "auto", shuffle: bool = True, drop_last: bool = False,
        steps_per_epoch: Optional[int] = None, val_batch_size: Optional[int] = None,
        comm: Any = None, keep_freed_memory: bool = False
        ) -> Tuple[TrainState, Dict[str, List[Any]]]:
    """Train ``model`` on ``train_data``; returns ``(train_state, history)``.

    - ``train_data`` is ``(x, y)`` or a data source.  ``x`` is an array ``(n, ...)`` or, for
      a multi-input model (e.g. one built with :func:`~fundl.parallel`), a tuple of arrays
      sharing axis 0 (the model is initialised with the tuple of their per-example shapes;
      dicts are refused, as no fundl model takes one); ``y`` an array ``(n, ...)`` or, for a
      model with several outputs, a tuple of arrays (with a loss over tuples such as
      :func:`fundl.losses.combine`).  Arrays may be ``np.memmap``\\ s: batches are gathered
      from them and their pages handed back as they are read, so memory stays flat.
    - A data source (:mod:`fundl.data.sources`) is a function ``batches(key) -> iterable of
      (x, y)`` called once per epoch with that epoch's key (``fold_in(k_data, epoch)``), a
      ``fl.data`` source (``from_arrays``, ``map_batches`` for keyed augmentation,
      ``interleave`` for several files or memmaps), or a re-iterable of batches (a list).
      An epoch is ``len(source)`` batches, or ``steps_per_epoch`` (needed when the source has
      no length; fewer batches than that is an error).
    - dtypes: float inputs of another dtype than the params (float64 data for the default
      float32 params) are cast to the params' dtype with a warning: arrays in memory once
      per call (a copy), memmaps and sources batch by batch.  Pass data of the params'
      dtype to avoid it, or train in float64 by giving float64 params::

          ts = fl.TrainState.create(key, model, opt, in_shape)
          p64 = fl.tree.cast(ts.params, np.float64)
          ts = ts._replace(params=p64, state=fl.tree.cast(ts.state, np.float64),
                           opt_state=opt.init(p64))
          fl.fit(model, loss, opt, (x64, y), key=key, epochs=5, train_state=ts)
    - Before the first step fit checks its arguments and fails with an error naming the
      argument: ``model``/``loss``/``optimizer`` of the right types, ``epochs``/``steps``/
      ``batch_size``/``checkpoint_every``/``steps_per_epoch`` positive integers, ``lr``,
      ``checkpoint_path`` (not a directory, in an existing writable directory), the
      callbacks (and the logs they monitor), a given ``train_state`` against the model
      (init's params and state for the data's shapes) and the optimizer, and the model,
      loss and metrics on a few examples of ``train_data`` and ``val_data`` (a source's
      first batch).
    - ``key`` initialises the model (``TrainState.create`` with the data's per-example
      shapes, unless ``train_state`` is given to resume) and orders the data: epoch ``e``
      visits ``random.permutation(fold_in(k_data, e), n)`` of the arrays in batches of
      ``batch_size`` (a source gets ``fold_in(k_data, e)``), and the batch of step ``s``
      is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``.  So resuming from
      a checkpoint (``train_state=fundl.io.load(path)``, the same ``key``, data,
      ``batch_size`` and ``checkpoint_path``), even mid-epoch, gives bit-identical results
      to an uninterrupted run.  A source resumed mid-epoch at batch ``b`` is called with
      the epoch's key and its first ``b`` batches are dropped (a ``fl.data`` source skips
      them without making them): a keyed augmentation makes the same batches again.
    - ``epochs`` / ``steps`` (exactly one) are targets for the train state's step counter:
      training stops when ``train_state.step`` reaches ``epochs * steps_per_epoch`` (or
      ``steps``).  Re-running an interrupted call with ``train_state=`` its checkpoint
      finishes the same run; to train ``k`` more epochs, raise ``epochs`` by ``k``.
    - ``lr``: a number or a schedule ``lr(step) -> float``.  The rate of step ``s`` is
      ``lr(s) * scale``, where ``scale`` (1 at the start) is changed only by callbacks
      (``Control(lr_factor=...)``, e.g. :class:`~fundl.fit.ReduceLROnPlateau`) and kept
      with the checkpoint.
    - ``metrics`` (see :func:`evaluate`) are computed on the training batches too, from the
      outputs of the training steps themselves (train mode, as Keras does): ``history``
      gets ``"<name>"`` per metric, the epoch's value with the params changing along it,
      beside ``"val_<name>"`` from ``val_data``.  The progress bar shows their running
      values.
    - ``val_data`` (``(x, y)`` or a source, called with the same key every epoch): after
      each epoch, :func:`evaluate` on it (eval mode, batches of ``val_batch_size``, default
      ``max(batch_size, 256)``) with the training loss and ``metrics``.
    - ``history``: lists, one entry per epoch (a run that ends mid-epoch adds one for the
      partial epoch): ``"epoch"`` (1-based), ``"step"``, ``"loss"`` (the epoch's training
      loss, an exact weighted mean ``sum S / sum W`` over its batches, see
      :class:`fundl.losses.Loss`), ``"<metric>"``, ``"lr"`` (the rate of the epoch's last
      step), ``"val_loss"`` and ``"val_<metric>"``.  A resumed run's history starts at the
      epoch it resumes in; that epoch's sums include the steps before the checkpoint when
      the loop state file is there (see below), else only the steps this call ran.
    - ``callbacks``: a list of :class:`~fundl.fit.Callback` objects (``EarlyStopping``,
      ``ReduceLROnPlateau``, ``CSVLogger``, ``ModelCheckpoint`` or your own) or functions
      ``cb(train_state, logs)`` called after each whole epoch (not after the partial epoch
      where ``steps=`` ends a run: the resumed run finishes it; see
      :mod:`fundl.fit.callbacks`).
      A callback returns ``None``, ``"stop"`` or a ``Control(stop=, lr_factor=)``; anything
      else is a ``TypeError``.  ``on_train_end`` may return the state fit returns
      (``EarlyStopping(restore_best=True)``: the best epoch's).
    - ``checkpoint_path``: the train state is saved (atomically, with :func:`fundl.io.save`)
      every ``checkpoint_every`` steps if given, after every epoch (after its callbacks),
      and at the end; a checkpoint only ever holds a state training reached that is finite
      everywhere.  When the loop has state of its own (callbacks that keep some, a changed
      learning-rate scale), it is saved beside it, in ``ckpt.loop.npz`` for ``ckpt.npz``
      (:mod:`fundl.fit.loop_state`), and a run given ``train_state=fl.io.load(path)`` and
      the same ``checkpoint_path`` takes it back.
    - ``progress``: ``"auto"`` shows a progress bar (steps, epoch, running loss and metrics)
      on stderr when it is a terminal or in a Jupyter notebook, ``True`` always, ``False``
      never (``tqdm.auto`` if installed, else a one-line ``\\r`` display).
    - A non-finite loss, or a step that makes non-finite params, state or optimizer state
      (e.g. an overflow), raises :class:`NonFiniteLossError` with the last finite train
      state (saved to ``checkpoint_path`` when checkpointing is on).
    - ``comm`` (a :class:`fundl.distributed.Comm`, e.g. ``dist.world()``): data-parallel
      training; every rank calls ``fit`` with the same arguments and the whole
      ``train_data`` (tuples of inputs and outputs too).  ``batch_size`` is the global
      batch; each rank trains on its shard of it (``batches(..., shard=(rank, size))``; a
      source's batches are the global ones, each rank takes its slice) with
      :func:`fundl.distributed.make_step` (``optimizer`` must contain
      :func:`~fundl.distributed.mean_gradients`); the initial (or given) train state is rank
      0's, broadcast.  Before the first step the ranks compare their arguments (key, lr
      -- a schedule at 64 steps --, epochs/steps, batch size, optimizer and model
      structure, loss, a sample of the data, the other options) and every rank raises
      the same ``ValueError`` naming each one that differs (:mod:`fundl.fit.ranks`).
      The epoch's training loss and metrics (their sums added over the
      ranks), the validation scores (:func:`evaluate` with ``comm``) and so the callbacks'
      logs are global and identical on every rank; a callback's stop on any rank stops every
      rank.  Only rank 0 shows progress and writes files; every rank returns after the last
      checkpoint is written, so each can resume from the same file.  A non-finite loss is
      global too: every rank raises :class:`NonFiniteLossError` at the same step.
    - ``keep_freed_memory`` (default False): ``True`` calls
      :func:`fundl.perf.keep_freed_memory` before the first step, which stops glibc from
      returning freed blocks to the OS (fewer page faults per step, a resident size near a
      step's peak).  It changes the whole process and cannot be undone, so it is opt-in.
    """
    check_parts("fit", model, loss, optimizer)
    train = Data(train_data, "fit: train_data")
    if (epochs is None) == (steps is None):
        raise ValueError("fit needs exactly one of epochs= or steps=")
    batch_size = check_batch_size(batch_size, "fit")
    if steps_per_epoch is not None:
        steps_per_epoch = check_count(steps_per_epoch, "steps_per_epoch")
    per_epoch = train.count(batch_size, drop_last, steps_per_epoch)
    if per_epoch == 0:
        raise ValueError(f"fit: drop_last with batch_size {batch_size} > {train.n} examples "
                         f"leaves no batch")
    target = (check_count(epochs, "epochs") * per_epoch if epochs is not None
              else check_count(steps, "steps"))
    every = check_count(checkpoint_every, "checkpoint_every") if checkpoint_every is not None \
        else None
    val_batch = max(batch_size, 256) if val_batch_size is None else \
        check_batch_size(val_batch_size, "fit: val_batch_size")
    if checkpoint_path is not None:
        checkpoint_path = check_checkpoint_path(checkpoint_path)
    if not callable(lr):
        try:
            as_lr(lr)
        except (ValueError, TypeError) as err:
            raise rethrow(err, "fit: lr") from None
    val = Data(val_data, "fit: val_data") if val_data is not None else None
    try:
        fns = resolve(metrics)
    except (ValueError, TypeError) as err:
        raise rethrow(err, "fit: metrics") from None
    if "loss" in fns or "lr" in fns:
        raise ValueError("fit: metrics: 'loss' and 'lr' are fit's own logs; name the metric "
                         "otherwise")
    cbs = resolve_callbacks(callbacks)
    if not isinstance(keep_freed_memory, (bool, np.bool_)):
        raise TypeError(f"fit: keep_freed_memory must be True or False, got "
                        f"{keep_freed_memory!r}")

    k_init, k_data = random.split(key)
    k_val = random.fold_in(k_data, -1 % (2 ** 31))  # a val source's key: the same each epoch
    drawn = None if train.arrays else train.first_batch(random.fold_in(k_data, 0))
    in_shape = data_shapes(train.x if drawn is None else drawn[0])
    if train_state is None:
        try:
            ts = TrainState.create(k_init, model, optimizer, in_shape)
        except (ValueError, TypeError) as err:
            shown = describe(train.x) if train.arrays else f"per-example shape {in_shape}"
            raise rethrow(err, f"fit: train_data x ({shown}) does not fit the model") from err
    else:
        check_train_state(train_state, model, optimizer, in_shape)
        ts = train_state
    if callable(lr):
        try:
            as_lr(lr(ts.step))
        except (ValueError, TypeError) as err:
            raise rethrow(err, f"fit: lr (the schedule at step {ts.step})") from None
    warned = [False]
    dtype = float_dtype(ts.params)
    train.set_dtype(dtype, "fit", warned)
    if val is not None:
        val.set_dtype(dtype, "fit", warned)
    probe = probe_train = train.probe(random.fold_in(k_data, 0), drawn)
    sets = [("train_data", probe, train.shown(probe))]
    if val is not None:
        probe = val.probe(k_val)
        sets.append(("val_data", probe, val.shown(probe)))
    lengths = preflight(model, loss, fns, ts, sets)
    val_metrics = {"loss": loss_metric(loss), **fns}

    history: Dict[str, List[Any]] = {"epoch": [], "step": [], "loss": []}
    for name in fns:
        history[name] = []
    history["lr"] = []
    if val is not None:
        for name in val_metrics:
            history[f"val_{name}"] = []
    directions = {name: m.higher_is_better for name, m in fns.items()}
    directions.update({f"val_{name}": m.higher_is_better for name, m in val_metrics.items()})
    directions.update({"loss": False, "val_loss": False})

    shard = None
    if comm is None:
        lead = True
    else:
        from .. import distributed
        comm = distributed.as_comm(comm)
        lead = comm.rank == 0
        mine = ranks.described(
            train=train, val=val, probe=probe_train, loss_name=loss.name,
            batch_size=batch_size, per_epoch=per_epoch, target=target, key=key, lr=lr,
            optimizer=optimizer, ts=ts, given_state=train_state is not None, shuffle=shuffle,
            drop_last=drop_last, checkpointing=checkpoint_path is not None, every=every,
            val_batch=val_batch, metrics=list(fns), callbacks=cbs)
        ranks.agree(comm.gather_all(mine, "fit's argument check"))
        ts = distributed.broadcast(comm, ts)
        shard = (comm.rank, comm.size)
    info = TrainInfo(tuple(history), ts.step, target, per_epoch, directions, lead)
    for cb in cbs:
        cb.on_train_begin(info)

    sums = _EpochSums(loss, fns, lengths)
    observed = sums.observing()
    step_fn = make_step(model, observed, optimizer) if comm is None else \
        distributed.make_step(model, observed, optimizer, comm)
    scale = 1.0
    stateful = [cb for cb in cbs if cb.has_state]
    loop = LoopFile(checkpoint_path) if checkpoint_path is not None else None
    if loop is not None and ts.step > 0:
        record = loop.find(ts)
        if record is not None:
            scale = float(record["lr_scale"])
            if ts.step % per_epoch and len(record["sums"]) == len(sums.sums):
                sums.sums = np.array(record["sums"], np.float64)
            kinds = [type(cb).__name__ for cb in stateful]
            if list(record["kinds"]) == kinds:
                for cb, state in zip(stateful, record["states"]):
                    cb.set_state(state)
            elif record["kinds"]:
                warnings.warn(f"fit: the loop state at {loop.path} was written with the "
                              f"callbacks {list(record['kinds'])}, this run has {kinds}: they "
                              "start afresh", stacklevel=2)
    keep_loop = loop is not None and (bool(stateful) or scale != 1.0 or loop.exists())

    if ts.step >= target:
        warnings.warn(f"fit: the train state is already at step {ts.step} >= the target "
                      f"{target}; nothing to do (epochs/steps count from step 0)", stacklevel=2)
        return ts, history

    if keep_freed_memory:
        from .. import perf
        perf.keep_freed_memory()
    per_batch = [(i, cb) for i, cb in enumerate(cbs) if cb.per_batch]
    saved = [-1]  # the step last written, so that one step is not saved twice
    # The last train state known to be finite everywhere.  Checking every leaf after every
    # step cost 15% of an MLP-512 step (0.19 ms of 1.30 with sgd, 0.5 of 3.1 with adam),
    # so the state is checked where it matters: before a checkpoint is written, at the end
    # of each epoch, and when a loss is not finite (a non-finite state makes the next
    # step's loss non-finite).
    good = [ts]
    last_value = float("nan")

    def non_finite_where(state: TrainState) -> Optional[str]:
        """Where ``state`` is not finite (on this rank, or another rank's), or None."""
        where = non_finite_path(state)
        if comm is not None and comm.any(where is not None, "fit's finite-state check") \
                and where is None:
            where = "the train state of another rank"
        return where

    def verified(state: TrainState, value: float) -> None:
        """Raise unless ``state`` is finite (on every rank); else remember it as good."""
        where = non_finite_where(state)
        if where is not None:
            raise NonFiniteLossError(good[0].step, value, good[0], history, where)
        good[0] = state

    def checkpoint(state: TrainState, loop_sums: Optional[np.ndarray]) -> None:
        nonlocal keep_loop
        if loop is None or saved[0] == state.step:   # loop: None without a checkpoint_path
            return
        if state is not good[0]:  # a checkpoint only ever holds a finite state
            verified(state, float("nan"))
        keep_loop = keep_loop or scale != 1.0
        if lead:
            if keep_loop and loop_sums is not None:
                loop.write(state, {"lr_scale": scale, "sums": loop_sums,
                                   "kinds": [type(cb).__name__ for cb in stateful],
                                   "states": [cb.get_state() for cb in stateful]})
            from .. import io
            io.save(checkpoint_path, state)
        saved[0] = state.step

    def rate_at(step: int) -> Any:
        base = lr(step) if callable(lr) else lr
        return base if scale == 1.0 else as_lr(base) * scale

    def control(value: Any, i: int, cb: Callback, hook: str) -> bool:
        nonlocal scale
        c = decision(value, i, cb, hook)
        if c.lr_factor is not None:
            scale *= c.lr_factor
        return c.stop

    bar = Progress(progress if lead else False, target, ts.step)
    stop = False
    try:
        while ts.step < target and not stop:
            epoch, first = divmod(ts.step, per_epoch)
            if first == 0:
                sums.reset()
            rate = float("nan")
            for batch in train.epoch(random.fold_in(k_data, epoch), first, batch_size,
                                     per_epoch, shuffle, shard):
                if ts.step >= target:
                    break
                before = sums.sums
                rate = rate_at(ts.step)
                new_ts, out = step_fn(ts, batch, rate)
                value = out["loss"]
                if not math.isfinite(value):  # the loss is the same on every rank
                    sums.sums = before
                    where = non_finite_where(ts)
                    if where is None:
                        good[0] = ts
                    checkpoint(good[0], sums.sums if good[0] is ts else None)
                    if comm is not None:
                        comm.barrier("fit's checkpoint barrier")  # on disk before any rank goes on
                    if where is None:
                        raise NonFiniteLossError(ts.step, value, ts, history, "loss")
                    # ts came from a step with a finite loss and non-finite results
                    raise NonFiniteLossError(ts.step - 1, last_value, good[0], history, where)
                ts, last_value = new_ts, value
                if bar.on:
                    bar.update(ts.step, epoch + 1, lambda: sums.logs(sums.sums))
                if per_batch:
                    batch_logs = {"epoch": epoch + 1, "step": ts.step, "loss": value, "lr": rate}
                    halt = False
                    for i, cb in per_batch:
                        halt = control(cb.on_batch_end(ts, batch_logs), i, cb,
                                       "on_batch_end") or halt
                    if comm is not None:
                        halt = comm.any(halt, "fit's per-batch callbacks' stop flag")
                    if halt:
                        stop = True
                        break
                if every is not None and ts.step % every == 0:
                    checkpoint(ts, sums.sums)
            total = sums.sums if comm is None else comm.sum(sums.sums, "fit's epoch sums")
            logs: Dict[str, Any] = {"epoch": epoch + 1, "step": ts.step, **sums.logs(total),
                                    "lr": float(rate)}
            if val is not None:
                scores = run_evaluate(model, ts.params, ts.state, val, val_metrics, val_batch,
                                      comm, k_val)
                logs.update({f"val_{k}": v for k, v in scores.items()})
            verified(ts, logs["loss"])
            for k in history:
                history[k].append(logs[k])
            ended_epoch = ts.step % per_epoch == 0
            if ended_epoch:  # callbacks see whole epochs: a partial one is finished on resume
                for i, cb in enumerate(cbs):
                    if control(cb.on_epoch_end(ts, dict(logs)), i, cb, "on_epoch_end"):
                        stop = True
            if comm is not None:
                stop = comm.any(stop, "fit's stop flag")
            checkpoint(ts, np.zeros_like(sums.sums) if ended_epoch else sums.sums)
    finally:
        bar.close()
    if comm is not None:
        comm.barrier("fit's last barrier")  # rank 0's last checkpoint is on disk before any
        # rank returns
    for i, cb in enumerate(cbs):
        end = cb.on_train_end(ts)
        if end is not None:
            if not isinstance(end, TrainState):
                raise TypeError(f"fit: callbacks[{i}] ({type(cb).__name__}).on_train_end "
                                f"returned {type(end).__name__}; it returns None or the "
                                "TrainState fit should return")
            ts = end
    return ts, history
