"""``mean_gradients``: the gradient transform that averages gradients across ranks."""

from __future__ import annotations

from typing import Any

from ..optim.base import GradientTransform
from .comm import as_comm
from .buckets import DEFAULT_BUCKET_BYTES, Fusion

__all__ = ["mean_gradients"]


def mean_gradients(comm: Any, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> GradientTransform:
    """The mean over the ranks of ``comm`` of each rank's gradients (state ``{}``).

    Put it first in a chain, before anything that looks at the gradients:
    ``fl.optim.chain(dist.mean_gradients(comm), fl.optim.adam())``, so every
    rank clips, decays and updates with the same averaged gradients and the
    params stay bit-identical across ranks.  The leaves are packed into flat
    buffers of up to ``bucket_bytes`` per dtype and summed with one
    ``Allreduce`` per bucket (:class:`Fusion`), each leaf scaled by ``1 / size``
    while it is packed.  At the first call, and when the gradients' structure
    changes, the ranks compare it (a 16-byte digest of the paths, shapes, dtypes
    and ``bucket_bytes``): ranks whose gradients differ get a ``ValueError`` naming
    the first leaf that differs, not mismatched ``Allreduce`` calls.
    The outputs are views of those buffers (read them, do not write them);
    the gradients passed in are not written.  With one rank, the gradients
    pass unchanged.

    This is the plain mean of the ranks' gradients, right when every rank's
    batch has the same number of examples.  :func:`fundl.distributed.make_step`
    scales each rank's gradient by ``size * n_rank / n_global`` first, so
    that the mean is the gradient of the global batch's mean loss even for an
    uneven last batch (the Horovod / PyTorch DDP convention).
    """
    comm = as_comm(comm)
    fusion = Fusion(comm, bucket_bytes, "mean_gradients")
    scale = 1.0 / comm.size

    def init(params):
        return {}

    def update(params, grads, state):
        if comm.size == 1:
            return grads, state
        return fusion.sum(grads, weight=scale), state

    return GradientTransform(init, update, "mean_gradients")
