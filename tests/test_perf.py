"""fundl.perf: keep_freed_memory is an explicit, harmless opt-in."""

import json
import subprocess
import sys

import pytest

from fundl import perf


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_keep_freed_memory_returns_bool_in_a_fresh_process():
    # mallopt is process-wide: run it in a subprocess so this test process is unaffected.
    out = _run(
        "import json, sys, numpy as np\n"
        "import fundl.perf as p\n"
        "r = p.keep_freed_memory()\n"
        "r2 = p.keep_freed_memory(mmap_threshold=1 << 20, trim_threshold=1 << 28)\n"
        "a = np.ones((1 << 20,), np.float32); s = float(a.sum()); del a\n"  # still allocates fine
        "print(json.dumps([r, r2, s, sys.platform]))")
    r, r2, s, platform = json.loads(out)
    assert isinstance(r, bool) and isinstance(r2, bool)
    assert s == float(1 << 20)
    if platform.startswith("linux") and perf._glibc() is not None:
        assert r is True and r2 is True


def test_not_called_on_import():
    # Importing fundl (and fundl.perf) must not touch the allocator: mallopt is never called.
    out = _run(
        "import ctypes, ctypes.util, json\n"
        "calls = []\n"
        "real = ctypes.CDLL\n"
        "class Spy(real):\n"
        "    def __getattr__(self, name):\n"
        "        if name == 'mallopt': calls.append(name)\n"
        "        return real.__getattr__(self, name)\n"
        "ctypes.CDLL = Spy\n"
        "import fundl, fundl.perf\n"
        "print(json.dumps(calls))")
    assert json.loads(out) == []


@pytest.mark.parametrize("kwargs", [
    {"mmap_threshold": -1},
    {"trim_threshold": -5},
    {"mmap_threshold": 64 * 1024 * 1024},   # above glibc's cap: would be silently refused
    {"trim_threshold": 2**31},
])
def test_bad_thresholds_raise_before_touching_the_allocator(kwargs):
    with pytest.raises(ValueError):
        perf.keep_freed_memory(**kwargs)


def test_glibc_probe_is_none_or_has_mallopt():
    libc = perf._glibc()
    assert libc is None or hasattr(libc, "mallopt")


def test_blas_threads_sets_and_restores_the_count_in_a_fresh_process():
    out = _run(
        "import json\n"
        "import numpy as np\n"
        "import fundl.perf as p\n"
        "before = p.get_blas_threads()\n"
        "with p.blas_threads(1) as inside:\n"
        "    a = np.ones((64, 64), np.float32); s = float((a @ a).sum())\n"
        "after = p.get_blas_threads()\n"
        "print(json.dumps([before, inside, after, s]))")
    before, inside, after, s = json.loads(out)
    assert s == 64.0 ** 3
    if not before:
        pytest.skip("no OpenBLAS or MKL found in this numpy")
    assert set(inside.values()) == {1} and after == before


def test_blas_threads_refuses_a_bad_count():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            perf.set_blas_threads(bad)
