"""The data-parallel training step: :func:`fundl.make_step` with the ranks' hook."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
from mpi4py import MPI

from .. import random, tree
from ..core import Layer
from ..losses import Loss
from ..optim.base import Optimizer
from ..step import Schedule, TrainState, check_parts
from ..step import make_step as _make_step
from . import guard
from .buckets import Fusion
from .comm import as_comm, fingerprint

__all__ = ["make_step", "DataParallel"]


def make_step(model: Layer, loss: Loss, optimizer: Optimizer, comm: Any, *,
              average_state: bool = True, train: bool = True
              ) -> Callable[[TrainState, Tuple[Any, Any], Union[float, Schedule]],
                            Tuple[TrainState, Dict[str, Any]]]:
    """The pure data-parallel step ``step(train_state, (x, y), lr) -> (train_state, metrics)``.

    :func:`fundl.make_step` with the hook :class:`DataParallel`.  Every rank calls
    it with the same train state and its own part ``(x, y)`` of the global batch
    (``fundl.data.batches(..., shard=(comm.rank, comm.size))``; a rank may have 0
    examples).  The loss is a weighted mean ``S / W`` (:attr:`fundl.losses.Loss.total_weight`:
    examples, or counted labels weighted by class), so each rank:

    1. runs the forward on its part with the step key folded with its rank
       (``fold_in(key, rank)``: dropout masks differ across ranks and are the
       same for the same key, rank and size), and the loss: ``value_r``, ``W_r``;
    2. sums ``value_r * W_r`` and ``W_r`` over the ranks (one small ``Allreduce``,
       which also carries the ranks' step numbers, see :class:`DataParallel`):
       ``metrics["loss"]`` is the global batch's loss ``sum S_r / sum W_r`` -- the
       loss one process computes on the global batch, for every loss -- and
       ``metrics["examples"]`` the global batch's size.  A combined loss
       (:func:`fundl.losses.combine`) is reduced part by part: ``sum_i w_i S_i / W_i``;
    3. scales its output gradient by ``size * W_r / W`` (each part's by its own) and
       pulls back, so that the mean over ranks of the parameter gradients, which
       ``optimizer`` computes with :func:`~fundl.distributed.mean_gradients`, is the
       global loss's gradient;
    4. with ``average_state``, replaces the new ``state`` (BatchNorm running
       statistics) by its mean over ranks weighted by their examples ``n_r / N``
       (a rank without examples keeps its old state, with weight 0), so it stays
       identical on every rank;
    5. updates with the optimizer.

    When a train state reaches the step that it did not return itself (the first
    step, a resumed one), the ranks check that they hold the same train state,
    learning rate and loss, and after that step's update that their params are still
    the same -- which fails when ``optimizer`` does not average the gradients
    (``fl.optim.chain(dist.mean_gradients(comm), opt)``).  Ranks at different steps
    raise a ``ValueError`` at once (the step numbers in the loss reduction).
    One case is not exact: with label smoothing, a rank whose counted labels all
    have class weight 0 has ``W_r = 0`` but a smoothing term ``S_r != 0``, which the
    loss reports as 0 (the loss protocol carries ``S / W``).
    """
    check_parts("distributed.make_step", model, loss, optimizer)
    return _make_step(model, loss, optimizer, train=train,
                      hook=DataParallel(as_comm(comm), average_state, loss))


#: the step numbers that ride in the loss reduction are taken modulo this, so that their
#: squares summed over thousands of ranks stay exact integers in float64
_STEP_MODULUS = 1 << 20


class DataParallel:
    """The hook of :func:`make_step` (:class:`fundl.step.StepHook`) for the ranks of ``comm``.

    Besides the weighted loss, the loss reduction carries the step number ``k`` of every
    rank as ``k`` and ``k**2`` (two more float64 numbers in the one ``Allreduce`` a step
    already makes): the sums equal ``size * k`` and ``size * k**2`` only when every rank
    is at step ``k``, so ranks that have drifted apart (one skipped a step, another reuses
    an old train state) are told at once, on every rank, with each rank's step.
    """

    def __init__(self, comm: Any, average_state: bool = True, loss: Optional[Loss] = None
                 ) -> None:
        self.comm = comm
        # compared across the ranks with the train state: the loss reductions must match
        self.loss_id = None if loss is None else (loss.name, len(loss.parts or ()))
        self.average_state = average_state
        self.state_sum = Fusion(comm, name="the state average")
        self.next_step = 0         # the train state's step at the next call (set by agree)
        self.current = 0

    def forward_key(self, key: Any) -> Any:
        # The first hook call of every step (agree comes before it on a fresh train state).
        self.current, self.next_step = self.next_step, self.next_step + 1
        watchdog = guard.active()
        if watchdog is not None and self.comm.world:
            watchdog.started_step(self.current)
        return None if key is None else random.fold_in(key, self.comm.rank)

    def loss(self, loss: Loss, out: Any, y: Any) -> Tuple[float, Any, float, Dict[str, Any]]:
        n = _rows(out)
        parts = loss.parts   # a combination: each part is its own ratio
        if n:
            local, dout = loss.value_and_grad(out, y)   # this rank's loss
            if parts is None:
                weight = loss.weight_of(out, y)
                sums = [float(local) * weight if weight else 0.0, weight]
            else:
                sums = []
                for i, part, _ in parts:
                    w_i = part.weight_of(out[i], y[i])
                    sums += [float(part.value(out[i], y[i])) * w_i if w_i else 0.0, w_i]
        else:
            dout = tree.map(np.zeros_like, out)
            sums = [0.0, 0.0] * (1 if parts is None else len(parts))
        k = float(self.current % _STEP_MODULUS)
        mine = [n, k, k * k] + sums
        buf = np.array(mine, np.float64)
        if self.comm.size > 1:
            guard.collective(self.comm, f"the loss reduction of train step {self.current}",
                             self.comm.mpi.Allreduce, MPI.IN_PLACE, buf, MPI.SUM)
            if buf[1] != self.comm.size * k or buf[2] != self.comm.size * k * k:
                self._different_steps()
        examples = float(buf[0])
        if examples == 0:
            raise ValueError("distributed.make_step: the global batch is empty on every rank")
        size = self.comm.size
        if parts is None:
            total, total_weight = float(buf[3]), float(buf[4])
            scale = size * mine[4] / total_weight if total_weight else 0.0
            if n and scale != 1.0:
                dout = tree.map(lambda g: np.multiply(g, scale), dout)  # a float keeps float32
            value = total / total_weight if total_weight else 0.0  # nothing counted: no loss
        else:   # sum_i w_i S_i / W_i, and part i's gradient scaled by size * W_ir / W_i
            value, grads = 0.0, list(dout)
            for j, (i, _, w_i) in enumerate(parts):
                total, total_weight = float(buf[3 + 2 * j]), float(buf[4 + 2 * j])
                if total_weight:
                    value += w_i * total / total_weight
                scale = size * mine[4 + 2 * j] / total_weight if total_weight else 0.0
                if n and scale != 1.0:
                    grads[i] = tree.map(lambda g, s=scale: np.multiply(g, s), grads[i])
            dout = type(dout)(grads) if isinstance(dout, tuple) else grads
        return value, dout, n / examples, {"examples": int(examples)}

    def state(self, new_state: Any, old_state: Any, share: float) -> Any:
        if share == 0.0:
            new_state = old_state
        if self.average_state and self.comm.size > 1:
            return self.state_sum.sum(new_state, weight=share)
        return new_state

    def _different_steps(self) -> None:
        """The sums showed ranks at different steps: every rank that sees it raises, without
        another collective (a rank that is not in the step at all may never join one)."""
        raise ValueError(f"distributed.make_step: the ranks are not at the same step: rank "
                         f"{self.comm.rank} is at train step {self.current}, and the step numbers "
                         f"summed in the loss reduction show that another rank is not (it is at "
                         f"another step, or in another collective of the same size); every rank "
                         f"must call the step with the same train state, once per global batch "
                         f"(the same number of batches on every rank)")

    def agree(self, ts: TrainState, lr: float) -> None:
        self.next_step = int(ts.step)
        mine = {"step": int(ts.step), "lr": repr(lr), "loss": self.loss_id,
                "key": fingerprint(ts.key), "params": fingerprint(ts.params),
                "state": fingerprint(ts.state), "opt_state": fingerprint(ts.opt_state)}
        every = self.comm.gather_all(mine, "the train-state check")
        wrong = [name for name in mine if any(d[name] != every[0][name] for d in every)]
        if wrong:
            shown = "; ".join(
                f"{name}: " + ", ".join(f"rank {r}: {d[name]}" for r, d in enumerate(every))
                if name in ("step", "lr", "loss") else f"{name} differs"
                for name in wrong)
            raise ValueError(
                f"distributed.make_step: the ranks hold different train states, learning "
                f"rates or losses at step {ts.step} ({shown}); start every rank from rank 0's "
                f"train state (dist.broadcast(comm, train_state)) and give every rank the same "
                f"lr, key and loss")

    def updated(self, ts: TrainState) -> None:
        every = self.comm.gather_all(fingerprint(ts.params), "the params check")
        if len(set(every)) > 1:
            raise ValueError(
                "distributed.make_step: after one step the ranks' params differ: the optimizer "
                "does not average the gradients across ranks; use "
                "fl.optim.chain(dist.mean_gradients(comm), <optimizer>)")


def _rows(x: Any) -> int:
    """The number of examples in ``x`` (an array, or a tuple of arrays sharing axis 0)."""
    while isinstance(x, (tuple, list)):
        if not x:
            raise ValueError("distributed.make_step: an empty tuple")
        x = x[0]
    return int(np.shape(x)[0])
