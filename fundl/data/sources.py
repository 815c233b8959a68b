"""Data sources: what :func:`fundl.fit`, :func:`fundl.evaluate` and :func:`fundl.predict` take
besides ``(x, y)`` arrays.

A data source yields one epoch of ``(x, y)`` batches (``x`` and ``y`` arrays, or tuples of
arrays for several inputs or outputs).  It is

- a **callable** ``batches(key) -> iterable of (x, y)``, called once per epoch with that
  epoch's key (``fit`` passes ``fold_in(k_data, epoch)``): augmentation, shuffling and
  sampling drawn from that key are deterministic, and resume reproduces them bit for bit;
- a :class:`Source` (the pieces below), a callable that also knows its length and can start
  an epoch at batch ``start`` without producing the batches before it (``source(key,
  start=b)``), which makes a resume in the middle of an epoch cheap;
- or any **re-iterable** of batches (a list of batches, an object whose ``__iter__`` starts
  a new pass): every epoch iterates it afresh, with no key.

A generator (an iterator) runs only once and is refused; wrap it in a function of the key.

The pieces::

    src = fl.data.from_arrays((x, y), batch_size=128)          # what fit does with arrays
    src = fl.data.map_batches(src, shift)                      # shift(key, (x, y)) -> (x, y)
    src = fl.data.interleave([(x0, y0), (x1, y1)], 128)        # several memmaps/.npy files
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .. import random
from .batching import check_batch_size, check_shard, flatten_data, iter_batches, num_batches, shard_range
from .mapped import PageRelease

__all__ = ["Source", "from_arrays", "map_batches", "interleave", "is_source", "epoch_batches",
           "length_of", "shard_batch"]


class Source:
    """A keyed data source that knows its length and can start mid-epoch.

    Subclasses implement :meth:`batches` and set ``length`` (batches per epoch, or ``None``
    when unknown).  ``source(key, start=0)`` yields batches ``start, start + 1, ...`` of the
    epoch drawn from ``key``; batch ``b`` is the same whatever ``start`` is.
    """

    length: Optional[int] = None

    def batches(self, key: Any, start: int) -> Iterator[Any]:
        raise NotImplementedError

    def __call__(self, key: Any, start: int = 0) -> Iterator[Any]:
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise ValueError(f"{type(self).__name__}: start must be an integer >= 0, got "
                             f"{start!r}")
        return self.batches(key, int(start))

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"{type(self).__name__} has no length")
        return self.length


class _ArraySource(Source):
    length: int

    def __init__(self, data: Any, batch_size: int, shuffle: bool, drop_last: bool) -> None:
        self.leaves, self.rebuild = flatten_data(data, "from_arrays")
        self.batch_size = check_batch_size(batch_size, "from_arrays")
        self.n = self.leaves[0].shape[0]
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.length = num_batches(self.n, self.batch_size, self.drop_last)

    def batches(self, key: Any, start: int) -> Iterator[Any]:
        if self.shuffle and key is None:
            raise ValueError("from_arrays: shuffle=True needs a key; pass shuffle=False for "
                             "the stored order")
        order = random.permutation(key, self.n) if self.shuffle else None
        return iter_batches(self.leaves, self.rebuild, order, self.batch_size, self.length,
                            start=start)


def from_arrays(data: Any, batch_size: int, shuffle: bool = True, drop_last: bool = False
                ) -> Source:
    """A :class:`Source` of mini-batches of ``data`` (``(x, y)``, arrays or nested tuples of
    arrays sharing axis 0; memmaps read with flat memory).

    ``source(key)`` yields the batches of :func:`fundl.data.batches` with that key: those
    :func:`fundl.fit` makes from the arrays themselves (epoch ``e`` gets
    ``fold_in(k_data, e)``).  ``shuffle=False``: the stored order, and ``key`` may be
    ``None``.  Its length is the number of batches.
    """
    return _ArraySource(data, batch_size, shuffle, drop_last)


class _MappedSource(Source):
    def __init__(self, source: Any, fn: Callable[[Any, Any], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"map_batches: fn must be a function fn(key, batch) -> batch, got "
                            f"{type(fn).__name__}")
        if not callable(source) and not _reiterable(source):
            raise TypeError(f"map_batches: source must be a data source (a function of the "
                            f"key, a fl.data source or a re-iterable of batches), got "
                            f"{type(source).__name__}")
        self.source, self.fn = source, fn
        self.length = length_of(source)

    def batches(self, key: Any, start: int) -> Iterator[Any]:
        if key is None:
            raise ValueError("map_batches: the augmentation needs a key (fit passes one per "
                             "epoch); for evaluation, map over the un-augmented source instead")
        k_source, k_fn = random.split(key)
        inner = epoch_batches(self.source, k_source, start)
        for b, batch in enumerate(inner, start):
            yield self.fn(random.fold_in(k_fn, b), batch)


def map_batches(source: Any, fn: Callable[[Any, Any], Any]) -> Source:
    """A :class:`Source` that applies a keyed function to every batch of ``source``.

    ``fn(key, batch) -> batch`` (e.g. a random shift of every example, vectorised over the
    batch) gets ``fold_in(k_fn, b)`` for batch ``b`` of the epoch, where ``k_source, k_fn =
    split(epoch_key)`` and ``source`` gets ``k_source``.  So an augmentation is deterministic
    given the epoch's key, differs from epoch to epoch, and batch ``b`` is the same when an
    epoch starts at ``start=b`` (a resume): the batches before it are neither produced nor
    augmented if ``source`` is a :class:`Source`.  ``fn`` must not write into the batch it
    is given (the arrays may be views of your data).
    """
    return _MappedSource(source, fn)


class _Chunks(Source):
    length: int
    rebuild: Callable[[Sequence[Any]], Any]   # parts[0]'s (every part has its structure)

    def __init__(self, parts: Sequence[Any], batch_size: int, chunk_size: int,
                 cache_chunks: int, shuffle: bool, drop_last: bool) -> None:
        if isinstance(parts, (str, os.PathLike)) or not isinstance(parts, (list, tuple)) \
                or not parts:
            raise ValueError("interleave: parts must be a non-empty list of data, each (x, y) "
                             "arrays, memmaps or .npy paths")
        self.batch_size = check_batch_size(batch_size, "interleave")
        for name, v in (("chunk_size", chunk_size), ("cache_chunks", cache_chunks)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"interleave: {name} must be an integer >= 1, got {v!r}")
        self.chunk_size, self.cache_chunks = int(chunk_size), int(cache_chunks)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.parts: List[List[np.ndarray]] = []
        shapes = None
        for i, part in enumerate(parts):
            leaves, rebuild = flatten_data(_open(part), f"interleave: parts[{i}]")
            sig = [(a.shape[1:], a.dtype) for a in leaves]
            if shapes is None:
                shapes, self.rebuild = sig, rebuild
            elif sig != shapes:
                raise ValueError(f"interleave: parts[{i}] has per-example shapes and dtypes "
                                 f"{sig}, parts[0] has {shapes}")
            self.parts.append(leaves)
        # the chunks: (part, lo, hi), contiguous rows of one part
        self.chunks = [(p, lo, min(lo + self.chunk_size, leaves[0].shape[0]))
                       for p, leaves in enumerate(self.parts)
                       for lo in range(0, leaves[0].shape[0], self.chunk_size)]
        self.n = sum(hi - lo for _, lo, hi in self.chunks)
        self.length = num_batches(self.n, self.batch_size, self.drop_last)
        # the pages of every group read are handed back before the next is read
        self.release = PageRelease([a for leaves in self.parts for a in leaves], every=1)

    def groups(self, key: Any) -> List[List[Tuple[int, int, int]]]:
        """The epoch's groups of ``cache_chunks`` chunks, in the order they are read."""
        order = random.permutation(random.fold_in(key, 0), len(self.chunks)) if self.shuffle \
            else np.arange(len(self.chunks))
        chosen = [self.chunks[i] for i in order]
        return [chosen[i:i + self.cache_chunks] for i in range(0, len(chosen), self.cache_chunks)]

    def load(self, key: Any, g: int, group: List[Tuple[int, int, int]]) -> List[np.ndarray]:
        """The rows of a group's chunks, copied out of the files, in their shuffled order."""
        columns = []
        for j in range(len(self.parts[0])):
            columns.append(np.concatenate([self.parts[p][j][lo:hi] for p, lo, hi in group]))
        self.release.read(sum(c.nbytes for c in columns))
        if self.shuffle:
            perm = random.permutation(random.fold_in(random.fold_in(key, 1), g),
                                      columns[0].shape[0])
            columns = [c[perm] for c in columns]
        return columns

    def batches(self, key: Any, start: int) -> Iterator[Any]:
        if self.shuffle and key is None:
            raise ValueError("interleave: shuffle=True needs a key; pass shuffle=False for "
                             "the stored order")
        bs = self.batch_size
        skip = min(start, self.length) * bs  # examples of the stream before batch `start`
        emitted, b = 0, start
        pending: Optional[List[np.ndarray]] = None
        for g, group in enumerate(self.groups(key)):
            size = sum(hi - lo for _, lo, hi in group)
            if emitted + size <= skip:  # wholly before the start: not read at all
                emitted += size
                continue
            cols = self.load(key, g, group)
            if emitted < skip:
                cols = [c[skip - emitted:] for c in cols]
                emitted = skip
            emitted += cols[0].shape[0]
            pending = cols if pending is None else [np.concatenate([a, c])
                                                    for a, c in zip(pending, cols)]
            while pending[0].shape[0] >= bs and b < self.length:
                yield self.rebuild([c[:bs] for c in pending])
                pending = [c[bs:] for c in pending]
                b += 1
        if pending is not None and pending[0].shape[0] and b < self.length:
            yield self.rebuild(pending)
        self.release.release()


