"""Process-level performance switches.  Nothing here runs on import.

A training step allocates the same large arrays (activations, gradients, new
params) every step and frees them at the end of it.  glibc's ``malloc`` serves
blocks above its mmap threshold with fresh ``mmap`` calls and returns them to
the OS on ``free``; the next step then page-faults every page of them back in
(the kernel zeroes each 4 KiB page).  For numpy training loops that is often
the single largest overhead (benchmarks/README.md has the measurements).

:func:`keep_freed_memory` is an explicit call: make it once at the start of a
training script::

    import fundl.perf
    fundl.perf.keep_freed_memory()      # True on glibc; False (no effect) elsewhere

It changes the whole process (every library in it) and cannot be undone
exactly (glibc has no call that reads the settings back, and setting its
defaults again does not restore its dynamic threshold), so nothing calls it on
import and :func:`fundl.fit` calls it only when told
(``fit(..., keep_freed_memory=True)``); the examples call it in their ``main``
(``python3 -m benchmarks.alloc`` measures it).  The cost is memory: freed blocks
stay in the process's heap for reuse instead of going back to the OS, so the
resident size stays near the peak of a step rather than dropping between
steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple

__all__ = ["keep_freed_memory", "blas_threads", "get_blas_threads", "set_blas_threads",
           "M_TRIM_THRESHOLD", "M_MMAP_THRESHOLD"]

#: glibc ``mallopt`` parameter numbers (from ``<malloc.h>``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: glibc caps the mmap threshold at ``HEAP_MAX/2`` (32 MiB on 64-bit systems).
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def _glibc() -> Optional[ctypes.CDLL]:
    """The C library if it is glibc (has ``mallopt`` and ``gnu_get_libc_version``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):
        return None  # musl and others: no mallopt with these meanings
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory(mmap_threshold: int = 32 * 1024 * 1024,
                      trim_threshold: int = 512 * 1024 * 1024) -> bool:
    """Make glibc's allocator keep freed memory for reuse instead of unmapping it.

    - ``mmap_threshold`` (bytes, default 32 MiB, glibc's maximum): blocks up
      to this size come from the heap, which is reused, rather than from a
      fresh ``mmap`` that is unmapped on ``free``.
    - ``trim_threshold`` (bytes, default 512 MiB): free memory at the top of
      the heap is returned to the OS only beyond this much.

    Calls ``mallopt(M_MMAP_THRESHOLD, ...)`` and ``mallopt(M_TRIM_THRESHOLD,
    ...)`` through ctypes.  Process-wide and not undone by anything in fundl;
    setting glibc's defaults back does not give back its dynamic threshold.
    Returns ``True`` if both settings took effect (Linux with glibc), ``False``
    with no effect anywhere else (macOS, Windows, musl) or if glibc refused a
    value.  Raises ``ValueError`` for a negative size or an mmap threshold
    above 32 MiB (glibc would silently refuse it).
    """
    mmap_threshold = int(mmap_threshold)
    trim_threshold = int(trim_threshold)
    if mmap_threshold < 0 or trim_threshold < 0:
        raise ValueError(f"keep_freed_memory: thresholds must be >= 0 bytes, got "
                         f"mmap_threshold={mmap_threshold}, trim_threshold={trim_threshold}")
    if mmap_threshold > _MAX_MMAP_THRESHOLD:
        raise ValueError(f"keep_freed_memory: glibc caps mmap_threshold at "
                         f"{_MAX_MMAP_THRESHOLD} bytes (32 MiB), got {mmap_threshold}")
    if trim_threshold > 2**31 - 1:
        raise ValueError(f"keep_freed_memory: trim_threshold must fit a C int, got {trim_threshold}")
    libc = _glibc()
    if libc is None:
        return False
    ok_trim = libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    ok_mmap = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    return bool(ok_trim and ok_mmap)


# --- BLAS threads ------------------------------------------------------------------------------
#
# numpy's matmuls run on its BLAS's threads (OpenBLAS in the wheels: as many as cores).  On a
# machine shared with other jobs, those threads wait for each other at every matmul, and a
# training step can run many times slower than on one thread; with several MPI ranks on one
# machine each rank wants one thread.  These functions set the count at run time.

