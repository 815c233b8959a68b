"""Mini-batches over arrays sharing axis 0 (a tuple, or nested tuples and dicts), ordered by an
explicit key."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import random
from .mapped import PageRelease

__all__ = ["batches", "num_batches", "as_arrays", "flatten_data", "shard_range", "check_shard",
           "check_batch_size"]

Arrays = Union[np.ndarray, Sequence[np.ndarray]]
Shard = Optional[Tuple[int, int]]


def as_arrays(arrays: Arrays, what: str = "batches") -> Tuple[Tuple[np.ndarray, ...], bool]:
    """``(tuple of arrays, single)``: ``single`` is True when one bare array was given.

    Raises ``ValueError`` for no arrays, 0-d arrays, empty data or mismatched lengths.
    """
    single = isinstance(arrays, np.ndarray)
    seq = (arrays,) if single else tuple(arrays)
    if not seq:
        raise ValueError(f"{what}: expected a tuple of arrays, got an empty sequence")
    out = []
    for i, a in enumerate(seq):
        a = np.asarray(a)
        if a.ndim == 0:
            raise ValueError(f"{what}: array {i} is a scalar; every array needs a batch axis 0")
        out.append(a)
    lengths = [a.shape[0] for a in out]
    if len(set(lengths)) > 1:
        shapes = ", ".join(str(tuple(a.shape)) for a in out)
        raise ValueError(f"{what}: arrays must have the same length on axis 0, got shapes {shapes}")
    if lengths[0] == 0:
        raise ValueError(f"{what}: the data is empty (0 examples)")
    return tuple(out), single


def flatten_data(data: Any, what: str = "batches"
                 ) -> Tuple[List[np.ndarray], Callable[[Sequence[Any]], Any]]:
    """The arrays of ``data`` and a function that rebuilds ``data``'s structure from such arrays.

    ``data`` is one array or a container of arrays: tuples (named tuples too)
    and dicts nest to any depth (``((x_a, x_b), y)``, ``{"x": x, "y": y}``); a
    list at the top counts as a tuple, anything else is converted with
    ``np.asarray``.  Every array needs a batch axis 0 of one common, non-zero
    length; otherwise a ``ValueError`` naming ``what`` and the arrays' paths
    and shapes.  ``rebuild(arrays)`` puts arrays (e.g. batches of the ones
    returned) back into the structure: ``rebuild(flatten_data(d)[0])`` equals ``d``.
    """
    leaves: List[np.ndarray] = []
    names: List[str] = []

    def walk(node: Any, path: str, top: bool) -> Callable[[Iterator[Any]], Any]:
        if isinstance(node, dict):
            parts = [(k, walk(v, f"{path}[{k!r}]", False)) for k, v in node.items()]
            return lambda it: {k: f(it) for k, f in parts}
        if isinstance(node, tuple) or (top and isinstance(node, list)):
            fns = [walk(v, f"{path}[{i}]", False) for i, v in enumerate(node)]
            if hasattr(node, "_fields"):
                kind = type(node)
                return lambda it: kind(*[f(it) for f in fns])
            return lambda it: tuple(f(it) for f in fns)
        a = np.asarray(node)
        if a.ndim == 0:
            raise ValueError(f"{what}: array {path or '0'} is a scalar; every array needs a "
                             "batch axis 0")
        leaves.append(a)
        names.append(path)
        return lambda it: next(it)

    build = walk(data, "", True)
    if not leaves:
        kind = "sequence" if isinstance(data, (list, tuple)) else type(data).__name__
        raise ValueError(f"{what}: expected arrays, got an empty {kind}")
    lengths = {a.shape[0] for a in leaves}
    if len(lengths) > 1:
        flat = all(name.count("[") == 1 for name in names)  # a flat tuple: its shapes say it all
        shapes = ", ".join(str(tuple(a.shape)) if flat else f"{name} {tuple(a.shape)}"
                           for name, a in zip(names, leaves))
        raise ValueError(f"{what}: arrays must have the same length on axis 0, got shapes {shapes}")
    if leaves[0].shape[0] == 0:
        raise ValueError(f"{what}: the data is empty (0 examples)")

    def rebuild(arrays: Sequence[Any]) -> Any:
        return build(iter(arrays))
    return leaves, rebuild


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for ``n`` examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def check_batch_size(value: Any, who: str) -> int:
    """``value`` as an int >= 1 (a Python or numpy integer, not a bool), or a ValueError
    naming ``who``'s ``batch_size``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: batch_size must be an integer >= 1, got {value!r}")
    return int(value)


