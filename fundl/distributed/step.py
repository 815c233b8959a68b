"""The data-parallel training step: the global batch's loss and gradient from every rank's part."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Dict, Tuple, Union

import numpy as np

from .. import fusion, random, tree
from ..core import Layer
from ..losses import Loss
from ..optim.base import Optimizer, as_lr
from ..step import Schedule, TrainState, check_parts
from .comm import as_comm
from .buckets import Fusion

__all__ = ["make_step"]


def make_step(model: Layer, loss: Loss, optimizer: Optimizer, comm: Any, *,
              average_state: bool = True, check_optimizer: bool = True
              ) -> Callable[[TrainState, Tuple[Any, Any], Union[float, Schedule]],
                            Tuple[TrainState, Dict[str, Any]]]:
    """The pure data-parallel step ``step(train_state, (x, y), lr) -> (train_state, metrics)``.

    Every rank calls it with the same train state and its own part ``(x, y)``
    of the global batch (``fundl.data.batches(..., shard=(comm.rank, comm.size))``):
    ``n_r`` examples on rank ``r`` (0 is allowed), ``N = sum n_r`` in all.  Each rank:

    1. runs ``model.vjp`` on its part with the step key folded with its rank
       (``fold_in(key, rank)``: dropout masks differ across ranks and are the
       same for the same key, rank and size), and the loss;
    2. sums ``n_r * loss_r`` and ``n_r`` over the ranks (one small ``Allreduce``):
       ``metrics["loss"]`` is the global batch's mean loss ``sum n_r loss_r / N``
       (the same Python float on every rank) and ``metrics["examples"]`` is ``N``;
    3. scales its output gradient by ``w_r = size * n_r / N`` (1 when the parts are
       even) and pulls back, so that the mean over ranks of the parameter
       gradients, which ``optimizer`` must compute with
       :func:`~fundl.distributed.mean_gradients`, is ``sum n_r grad_r / N``:
       exactly the gradient of the global batch's mean loss;
    4. with ``average_state``, replaces the new ``state`` (BatchNorm running
       statistics) by its mean over ranks weighted by ``n_r / N`` (a rank with no
       examples contributes its old state with weight 0), so it stays
       identical on every rank;
    5. updates with ``optimizer.update``.

    A rank with 0 examples still runs the model (on an empty batch, so that
    layers with collectives such as :func:`~fundl.distributed.sync_batch_norm`
    meet their peers) and contributes zero gradients.  The key and step
    counter advance identically on every rank; the train state passed in is
    not written.  With ``check_optimizer`` (the default) and ``comm.size > 1``,
    ``optimizer``'s name must show ``mean_gradients`` (as
    ``chain(mean_gradients(comm), ...)`` and ``accumulate(chain(...), k)`` do),
    else ``ValueError``: without it the ranks would drift apart silently.
    Pass ``check_optimizer=False`` for an optimizer that averages gradients
    across ranks under another name.
    """
    check_parts("distributed.make_step", model, loss, optimizer)
    comm = as_comm(comm)
    if check_optimizer and comm.size > 1 and "mean_gradients" not in optimizer.name:
        raise ValueError(f"distributed.make_step: the optimizer {optimizer.name!r} does not "
                         "average gradients across ranks; use "
                         "fl.optim.chain(dist.mean_gradients(comm), <optimizer>)")
    state_sum = Fusion(comm)
    forward = fusion.runner(model)

    def step(ts: TrainState, batch: Tuple[Any, Any], lr: Union[float, Schedule]):
        x, y = batch
        n = _rows(x)
        key, sub = random.split(ts.key)
        sub = random.fold_in(sub, comm.rank)
        with _quiet(n == 0):
            out, new_state, pullback = forward(ts.params, ts.state, x, sub, need_dx=False)
        if n:
            value, dout = loss.value_and_grad(out, y)
            local = float(value) * n
        else:
            dout = np.zeros_like(out)
            new_state, local = ts.state, 0.0
        total, count = (float(v) for v in comm.sum([local, n]))
        if count == 0:
            raise ValueError("distributed.make_step: the global batch is empty on every rank")
        weight = comm.size * n / count
        if n and weight != 1.0:
            dout = np.multiply(dout, weight)         # a Python float keeps float32 float32
        with _quiet(n == 0):
            grads, _ = pullback(dout)
        if not n:
            grads = tree.zeros_like(ts.params)
        if average_state and comm.size > 1:
            new_state = state_sum.sum(new_state, weight=n / count)
        rate = as_lr(lr(ts.step) if callable(lr) else lr)
        params, opt_state = optimizer.update(ts.params, grads, ts.opt_state, rate)
        metrics = {"loss": total / count, "examples": int(count)}
        return TrainState(params, new_state, opt_state, key, ts.step + 1), metrics

    return step


def _rows(x: Any) -> int:
    """The number of examples in ``x`` (an array, or a tuple of arrays sharing axis 0)."""
    while isinstance(x, (tuple, list)):
        if not x:
            raise ValueError("distributed.make_step: x is an empty tuple")
        x = x[0]
    return int(np.shape(x)[0])


def _quiet(empty: bool) -> contextlib.ExitStack:
    """Silence numpy's warnings about means of an empty batch (a rank with 0 examples)."""
    stack = contextlib.ExitStack()
    if empty:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", RuntimeWarning)
        stack.enter_context(np.errstate(all="ignore"))
    return stack