def interleave(parts: Sequence[Any], batch_size: int, *, chunk_size: int = 1024,
               cache_chunks: int = 8, shuffle: bool = True, drop_last: bool = False) -> Source:
    """A :class:`Source` reading several data sets (files, memmaps) in chunks, with a bounded
    cache.

    ``parts``: a list of data sets of one structure and per-example shapes, each ``(x, y)``
    of arrays, ``np.memmap``\\ s or paths of ``.npy`` files (opened with ``mmap_mode="r"``).
    Their examples are cut into chunks of ``chunk_size`` contiguous rows; an epoch (key
    ``k``) reads the chunks of all parts in an order drawn from ``k`` (files interleaved),
    ``cache_chunks`` at a time: those rows are copied into memory, shuffled together and cut
    into batches of ``batch_size`` (rows left over go on into the next group's batches).
    At most ``cache_chunks * chunk_size`` examples (plus a batch) are in memory, whatever the
    size of the files, and the pages read are handed back to the kernel, so memory stays
    flat.  Every example appears exactly once per epoch; ``shuffle=False`` reads in the
    stored order.  The length is ``ceil(n / batch_size)`` (``floor`` with ``drop_last``);
    ``start=b`` skips the chunks before batch ``b`` without reading them.
    """
    return _Chunks(parts, batch_size, chunk_size, cache_chunks, shuffle, drop_last)


