"""What fit, evaluate and predict take as data: ``(x, y)`` arrays (``x`` and ``y`` may be tuples,
arrays may be memmaps) or a data source (:mod:`fundl.data.sources`), behind one interface."""

from __future__ import annotations

import warnings
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np

from .. import random, tree
from ..data.batching import flatten_data, iter_batches, num_batches
from ..data.mapped import mapping_of
from ..data.sources import check_source, epoch_batches, is_source, length_of, shard_batch


def inputs(x: Any, what: str) -> Any:
    """``x`` as an array, or a tuple of inputs (nested tuples allowed) for a multi-input model."""
    if isinstance(x, dict):
        raise TypeError(f"{what}: x is a dict, but fundl models take one array or a tuple of "
                        "arrays (fl.parallel); pass x as a tuple in the order of the model's "
                        "inputs")
    if isinstance(x, (tuple, list)) and not isinstance(x, np.ndarray):
        if not x:
            raise ValueError(f"{what}: x is an empty tuple; a multi-input x is a tuple of arrays")
        return tuple(inputs(a, what) for a in x)
    return np.asarray(x)


def take(x: Any, index: Any) -> Any:
    """``x[index]`` for an array or a (nested) tuple of arrays."""
    if isinstance(x, tuple):
        return tuple(take(a, index) for a in x)
    return x[index]


def describe(x: Any) -> str:
    if isinstance(x, tuple):
        return "(" + ", ".join(describe(a) for a in x) + ")"
    if isinstance(x, np.ndarray):
        return f"{x.dtype} of shape {tuple(x.shape)}"
    return type(x).__name__


def float_dtype(params: Any) -> Optional[np.dtype]:
    """The float dtype of the params (``None`` for a model without float params)."""
    for leaf in tree.leaves(params):
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f":
            return leaf.dtype
    return None


def _flat(x: Any) -> List[np.ndarray]:
    if isinstance(x, tuple):
        return [a for part in x for a in _flat(part)]
    return [x]


class Caster:
    """Casts float inputs of another dtype than the params' to it, warning once per call of
    fit/evaluate/predict (``who``)."""

    def __init__(self, dtype: Optional[np.dtype], who: str, warned: Optional[List[bool]] = None):
        self.dtype, self.who = dtype, who
        self.warned = warned if warned is not None else [False]

    def needed(self, x: Any) -> bool:
        return self.dtype is not None and any(
            isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.dtype != self.dtype
            for a in _flat(x))

    def __call__(self, x: Any) -> Any:
        if isinstance(x, tuple):
            return tuple(self(a) for a in x)
        if self.dtype is None or not isinstance(x, np.ndarray) or x.dtype.kind != "f" \
                or x.dtype == self.dtype:
            return x
        if not self.warned[0]:
            self.warned[0] = True
            warnings.warn(
                f"{self.who}: x is {x.dtype} but the params are {self.dtype}: casting x to "
                f"{self.dtype} (a copy of the data). Pass {self.dtype} data "
                f"(x.astype(np.{self.dtype})) to avoid the copy and this warning, or train in "
                f"{x.dtype} with params cast to it (fundl.tree.cast(params, np.{x.dtype}), see "
                f"fit's docstring)", UserWarning, stacklevel=4)
        return x.astype(self.dtype)


def probe_rows(y: Any, n: int) -> np.ndarray:
    """A few example indices to try the model, loss and metrics on before training: the
    first example and, for integer labels, those holding the smallest and the largest label
    (so that a label out of range is found)."""
    rows = {0}
    for leaf in flatten_data(y)[0]:
        if leaf.dtype.kind in "iu" and leaf.size:
            for flat in (int(np.argmin(leaf)), int(np.argmax(leaf))):
                rows.add(int(np.unravel_index(flat, leaf.shape)[0]))
    return np.array(sorted(r for r in rows if r < n))


