"""The data-parallel training step: :func:`fundl.make_step` with the ranks' hook."""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from typing import Any, Callable, Dict, Tuple, Union

import numpy as np

from .. import random, tree
from ..core import Layer
from ..losses import Loss
from ..optim.base import Optimizer
from ..step import Schedule, TrainState, check_parts
from ..step import make_step as _make_step
from .buckets import Fusion
from .comm import as_comm

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
    2. sums ``value_r * W_r`` and ``W_r`` over the ranks (one small ``Allreduce``):
       ``metrics["loss"]`` is the global batch's loss ``sum S_r / sum W_r`` -- the
       loss one process computes on the global batch, for every loss -- and
       ``metrics["examples"]`` the global batch's size;
    3. scales its output gradient by ``size * W_r / W`` and pulls back, so that the
       mean over ranks of the parameter gradients, which ``optimizer`` computes
       with :func:`~fundl.distributed.mean_gradients`, is the global loss's gradient;
    4. with ``average_state``, replaces the new ``state`` (BatchNorm running
       statistics) by its mean over ranks weighted by their examples ``n_r / N``
       (a rank without examples keeps its old state, with weight 0), so it stays
       identical on every rank;
    5. updates with the optimizer.

    When a train state reaches the step that it did not return itself (the first
    step, a resumed one), the ranks check that they hold the same train state and
    learning rate, and after that step's update that their params are still the
    same -- which fails when ``optimizer`` does not average the gradients
    (``fl.optim.chain(dist.mean_gradients(comm), opt)``).
    """
    check_parts("distributed.make_step", model, loss, optimizer)
    return _make_step(model, loss, optimizer, train=train,
                      hook=DataParallel(as_comm(comm), average_state))


class DataParallel:
    """The hook of :func:`make_step` (:class:`fundl.step.StepHook`) for the ranks of ``comm``."""

    def __init__(self, comm: Any, average_state: bool = True) -> None:
        self.comm = comm
        self.average_state = average_state
        self.state_sum = Fusion(comm)

    def forward_key(self, key: Any) -> Any:
        return None if key is None else random.fold_in(key, self.comm.rank)

    def loss(self, loss: Loss, out: Any, y: Any) -> Tuple[float, Any, float, Dict[str, Any]]:
        n = _rows(out)
        if n:
            value, dout = loss.value_and_grad(out, y)
            weight = loss.weight_of(out, y)
            local = float(value) * weight if weight else 0.0
        else:
            dout, weight, local = tree.map(np.zeros_like, out), 0.0, 0.0
        total, total_weight, examples = (float(v) for v in self.comm.sum([local, weight, n]))
        if examples == 0:
            raise ValueError("distributed.make_step: the global batch is empty on every rank")
        scale = self.comm.size * weight / total_weight if total_weight else 0.0
        if n and scale != 1.0:
            dout = tree.map(lambda g: np.multiply(g, scale), dout)  # a float keeps float32
        value = total / total_weight if total_weight else 0.0  # nothing counted: no loss
        return value, dout, n / examples, {"examples": int(examples)}

    def state(self, new_state: Any, old_state: Any, share: float) -> Any:
        if share == 0.0:
            new_state = old_state
        if self.average_state and self.comm.size > 1:
            return self.state_sum.sum(new_state, weight=share)
        return new_state

    def agree(self, ts: TrainState, lr: float) -> None:
        mine = _fingerprint(ts.key, ts.step, lr, ts.params, ts.state, ts.opt_state)
        every = self.comm.gather_all(mine)
        if len(set(every)) > 1:
            raise ValueError(
                f"distributed.make_step: the ranks hold different train states or learning "
                f"rates at step {ts.step} (rank {self.comm.rank} of {self.comm.size}); start "
                f"every rank from rank 0's (dist.broadcast(comm, train_state)) and give every "
                f"rank the same lr and key")

    def updated(self, ts: TrainState) -> None:
        every = self.comm.gather_all(_fingerprint(ts.params))
        if len(set(every)) > 1:
            raise ValueError(
                "distributed.make_step: after one step the ranks' params differ: the optimizer "
                "does not average the gradients across ranks; use "
                "fl.optim.chain(dist.mean_gradients(comm), <optimizer>)")


def _fingerprint(*trees: Any) -> str:
    """A digest of ``trees`` (structure, dtypes, shapes and bytes of every leaf)."""
    digest = hashlib.sha256()
    for t in trees:
        leaves, treedef = tree.flatten(t)
        digest.update(repr(treedef).encode())
        for leaf in leaves:
            a = np.asarray(leaf)
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(np.ascontiguousarray(a).tobytes() if a.dtype.kind != "O"
                          else repr(a).encode())
    return digest.hexdigest()


def _rows(x: Any) -> int:
    """The number of examples in ``x`` (an array, or a tuple of arrays sharing axis 0)."""
    while isinstance(x, (tuple, list)):
        if not x:
            raise ValueError("distributed.make_step: an empty tuple")
        x = x[0]
    return int(np.shape(x)[0])


def quiet(empty: bool) -> contextlib.ExitStack:
    """Silence numpy's warnings about means of an empty batch (a rank with 0 examples)."""
    stack = contextlib.ExitStack()
    if empty:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", RuntimeWarning)
        stack.enter_context(np.errstate(all="ignore"))
    return stack