def _open(part: Any) -> Any:
    """``part`` with ``.npy`` paths opened as read-only memmaps (tuples, lists and dicts walked)."""
    if isinstance(part, (str, os.PathLike)):
        return np.load(part, mmap_mode="r", allow_pickle=False)
    if isinstance(part, tuple) and not hasattr(part, "_fields"):
        return tuple(_open(p) for p in part)
    if isinstance(part, list):
        return tuple(_open(p) for p in part)
    if isinstance(part, dict):
        return {k: _open(v) for k, v in part.items()}
    return part


# --- what fit, evaluate and predict use ----------------------------------------------------------

def _reiterable(data: Any) -> bool:
    try:
        it = iter(data)
    except TypeError:
        return False
    return it is not data


def is_source(data: Any) -> bool:
    """Whether ``data`` is a data source rather than ``(x, y)`` arrays: a callable, a
    :class:`Source`, or an iterable that is not a tuple, an array, a dict or a string (a
    list counts as ``(x, y)`` when it holds two arrays, as a list of batches otherwise)."""
    if isinstance(data, Source) or callable(data):
        return True
    if isinstance(data, (tuple, np.ndarray, dict, str, bytes)):
        return False
    if isinstance(data, list):
        return not (len(data) == 2 and not any(isinstance(v, (tuple, list)) for v in data))
    return hasattr(data, "__iter__")


def check_source(data: Any, what: str) -> None:
    """A clear error for an iterator (it runs once) given as a source."""
    if isinstance(data, Source) or callable(data):
        return
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"{what}: expected (x, y) arrays or a data source, got "
                        f"{type(data).__name__}") from None
    if it is data:
        raise TypeError(f"{what}: a generator or iterator runs only once, but every epoch "
                        f"needs the batches again; pass a function of the key that returns "
                        f"one, e.g. lambda key: make_batches(key), or a list of batches")


def length_of(data: Any) -> Optional[int]:
    """Batches per epoch of a source, or ``None`` if it does not say."""
    if isinstance(data, Source):
        return data.length
    if callable(data):
        return None
    try:
        return len(data)
    except TypeError:
        return None


def epoch_batches(data: Any, key: Any, start: int = 0) -> Iterator[Any]:
    """Batches ``start, start + 1, ...`` of one epoch of ``data`` drawn from ``key``: a
    :class:`Source` starts there itself; any other source is run from its first batch and
    the batches before ``start`` are dropped (they are made: the same batches, the same
    augmentation, only slower)."""
    if isinstance(data, Source):
        return data(key, start=start)
    it = iter(data(key)) if callable(data) else iter(data)
    return itertools.islice(it, start, None) if start else it


def shard_batch(batch: Any, shard: Any) -> Any:
    """This rank's part of a global batch (:func:`~fundl.data.batching.shard_range` of its
    examples) for ``shard=(rank, size)``; ``batch`` itself for ``None``."""
    shard = check_shard(shard, "shard_batch")
    if shard is None:
        return batch
    leaves, rebuild = flatten_data(batch, "a batch")
    lo, hi = shard_range(leaves[0].shape[0], *shard)
    return rebuild([a[lo:hi] for a in leaves])

