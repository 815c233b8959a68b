"""Tensor fusion: sum a pytree of arrays over ranks through a few flat buffers.

One ``Allreduce`` per leaf costs one network latency per leaf; packing the
leaves into contiguous buffers of a few MiB (as Horovod's tensor fusion does)
makes it one per bucket.  The buckets hold leaves of one dtype, in flatten
order, up to ``bucket_bytes`` each (a larger leaf is a bucket of its own).
The result leaves are views of the buckets' buffers; a buffer is reused at
the next call only when no view of it is alive any more (checked by its
reference count), so a caller that keeps the summed tree never sees it change.

Every rank must sum trees of the same structure, shapes and dtypes, or the
ranks' ``Allreduce`` calls would not match (different counts or dtypes: wrong
sums, corrupted memory or a hang).  So the first call, and every call whose
tree has another structure than the last one, first compares a digest of the
structure (and ``bucket_bytes``) across the ranks -- one ``Allgather`` of 16
bytes per rank, once per structure, not per call -- and raises a ``ValueError``
naming the first leaf that differs, on every rank.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from mpi4py import MPI

from .. import tree
from .comm import as_comm
from .guard import collective

__all__ = ["Fusion", "DEFAULT_BUCKET_BYTES"]

#: 4 MiB: large enough that per-call latency is small next to the transfer,
#: small enough to keep the extra memory low.
DEFAULT_BUCKET_BYTES = 4 << 20

_CPYTHON = sys.implementation.name == "cpython"


class _Bucket(NamedTuple):
    dtype: np.dtype
    total: int                                       # elements
    members: Tuple[Tuple[int, int, int, Tuple[int, ...]], ...]  # (leaf, offset, size, shape)


def _plan(leaves: List[Any], bucket_bytes: int) -> Tuple[_Bucket, ...]:
    """Buckets of the floating-point array leaves (others are not summed)."""
    by_dtype: Dict[np.dtype, List[int]] = {}
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind in "fc":
            by_dtype.setdefault(leaf.dtype, []).append(i)
    buckets: List[_Bucket] = []
    for dtype, idx in by_dtype.items():
        members: List[Tuple[int, int, int, Tuple[int, ...]]] = []
        offset = 0
        for i in idx:
            size = leaves[i].size
            if members and (offset + size) * dtype.itemsize > bucket_bytes:
                buckets.append(_Bucket(dtype, offset, tuple(members)))
                members, offset = [], 0
            members.append((i, offset, size, leaves[i].shape))
            offset += size
        if members:
            buckets.append(_Bucket(dtype, offset, tuple(members)))
    return tuple(buckets)


class Fusion:
    """Sums pytrees over the ranks of ``comm``, one ``Allreduce`` per bucket.

    ``fusion.sum(tree, weight=None)`` returns a tree like ``tree`` whose
    floating-point array leaves are the sum over ranks of ``weight * leaf``
    (``weight`` a Python float, ``None`` for 1, and it may differ per rank: it
    is applied while packing, so a mean costs no extra pass); other leaves
    (ints, Python numbers) are returned as they are.  Every rank must call it
    with trees of the same structure, shapes and dtypes: a new structure is
    compared across the ranks first (a ``ValueError`` naming the first leaf that
    differs, on every rank).  ``name`` names it in errors and in the watchdog's
    messages.  Nothing passed in is written.  Not thread-safe (one per training
    loop).
    """

    def __init__(self, comm: Any, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 name: str = "Fusion"):
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)) \
                or bucket_bytes < 1:
            raise ValueError(f"Fusion: bucket_bytes must be an integer >= 1, got {bucket_bytes!r}")
        self.comm = as_comm(comm)
        self.bucket_bytes = int(bucket_bytes)
        self.name = name
        self._signature: Optional[Tuple[Any, ...]] = None
        self._buckets: Tuple[_Bucket, ...] = ()
        self._buffers: List[Optional[np.ndarray]] = []
        self._labels: List[str] = []

    def _buffer(self, b: int) -> np.ndarray:
        """Bucket ``b``'s buffer: last call's if nobody holds a view of it, else a new one."""
        buf = self._buffers[b]
        # References when unshared: the list slot, ``buf`` and getrefcount's argument.
        if buf is None or not _CPYTHON or sys.getrefcount(buf) > 3:
            bucket = self._buckets[b]
            buf = np.empty(bucket.total, dtype=bucket.dtype)
            self._buffers[b] = buf
        return buf

    def sum(self, values: Any, weight: Optional[float] = None) -> Any:
        leaves, treedef = tree.flatten(values)
        signature = tuple((a.shape, a.dtype.str) if isinstance(a, np.ndarray) else None
                          for a in leaves)
        if signature != self._signature:
            self._signature = None
            if self.comm.size > 1:
                self._agree(values, leaves, treedef, signature)
            self._buckets = _plan(leaves, self.bucket_bytes)
            self._buffers = [None] * len(self._buckets)
            count = len(self._buckets)
            self._labels = [f"the Allreduce of {self.name} (bucket {b + 1} of {count})"
                            for b in range(count)]
            self._signature = signature
        out = list(leaves)
        for b, bucket in enumerate(self._buckets):
            buf = self._buffer(b)
            for i, offset, size, shape in bucket.members:
                view = buf[offset:offset + size].reshape(shape)
                if weight is None:
                    np.copyto(view, leaves[i])
                else:
                    np.multiply(leaves[i], weight, out=view)
            collective(self.comm, self._labels[b], self.comm.mpi.Allreduce, MPI.IN_PLACE, buf,
                       MPI.SUM)
            for i, offset, size, shape in bucket.members:
                out[i] = buf[offset:offset + size].reshape(shape)
        return treedef.unflatten(out)

    def _agree(self, values: Any, leaves: List[Any], treedef: Any,
               signature: Tuple[Any, ...]) -> None:
        """Raise on every rank unless every rank sums a tree of this structure (one
        ``Allgather`` of a 16-byte digest; the details travel only when they differ)."""
        digest = hashlib.sha256(repr((repr(treedef), signature, self.bucket_bytes)).encode())
        mine = np.frombuffer(digest.digest()[:16], np.uint8).copy()
        every = np.empty((self.comm.size, 16), np.uint8)
        collective(self.comm, f"the structure check of {self.name}", self.comm.mpi.Allgather,
                   mine, every)
        if (every == every[0]).all():
            return
        described = [(path, _describe(leaf)) for path, leaf in tree.flatten_with_paths(values)]
        plans = self.comm.gather_all((described, self.bucket_bytes),
                                     f"the structure check of {self.name} (details)")
        raise ValueError(f"{self.name}: the ranks sum different trees, so their Allreduce "
                         f"calls would not match: {_first_difference(plans)}; every rank must "
                         f"pass gradients (params) of the same structure, shapes and dtypes")


def _describe(leaf: Any) -> str:
    if isinstance(leaf, np.ndarray):
        return f"{leaf.dtype} {tuple(leaf.shape)}"
    return type(leaf).__name__


def _first_difference(plans: List[Tuple[List[Tuple[str, str]], int]]) -> str:
    """Words for where the ranks' ``(described leaves, bucket_bytes)`` first differ."""
    leaves0, bytes0 = plans[0]
    for rank, (leaves_r, bytes_r) in enumerate(plans):
        if len(leaves_r) != len(leaves0):
            return (f"rank 0 has {len(leaves0)} leaves, rank {rank} {len(leaves_r)} "
                    f"(rank 0: {[p for p, _ in leaves0][:8]}, rank {rank}: "
                    f"{[p for p, _ in leaves_r][:8]})")
        for (p0, d0), (pr, dr) in zip(leaves0, leaves_r):
            if (p0, d0) != (pr, dr):
                return (f"leaf {p0 or '(root)'!r} is {d0} on rank 0, but rank {rank} has "
                        f"{pr or '(root)'!r}: {dr}")
        if bytes_r != bytes0:
            return f"bucket_bytes is {bytes0} on rank 0, {bytes_r} on rank {rank}"
    return "their tree structures differ"
