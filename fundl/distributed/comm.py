"""The communicator, the abort-on-error guard, and broadcasting a pytree from one rank."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import traceback
from typing import Any, Iterator, List, Optional

import numpy as np
from mpi4py import MPI

from .. import tree as _tree
from . import guard as _guard
from .guard import collective

__all__ = ["Comm", "world", "as_comm", "abort_on_error", "install_abort_hook", "broadcast",
           "in_sync"]


class Comm:
    """A thin wrapper of an mpi4py intracommunicator: ``rank``, ``size`` and ``mpi``.

    ``mpi`` is the mpi4py communicator itself (for anything not wrapped here).
    The few collectives fundl needs on small values are methods; every rank of
    the communicator must call them in the same order.
    """

    __slots__ = ("mpi", "rank", "size", "world")

    def __init__(self, mpi_comm: Any):
        if not isinstance(mpi_comm, MPI.Intracomm):
            raise TypeError(f"Comm needs an mpi4py Intracomm (e.g. MPI.COMM_WORLD), "
                            f"got {type(mpi_comm).__name__}")
        self.mpi = mpi_comm
        self.rank = int(mpi_comm.Get_rank())
        self.size = int(mpi_comm.Get_size())
        # COMM_WORLD itself: its collectives are numbered for the watchdog (fundl.distributed.guard)
        self.world = MPI.Comm.Compare(mpi_comm, MPI.COMM_WORLD) == MPI.IDENT

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, size={self.size})"

    def sum(self, values: Any, what: str = "a sum over ranks") -> np.ndarray:
        """The elementwise sum over ranks of ``values`` (a fresh float64 array, same shape).

        ``what`` names the collective in the messages of the watchdog (:func:`world`), as
        for the other methods."""
        send = np.array(values, dtype=np.float64)  # our own copy: never the caller's
        if self.size > 1:
            collective(self, what, self.mpi.Allreduce, MPI.IN_PLACE, send, MPI.SUM)
        return send

    def any(self, flag: bool, what: str = "an any-rank flag") -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        return bool(self.sum([1.0 if flag else 0.0], what)[0] > 0)

    def gather_all(self, value: Any, what: str = "a gather over ranks") -> List[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        return collective(self, what, self.mpi.allgather, value) if self.size > 1 else [value]

    def barrier(self, what: str = "a barrier") -> None:
        """Wait until every rank has called ``barrier``."""
        if self.size > 1:
            collective(self, what, self.mpi.Barrier)


def as_comm(comm: Any) -> Comm:
    """``comm`` as a :class:`Comm` (a :class:`Comm` is returned as it is; an mpi4py
    intracommunicator is wrapped)."""
    return comm if isinstance(comm, Comm) else Comm(comm)


def _abort(exc_type: Any, exc: Any, tb: Any) -> None:
    """Print the traceback with this rank's name, tell the other ranks (the watchdog of
    :func:`world` prints the reason on each), then abort every rank with exit code 1."""
    world_comm = MPI.COMM_WORLD
    watchdog = _guard.active()
    try:
        sys.stderr.write(f"fundl.distributed: rank {world_comm.Get_rank()} of "
                         f"{world_comm.Get_size()} failed; aborting all ranks\n")
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        if watchdog is not None:
            first = str(exc).splitlines()[0] if str(exc) else ""
            watchdog.fail(f"{exc_type.__name__}: {first}", statuses=False,
                          already_printed=True)
    finally:
        world_comm.Abort(1)


_installed: List[Any] = []


def install_abort_hook() -> None:
    """Make an uncaught exception on this rank abort every rank (``sys.excepthook``).

    Without it, a rank that dies leaves the others waiting forever in their
    next collective.  Idempotent; :func:`world` calls it.
    """
    if _installed:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, SystemExit) and exc.code in (None, 0):
            return previous(exc_type, exc, tb)
        _abort(exc_type, exc, tb)

    _installed.append(previous)
    sys.excepthook = hook


@contextlib.contextmanager
def abort_on_error() -> Iterator[None]:
    """``with abort_on_error(): ...``: an exception in the block aborts every rank.

    The rank prints its traceback to stderr and calls ``MPI.COMM_WORLD.Abort(1)``:
    ``mpiexec`` ends all ranks and exits non-zero.  ``SystemExit(0)`` passes.
    For code that catches exceptions before they reach ``sys.excepthook``
    (where :func:`world`'s guard sits), e.g. under a test runner.
    """
    try:
        yield
    except SystemExit as err:
        if err.code in (None, 0):
            raise
        _abort(type(err), err, err.__traceback__)
    except BaseException as err:  # noqa: BLE001 - any failure must end every rank
        _abort(type(err), err, err.__traceback__)


def world(guard: bool = True, timeout: Optional[float] = None) -> Comm:
    """``MPI.COMM_WORLD`` as a :class:`Comm` (``.rank``, ``.size``).

    With ``guard`` (the default; every rank must call ``world()``) no rank is left
    waiting forever in a collective:

    - :func:`install_abort_hook`: an uncaught exception on any rank prints that
      rank's traceback and aborts the whole job (``mpiexec`` exits with code 1);
    - the watchdog (:mod:`fundl.distributed.guard`, on more than one rank): a rank
      that waits in one of fundl's collectives which another rank will not join --
      the other finished its script (it ran fewer steps), or waits in a different
      collective, or has not come for ``timeout`` seconds (default
      ``$FUNDL_MPI_TIMEOUT`` or 600; ``float("inf")`` for no limit) -- ends the job
      with a message on every rank saying where each rank is and how many steps it
      took; at the end of the script each rank waits for the others, and ranks that
      took different numbers of training steps are an error.

    Calling it again returns a new :class:`Comm` of ``COMM_WORLD``; a ``timeout``
    given then replaces the first one.
    """
    if guard:
        install_abort_hook()
        _guard.install(timeout)
    elif timeout is not None:
        raise ValueError("dist.world: timeout= needs guard=True (the watchdog)")
    return Comm(MPI.COMM_WORLD)


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, np.ndarray) and leaf.dtype.kind in "biufc"


def broadcast(comm: Any, tree: Any, root: int = 0) -> Any:
    """Rank ``root``'s ``tree`` (any pytree, e.g. a whole ``TrainState``) on every rank.

    The structure and the non-array leaves (ints, keys' flags...) travel pickled,
    the arrays in one flat buffer per dtype (``Bcast``).  Other ranks' ``tree``
    is ignored (it may be ``None``); they get new arrays of their own (read-only
    where root's were).  Root gets its ``tree`` back as it is.
    """
    comm = as_comm(comm)
    if comm.size == 1:
        return tree
    if comm.rank == root:
        leaves, treedef = _tree.flatten(tree)
        arrays = [(i, a.shape, a.dtype.str, a.flags.writeable)
                  for i, a in enumerate(leaves) if _is_array(a)]
        others = {i: leaf for i, leaf in enumerate(leaves) if not _is_array(leaf)}
        collective(comm, "broadcast", comm.mpi.bcast, (treedef, arrays, others), root)
    else:
        treedef, arrays, others = collective(comm, "broadcast", comm.mpi.bcast, None, root)
    out: List[Any] = [None] * treedef.num_leaves
    for i, leaf in others.items():
        out[i] = leaf
    for dtype in dict.fromkeys(d for _, _, d, _ in arrays):
        group = [m for m in arrays if m[2] == dtype]
        sizes = [int(np.prod(shape)) for _, shape, _, _ in group]
        buf = np.empty(sum(sizes), dtype=np.dtype(dtype))
        offsets = np.cumsum([0] + sizes)
        if comm.rank == root:
            for (i, _, _, _), lo, hi in zip(group, offsets[:-1], offsets[1:]):
                buf[lo:hi] = leaves[i].reshape(-1)
        collective(comm, f"broadcast ({dtype} arrays)", comm.mpi.Bcast, buf, root)
        if comm.rank != root:
            for (i, shape, _, writeable), lo, hi in zip(group, offsets[:-1], offsets[1:]):
                a = buf[lo:hi].reshape(shape).copy()
                a.flags.writeable = writeable
                out[i] = a
    return tree if comm.rank == root else treedef.unflatten(out)


def fingerprint(tree: Any) -> str:
    """A sha256 hex digest of ``tree``: its structure and every leaf's dtype, shape and
    bytes (equal on two ranks exactly when the trees are bit-identical)."""
    digest = hashlib.sha256()
    leaves, treedef = _tree.flatten(tree)
    digest.update(repr(treedef).encode())
    for leaf in leaves:
        a = np.asarray(leaf)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes() if a.dtype.kind != "O"
                      else repr(a).encode())
    return digest.hexdigest()


def in_sync(comm: Any, tree: Any) -> bool:
    """True on every rank when ``tree`` is bit-identical on every rank (same structure,
    dtypes, shapes and bytes); a check for tests and debugging (hashes each leaf)."""
    comm = as_comm(comm)
    mine: Optional[str] = fingerprint(tree)
    return len(set(comm.gather_all(mine, "in_sync"))) == 1