def check_shard(shard: Any, what: str = "batches") -> Shard:
    """``shard`` as ``(rank, size)`` ints with ``0 <= rank < size`` (or ``None``); else ``ValueError``."""
    if shard is None:
        return None
    try:
        rank, size = shard
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (rank, size))
    except (TypeError, ValueError):
        ok = False
    if not ok or not 0 <= rank < size:
        raise ValueError(f"{what}: shard must be a pair (rank, size) of ints with "
                         f"0 <= rank < size, got {shard!r}")
    return int(rank), int(size)


def shard_range(n: int, rank: int, size: int) -> Tuple[int, int]:
    """``(lo, hi)``: the part ``[lo, hi)`` of ``n`` items that rank ``rank`` of ``size`` takes.

    The parts are contiguous, disjoint, in rank order and cover ``[0, n)``;
    their lengths differ by at most one (``floor(r n / size)`` to
    ``floor((r + 1) n / size)``), and a rank gets ``0`` items when ``n < size``.
    """
    return rank * n // size, (rank + 1) * n // size


def batches(key: Any, arrays: Any, batch_size: int, shuffle: bool = True,
            drop_last: bool = False, shard: Shard = None) -> Iterator[Any]:
    """Iterate once (one epoch) over ``arrays`` in mini-batches.

    ``arrays`` is a tuple (or list) of arrays sharing axis 0 (e.g. ``(x, y)``),
    one array, or a nested structure of tuples and dicts of such arrays (e.g.
    ``((x_a, x_b), y)`` for a two-input model, or ``{"x": x, "y": y}``; see
    :func:`flatten_data`).  Yields batches of the same structure, every array
    indexed by the same examples (``(x[idx], y[idx], ...)``, a bare array for
    one array) of ``batch_size`` examples; the last one is smaller unless
    ``drop_last``.  With ``shuffle`` the order is ``fundl.random.permutation(key, n)``:
    the same key gives the same batches, and every example appears exactly once
    per epoch (use ``fundl.random.fold_in(key, epoch)`` for a new order each
    epoch).  ``key`` may be ``None`` when ``shuffle=False``; those batches are
    views (slices) of the arrays, shuffled ones are copies.  Arguments are
    checked when ``batches`` is called, not at the first ``next``.

    ``shard=(rank, size)`` (data-parallel training, :mod:`fundl.distributed`):
    ``batch_size`` is the *global* batch, and this rank yields only its part
    of each global batch, the slice :func:`shard_range` of it.  Every rank
    draws the same order from the same key, so the ranks' parts of a batch are
    disjoint and together exactly the global batch.  An uneven (last) batch is
    split into parts whose sizes differ by at most one; a rank may get a part
    of 0 examples (arrays with a batch axis of length 0) when the batch has
    fewer examples than there are ranks.  Every rank yields the same number
    of batches.
    """
    leaves, rebuild = flatten_data(arrays)
    batch_size = check_batch_size(batch_size, "batches")
    shard = check_shard(shard)
    n = leaves[0].shape[0]
    if shuffle and key is None:
        raise ValueError("batches: shuffle=True needs a key (fundl.random.key(seed)); "
                         "pass shuffle=False for the stored order")
    order = random.permutation(key, n) if shuffle else None
    count = num_batches(n, batch_size, drop_last)
    return iter_batches(leaves, rebuild, order, batch_size, count, shard=shard)


def iter_batches(leaves: Sequence[np.ndarray], rebuild: Callable[[Sequence[Any]], Any],
                 order: Any, batch_size: int, count: int, start: int = 0,
                 shard: Shard = None) -> Iterator[Any]:
    """Batches ``start, ..., count - 1`` of ``leaves`` in ``order`` (``None``: data order),
    each put together by ``rebuild`` (from :func:`flatten_data`).

    With ``shard=(rank, size)`` each is this rank's part (:func:`shard_range`) of the batch.
    Pages of memory-mapped leaves (``np.memmap``) are released as batches are read
    (:class:`~fundl.data.mapped.PageRelease`), so an epoch over a memmap keeps memory flat.
    """
    n = leaves[0].shape[0]
    release = PageRelease(leaves)  # memory-mapped leaves: keep the resident size flat
    for b in range(start, count):
        lo = b * batch_size
        hi = min(lo + batch_size, n)
        if shard is not None:
            first, end = shard_range(hi - lo, *shard)
            lo, hi = lo + first, lo + end
        if order is None:
            part = [a[lo:hi] for a in leaves]
        else:
            idx = order[lo:hi]
            part = [a[idx] for a in leaves]
        if release:
            release.read(sum(p.nbytes for p in part))
        yield rebuild(part)
