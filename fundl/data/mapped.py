"""Memory-mapped data (``np.memmap``, ``np.load(path, mmap_mode="r")``) read in batches with flat
memory.

Reading rows of a memory-mapped file maps its pages into the process: they count in its
resident size until the mapping is closed, so one epoch over a 10 GB memmap makes a process
of 10 GB.  :class:`PageRelease` hands the pages a batch read back to the kernel every few MiB
(``madvise(MADV_DONTNEED)``: they stay in the page cache, so a later read is a cheap minor
fault, and the data is never changed), which keeps the resident size flat.  Only mappings that
cannot hold private changes are released: an ``np.memmap`` opened ``"r"``, ``"r+"`` or ``"w+"``
(not copy-on-write ``"c"``), found through the array's ``.base`` chain, so views and
``np.asarray`` of a memmap count too.
"""

from __future__ import annotations

import mmap
from typing import Any, List, Sequence

import numpy as np

__all__ = ["mapping_of", "PageRelease"]

#: Bytes read from mapped arrays between two releases.
RELEASE_EVERY = 32 * 1024 * 1024


def mapping_of(a: Any) -> Any:
    """The ``mmap.mmap`` behind ``a`` if ``a`` views an ``np.memmap`` whose pages may be dropped
    (any mode but copy-on-write ``"c"``), else ``None``."""
    node, memmap_mode = a, None
    for _ in range(64):  # a .base chain is short; bounded against a cycle
        if isinstance(node, np.memmap) and memmap_mode is None:
            memmap_mode = getattr(node, "mode", None)
        if isinstance(node, mmap.mmap):
            return node if memmap_mode in ("r", "r+", "w+", "readonly", "readwrite",
                                           "write") else None
        node = getattr(node, "base", None)
        if node is None:
            return None
    return None


class PageRelease:
    """Count the bytes read from the mapped arrays among ``arrays``; past ``every`` bytes, drop
    their pages from the process (``read(nbytes)`` after each batch).  A no-op for arrays in
    memory, and where ``madvise`` is missing."""

    def __init__(self, arrays: Sequence[Any], every: int = RELEASE_EVERY) -> None:
        maps: List[Any] = []
        for a in arrays:
            m = mapping_of(a)
            if m is not None and hasattr(m, "madvise") and all(m is not k for k in maps):
                maps.append(m)
        self.maps = maps
        self.every = int(every)
        self.pending = 0

    def __bool__(self) -> bool:
        return bool(self.maps)

    def read(self, nbytes: int) -> None:
        """Note ``nbytes`` read; release the pages once ``every`` bytes were read."""
        if not self.maps:
            return
        self.pending += int(nbytes)
        if self.pending >= self.every:
            self.release()

    def release(self) -> None:
        """Drop every mapped page of the arrays from the process now."""
        self.pending = 0
        for m in self.maps:
            try:
                m.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # a closed mapping, or a platform without it
                pass
