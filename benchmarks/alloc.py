"""The allocator's share of a training step, measured in fresh processes.

    python3 -m benchmarks.alloc                        # every workload, SGD, about 2 minutes
    python3 -m benchmarks.alloc --workloads cnn lstm --rounds 3
    python3 -m benchmarks.alloc --size tiny --rounds 1 # a smoke run (timings meaningless)

Each measurement is its own process, which builds one workload, optionally calls
:func:`fundl.perf.keep_freed_memory` first, runs a few warm-up steps and then
times ``--steps`` steps one by one (median), counting the minor page faults
(``getrusage``) over them.  The two settings alternate, round after round.

Why fresh processes: glibc returns a freed block to the operating system only
when it lies at the top of the heap.  In :mod:`benchmarks.run`'s worker, PyTorch's
and the reference's live arrays sit above fundl's, so fundl's freed memory is
reused there even with the default allocator; a process that only trains with
fundl (a user's script, :func:`fundl.fit`, the examples) gives it back after
every step and page-faults it in again on the next.  That is what this measures.
``--framework torch`` measures PyTorch's step the same way.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List

import numpy as np

from .workloads import KINDS

SETTINGS = ("default", "keep")


def _measure(kind: str, optimizer: str, setting: str, steps: int, size: str,
             framework: str) -> Dict[str, float]:
    """Runs in the child process: ``{"ms": median step ms, "faults": minor faults per step}``."""
    if setting == "keep":
        import fundl.perf
        fundl.perf.keep_freed_memory()
    from .workloads import workloads
    wl = workloads(batches=(32,), size=size, names=[kind], optimizers=[optimizer])[0]
    impl = wl.implementations([framework])[framework]
    for _ in range(3):
        impl.step()
    times: List[float] = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t = time.perf_counter()
        impl.step()
        times.append(time.perf_counter() - t)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"ms": float(np.median(times) * 1e3), "faults": faults / steps}


def run_child(kind: str, optimizer: str, setting: str, steps: int, size: str,
              framework: str) -> Dict[str, float]:
    """:func:`_measure` in a fresh ``python -m benchmarks.alloc --child`` process."""
    cmd = [sys.executable, "-m", "benchmarks.alloc", "--child", kind, optimizer, setting,
           str(steps), size, framework]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: Any = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        kind, optimizer, setting, steps, size, framework = argv[1:7]
        print(json.dumps(_measure(kind, optimizer, setting, int(steps), size, framework)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    ap.add_argument("--framework", default="fundl", choices=("fundl", "torch"))
    ap.add_argument("--rounds", type=int, default=2, help="processes per setting and workload")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per process")
    ap.add_argument("--size", default="full", choices=("full", "tiny"))
    args = ap.parse_args(argv)
    print(f"{args.framework} {args.optimizer}, fresh process per measurement, "
          f"{args.steps} timed steps each; ms/step (median) and minor page faults per step")
    print(f"{'workload':12s} {'default ms':>24s} {'faults':>8s} {'keep ms':>24s} {'faults':>8s} "
          f"{'keep/default':>12s}")
    for kind in args.workloads:
        got: Dict[str, List[Dict[str, float]]] = {s: [] for s in SETTINGS}
        for _ in range(args.rounds):
            for setting in SETTINGS:
                got[setting].append(run_child(kind, args.optimizer, setting, args.steps,
                                              args.size, args.framework))
        ms = {s: [r["ms"] for r in got[s]] for s in SETTINGS}
        faults = {s: float(np.median([r["faults"] for r in got[s]])) for s in SETTINGS}
        cells = {s: " / ".join(f"{v:.2f}" for v in ms[s]) for s in SETTINGS}
        ratio = float(np.median(ms["keep"]) / np.median(ms["default"]))
        print(f"{kind:12s} {cells['default']:>24s} {faults['default']:8.0f} "
              f"{cells['keep']:>24s} {faults['keep']:8.0f} {ratio:12.2f}")


if __name__ == "__main__":
    main()