_GET = ("openblas_get_num_threads", "openblas_get_num_threads64_",
        "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
        "MKL_Get_Max_Threads", "mkl_get_max_threads")
_SET = {"openblas_get_num_threads": "openblas_set_num_threads",
        "openblas_get_num_threads64_": "openblas_set_num_threads64_",
        "scipy_openblas_get_num_threads64_": "scipy_openblas_set_num_threads64_",
        "scipy_openblas_get_num_threads": "scipy_openblas_set_num_threads",
        "MKL_Get_Max_Threads": "MKL_Set_Num_Threads",
        "mkl_get_max_threads": "mkl_set_num_threads"}


def _blas_libraries() -> List[Tuple[Any, Any, Any]]:
    """``(name, get, set)`` for every BLAS loaded in this process (found in /proc/self/maps,
    as numpy loads its own at import)."""
    import numpy  # noqa: F401 - make sure numpy's BLAS is loaded
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "/" in line and
                            any(k in line.lower() for k in ("openblas", "libmkl_rt", "mkl_rt"))})
    except OSError:
        paths = []
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for getter in _GET:
            get = getattr(lib, getter, None)
            put = getattr(lib, _SET[getter], None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                get.argtypes = []
                put.restype = None
                put.argtypes = [ctypes.c_int]
                found.append((os.path.basename(path), get, put))
                break
    return found


def _threadpoolctl() -> Any:
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def get_blas_threads() -> Dict[str, int]:
    """The thread count of each BLAS library loaded in the process, by library name
    (threadpoolctl's view if it is installed, else OpenBLAS's or MKL's own getter through
    ctypes); ``{}`` when none is found."""
    tpc = _threadpoolctl()
    if tpc is not None:
        return {p.get("filepath", p.get("internal_api")): int(p["num_threads"])
                for p in tpc.threadpool_info() if p.get("user_api") == "blas"}
    return {name: int(get()) for name, get, _ in _blas_libraries()}


def set_blas_threads(n: int) -> Dict[str, int]:
    """Set every loaded BLAS to ``n`` threads, for the rest of the process; returns the counts
    before (give them back with :func:`blas_threads` or ``set_blas_threads`` per library).

    threadpoolctl (``pip install threadpoolctl``) if installed, else OpenBLAS's
    ``openblas_set_num_threads`` (also the ``scipy_openblas`` names numpy's wheels use) or
    MKL's ``MKL_Set_Num_Threads`` through ctypes.  Raises ``ValueError`` for ``n < 1`` and
    ``RuntimeError`` when no BLAS can be set (then set ``OPENBLAS_NUM_THREADS`` or
    ``OMP_NUM_THREADS`` in the environment before Python starts).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_blas_threads: n must be an integer >= 1, got {n!r}")
    before = get_blas_threads()
    tpc = _threadpoolctl()
    if tpc is not None:
        tpc.threadpool_limits(limits=n, user_api="blas")
        return before
    libs = _blas_libraries()
    if not libs:
        raise RuntimeError("set_blas_threads: no OpenBLAS or MKL found in this process; set "
                           "OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS, MKL_NUM_THREADS) before "
                           "Python starts, or install threadpoolctl")
    for _, _, put in libs:
        put(n)
    return before


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[Dict[str, int]]:
    """``with fl.perf.blas_threads(1): ...``: BLAS on ``n`` threads inside the block, the
    counts from before restored after it (also on an exception).  Yields the counts inside.

    On a machine shared with other jobs (or several MPI ranks on one machine) one thread
    per process is often much faster than the default of one per core.
    """
    tpc = _threadpoolctl()
    if tpc is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"blas_threads: n must be an integer >= 1, got {n!r}")
        with tpc.threadpool_limits(limits=n, user_api="blas"):  # restores each library's count
            yield get_blas_threads()
        return
    before = set_blas_threads(n)
    try:
        yield get_blas_threads()
    finally:
        for name, _, put in _blas_libraries():
            if name in before:
                put(before[name])
