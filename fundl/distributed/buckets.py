"""Tensor fusion: sum a pytree of arrays over ranks through a few flat buffers.

One ``Allreduce`` per leaf costs one network latency per leaf; packing the
leaves into contiguous buffers of a few MiB (as Horovod's tensor fusion does)
makes it one per bucket.  The buckets hold leaves of one dtype, in flatten
order, up to ``bucket_bytes`` each (a larger leaf is a bucket of its own).
The result leaves are views of the buckets' buffers; a buffer is reused at
the next call only when no view of it is alive any more (checked by its
reference count), so a caller that keeps the summed tree never sees it change.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from mpi4py import MPI

from .. import tree
from .comm import as_comm

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
    (ints, Python numbers) are returned as they are.  Every
    rank must call it with trees of the same structure, shapes and dtypes.
    Nothing passed in is written.  Not thread-safe (one per training loop).
    """

    def __init__(self, comm: Any, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)) \
                or bucket_bytes < 1:
            raise ValueError(f"Fusion: bucket_bytes must be an integer >= 1, got {bucket_bytes!r}")
        self.comm = as_comm(comm)
        self.bucket_bytes = int(bucket_bytes)
        self._signature: Optional[Tuple[Any, ...]] = None
        self._buckets: Tuple[_Bucket, ...] = ()
        self._buffers: List[Optional[np.ndarray]] = []

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
            self._buckets = _plan(leaves, self.bucket_bytes)
            self._buffers = [None] * len(self._buckets)
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
            self.comm.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            for i, offset, size, shape in bucket.members:
                out[i] = buf[offset:offset + size].reshape(shape)
        return treedef.unflatten(out)
