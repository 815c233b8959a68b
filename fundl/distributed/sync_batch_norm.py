"""``sync_batch_norm``: batch normalisation with statistics over the global batch of all ranks.

With ``M = sum over ranks of m_r`` values per channel, the training forward uses
the global mean and biased variance.  They come from one ``Allgather`` of each
rank's ``(m_r, mean_r, M2_r)`` (``M2`` = sum of squared deviations from the
local mean), combined in float64 in rank order (Chan et al.'s pairwise
update), so every rank computes bit-identical statistics:

    mean = sum m_r mean_r / M,   M2 = sum (M2_r + m_r (mean_r - mean)^2),   var = M2 / M

The VJP is the one of the global function ``x_all -> y_all``: with
``g = dy`` the input gradient on each rank is

    dx = scale / sqrt(var + eps) * (g - sum(g) / M - xhat * sum(g * xhat) / M)

with both sums over the global batch (one ``Allreduce`` of ``2 C`` numbers in
the pullback), and the parameter gradients are this rank's contributions
``sum(dy * xhat)`` and ``sum(dy)`` over its own examples: summed (or, in
:func:`~fundl.distributed.make_step`, averaged) over ranks by
:func:`~fundl.distributed.mean_gradients` they are the global ones.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
from mpi4py import MPI

from ..checks import LayerError
from ..core import Layer, Traits, builder
from ..layers.norm import _channel_dot, _check_batch_norm_input, _scale_shift, batch_norm
from .comm import as_comm
from .guard import collective

__all__ = ["sync_batch_norm"]


@builder
def sync_batch_norm(comm: Any, axis: int = -1, momentum: float = 0.99, eps: float = 1e-5,
                    use_scale: bool = True, use_bias: bool = True, dtype: Any = np.float32,
                    name: str = "batch_norm") -> Layer:
    """:func:`fundl.batch_norm` whose training statistics are over the global batch of ``comm``.

    Same arguments, shapes, params (``scale``, ``bias``: ``(C,)``), state (running
    ``mean``, ``var``: ``(C,)``) and default name (so its key in a model,
    ``batch_norm_0``) as :func:`fundl.batch_norm`, so checkpoints are
    interchangeable; on one rank it computes the same values.
    Training (``vjp``, ``apply(train=True)``) normalises with the mean and
    biased variance over every rank's batch (each rank must call it, in the
    same order, also with an empty batch); the running ``var`` is updated with
    the unbiased global variance ``var * M / (M - 1)``, as in PyTorch's
    ``SyncBatchNorm``.  Eval mode (``apply``/``vjp`` with ``train=False``) uses the
    running statistics and communicates nothing.  The state is the same on every rank.
    """
    comm = as_comm(comm)
    local = batch_norm(axis, momentum, eps, use_scale, use_bias, dtype, name)  # init and eval
    axis, momentum, eps = int(axis), float(momentum), float(eps)

    def check(params, state, x) -> Tuple[int, Tuple[int, ...], Tuple[int, ...]]:
        return _check_batch_norm_input(axis, params, state, x)

    def moments(x, ax, red, bshape):
        """``(mean, var, M)``: global mean and biased variance (x's dtype, kept dims) and count."""
        c = x.shape[ax]
        m = x.size // c
        mine = np.zeros(1 + 2 * c, np.float64)
        if m:
            mean = x.mean(axis=red, keepdims=True)
            dev = x - mean
            mine[0] = m
            mine[1:1 + c] = mean.reshape(-1)
            mine[1 + c:] = _channel_dot(dev, dev, ax, red).reshape(-1)
        every = np.empty((comm.size, 1 + 2 * c), np.float64)
        collective(comm, "sync_batch_norm's statistics", comm.mpi.Allgather, mine, every)
        counts, means, m2s = every[:, 0], every[:, 1:1 + c], every[:, 1 + c:]
        total = float(counts.sum())
        if total == 0:
            raise LayerError("the global batch is empty on every rank")
        g_mean = (counts[:, None] * means).sum(axis=0) / total
        g_m2 = m2s.sum(axis=0) + (counts[:, None] * np.square(means - g_mean)).sum(axis=0)
        return (g_mean.astype(x.dtype).reshape(bshape),
                (g_m2 / total).astype(x.dtype).reshape(bshape), int(total))

    def normalise(params, x, ax, red, bshape):
        mean, var, total = moments(x, ax, red, bshape)
        inv = var + eps
        np.sqrt(inv, out=inv)
        np.divide(1.0, inv, out=inv)
        xhat = x - mean
        xhat *= inv
        return _scale_shift(xhat, params, bshape), xhat, inv, mean, var, total

    def apply(params, state, x, *, key=None, train=False):
        if not train:
            return local.apply_fn(params, state, x, train=False)
        ax, red, bshape = check(params, state, x)
        return normalise(params, x, ax, red, bshape)[0]

    def vjp(params, state, x, *, key=None, train=True):
        if not train:  # the running statistics: nothing to communicate
            return local.vjp_fn(params, state, x, train=False)
        ax, red, bshape = check(params, state, x)
        y, xhat, inv, mean, var, total = normalise(params, x, ax, red, bshape)
        unbiased = var.reshape(-1) * (total / (total - 1) if total > 1 else 1.0)
        new_state = {
            "mean": state["mean"] * momentum + mean.reshape(-1) * (1.0 - momentum),
            "var": state["var"] * momentum + unbiased * (1.0 - momentum),
        }
        c = x.shape[ax]

        def pullback(dy):
            dbias = dy.sum(axis=red)
            dscale = _channel_dot(dy, xhat, ax, red).reshape(-1)
            sums = np.concatenate([dbias, dscale]).astype(np.float64)
            if comm.size > 1:
                collective(comm, "sync_batch_norm's pullback", comm.mpi.Allreduce,
                           MPI.IN_PLACE, sums, MPI.SUM)
            g_bias = sums[:c].astype(dy.dtype).reshape(bshape)
            g_scale = sums[c:].astype(dy.dtype).reshape(bshape)
            # dx = scale * inv * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M), global sums
            dx = xhat * (g_scale * (-1.0 / total))
            dx += dy
            dx -= g_bias * (1.0 / total)
            dx *= inv * params["scale"].reshape(bshape) if use_scale else inv
            grads = {}
            if use_scale:
                grads["scale"] = dscale
            if use_bias:
                grads["bias"] = dbias
            return grads, dx

        return y, new_state, pullback

    return Layer(local.init_fn, apply, vjp, name, traits=Traits(uses_key=False))