class Data:
    """Training, validation or evaluation data: ``(x, y)`` arrays or a data source.

    ``epoch(key, start, batch_size, count, order_key, shard)`` yields cast batches
    ``start, ..., count - 1`` of one epoch; ``probe()`` a few examples to check the model on.
    """

    def __init__(self, data: Any, what: str) -> None:
        self.what = what
        self.source: Any = None
        self.x = self.y = None
        self.n = 0
        self.cast = Caster(None, what)   # the identity until set_dtype
        self.lazy_cast = False
        if is_source(data):
            check_source(data, what)
            self.source = data
            self.length = length_of(data)
            return
        if isinstance(data, np.ndarray) or not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError(f"{what} must be a pair (x, y) of arrays sharing axis 0 (x may be a "
                             "tuple of arrays for a multi-input model, y a tuple for several "
                             "outputs), or a data source (a function key -> batches, a "
                             "fl.data source, a list of batches)")
        x = inputs(data[0], what)
        leaves, rebuild = flatten_data((x, data[1]), what)
        self.x, self.y = rebuild(leaves)
        self.leaves, self.rebuild = leaves, rebuild
        self.n = leaves[0].shape[0]
        self.length = None

    @property
    def arrays(self) -> bool:
        return self.source is None

    def set_dtype(self, dtype: Optional[np.dtype], who: str, warned: List[bool]) -> None:
        """Cast float inputs to ``dtype``: arrays in memory once now, memmaps and sources per
        batch (a memmap cast at once would be read whole into memory)."""
        self.cast = Caster(dtype, who, warned)
        if self.arrays and self.cast.needed(self.x):
            if any(mapping_of(a) is not None for a in _flat(self.x)):
                self.lazy_cast = True
            else:
                self.x = self.cast(self.x)
                self.leaves, self.rebuild = flatten_data((self.x, self.y), self.what)

    def count(self, batch_size: int, drop_last: bool, steps_per_epoch: Optional[int]) -> int:
        """Batches per epoch."""
        if self.arrays:
            if steps_per_epoch is not None:
                raise ValueError(f"{self.what}: steps_per_epoch applies to data sources; "
                                 f"arrays give ceil(n / batch_size) batches per epoch")
            return num_batches(self.n, batch_size, drop_last)
        if steps_per_epoch is not None:
            if self.length is not None and steps_per_epoch > self.length:
                raise ValueError(f"{self.what}: steps_per_epoch={steps_per_epoch} but the "
                                 f"source has {self.length} batches per epoch")
            return steps_per_epoch
        if self.length is None:
            raise ValueError(f"{self.what}: the source does not say how many batches an epoch "
                             f"has (no len()); pass steps_per_epoch=")
        return self.length

    def _source_batches(self, key: Any, start: int) -> Iterator[Any]:
        for batch in epoch_batches(self.source, key, start):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                got = (f"a {type(batch).__name__} of {len(batch)}"
                       if isinstance(batch, (tuple, list)) else type(batch).__name__)
                raise ValueError(f"{self.what}: a source must yield (x, y) batches, got {got}")
            yield inputs(batch[0], self.what), batch[1]

    def epoch(self, key: Any, start: int, batch_size: int, count: int, shuffle: bool,
              shard: Any = None) -> Iterator[Any]:
        """Batches ``start .. count - 1`` of the epoch whose key is ``key``."""
        cast = self.cast
        if self.arrays:
            order = random.permutation(key, self.n) if shuffle else None
            it = iter_batches(self.leaves, self.rebuild, order, batch_size, count, start=start,
                              shard=shard)
            if not self.lazy_cast:
                return it
            return ((cast(x), y) for x, y in it)
        return self._source_epoch(key, start, count, shard)

    def _source_epoch(self, key: Any, start: int, count: int, shard: Any) -> Iterator[Any]:
        b = start
        for x, y in self._source_batches(key, start):
            if b >= count:
                return
            batch = shard_batch((x, y), shard) if shard is not None else (x, y)
            yield self.cast(batch[0]), batch[1]
            b += 1
        if b < count:
            raise ValueError(f"{self.what}: the source yielded {b} batches in this epoch, "
                             f"fewer than the {count} steps_per_epoch asks for")

    def first_batch(self, key: Any) -> Tuple[Any, Any]:
        """The first batch of the epoch drawn from ``key`` (a source), uncast."""
        for x, y in self._source_batches(key, 0):
            flatten_data((x, y), f"{self.what} (its first batch)")
            return x, y
        raise ValueError(f"{self.what}: the source yielded no batch")

    def shown(self, probe: Tuple[Any, Any, int]) -> Tuple[str, str]:
        """How errors describe x and y: the whole arrays, or a source's first batch."""
        if self.arrays:
            return describe(self.x), describe(self.y)
        second = probe[1] if not isinstance(probe[1], list) else tuple(probe[1])
        return (f"its first batch: {describe(probe[0])}",
                f"its first batch: {describe(second)}")

    def probe(self, key: Any, first: Optional[Tuple[Any, Any]] = None) -> Tuple[Any, Any, int]:
        """``(x, y, rows)``: a few examples to run the model, loss and metrics on (a source's
        first batch of ``key``'s epoch, or ``first`` when the caller drew it already)."""
        if self.arrays:
            rows = probe_rows(self.y, self.n)
            x = take(self.x, rows)
            return (self.cast(x) if self.lazy_cast else x), take(self.y, rows), len(rows)
        x, y = self.first_batch(key) if first is None else first
        return self.cast(x), y, int(flatten_data(y)[0][0].shape[0])
