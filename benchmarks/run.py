"""fundl's benchmark: training-step throughput against a hand-written numpy reference.

    python3 -m benchmarks.run                 # full run (a few minutes on 2 cores)
    python3 -m benchmarks.run --quick         # fewer repeats, for a look
    python3 -m benchmarks.run --help

The parent process starts one worker subprocess per allocator setting
("default": glibc as it comes; "keep": :func:`fundl.perf.keep_freed_memory`),
because ``mallopt`` is process-wide and cannot be undone.  Each worker measures
every workload with every implementation, interleaved (round-robin over the
implementations within each repeat, the starting one rotated), after warm-up,
and returns medians and spreads as JSON; the parent prints one table.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any, Dict, List, Optional

import numpy as np

FRAMEWORKS = ("fundl", "numpy", "torch", "jax")
#: Which thread pool each implementation's heavy work runs on.
THREAD_POOL = {"fundl": "numpy BLAS", "numpy": "numpy BLAS", "torch": "torch", "jax": "xla"}


# --- machine facts ----------------------------------------------------------

def blas_info() -> Dict[str, Any]:
    """The BLAS numpy uses (``numpy.show_config``) and its thread count."""
    info: Dict[str, Any] = {}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["name"] = cfg.get("name")
        info["version"] = cfg.get("version")
        info["config"] = cfg.get("openblas configuration", "")
    except Exception as err:  # noqa: BLE001 - older numpy: no dict mode
        info["name"] = f"unknown ({err})"
    info["threads"] = _blas_threads()
    return info


def _blas_threads() -> Any:
    try:
        import threadpoolctl  # optional
        pools = threadpoolctl.threadpool_info()
        return {p.get("internal_api"): p.get("num_threads") for p in pools}
    except ImportError:
        pass
    # No threadpoolctl: ask a loaded OpenBLAS directly.
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        libs = set()
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("openblas_get_num_threads", "openblas_get_num_threads64_",
                    "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.restype = ctypes.c_int
                return {"openblas": int(fn())}
    return {"env OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "unset")}


def sgemm_gflops(n: int = 1024, repeats: int = 7) -> Dict[str, float]:
    """The machine's float32 GEMM rate: median and best of ``repeats`` n^3 matmuls."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    return {"median": flops / statistics.median(times) / 1e9, "best": flops / min(times) / 1e9}


# --- measuring --------------------------------------------------------------

def _check_against_reference(wl, which) -> Dict[str, Any]:
    """First-step losses of every implementation, and fundl's params after one step
    against the numpy reference's (max abs difference)."""
    impls = wl.implementations(which)
    out: Dict[str, Any] = {"loss": {k: float(v.step()) for k, v in impls.items()}}
    if "fundl" in impls and "numpy" in impls:
        from fundl import tree
        ref = impls["numpy"].ref.params_list()
        mine = [np.asarray(a) for _, a in tree.flatten_with_paths(impls["fundl"].ts.params)]
        out["param_max_abs_diff"] = max(float(np.max(np.abs(a - b.reshape(a.shape))))
                                        for a, b in zip(mine, ref))
    return out


def _peak_bytes(fn) -> int:
    """Peak bytes numpy allocated during ``fn()`` above what was live before (tracemalloc)."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return peak - base


def measure_workload(wl, which, repeats: int, target_s: float,
                     clock=time.perf_counter, settle_s: float = 0.25) -> Dict[str, Any]:
    impls = wl.implementations(which)
    names = list(impls)
    # warm-up (JIT compiles, caches, allocator) and calibrate steps per measurement
    inner: Dict[str, int] = {}
    for k in names:
        impls[k].step()
        t0 = clock()
        impls[k].step()
        one = max(clock() - t0, 1e-5)
        inner[k] = max(1, int(round(target_s / one)))
        for _ in range(min(inner[k], 3)):
            impls[k].step()
    samples: Dict[str, List[float]] = {k: [] for k in names}
    prev_pool = None
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            step, n = impls[k].step, inner[k]
            pool = THREAD_POOL.get(k, k)
            if prev_pool is not None and pool != prev_pool:
                # Another library's thread pool ran last: OpenBLAS's idle threads spin for
                # up to ~0.1 s after a call and would steal the cores from torch's or XLA's
                # threads (and vice versa).  Let them park first.
                time.sleep(settle_s)
            prev_pool = pool
            # Every sample starts warm, whoever ran before: untimed steps for a third of
            # the sample's length (at least one).  With one untimed step only after a
            # change of thread pool, the implementation that came first after it (most
            # often fundl) measured 3-5% slower at MLP batch 32 than without the switch.
            for _ in range(max(1, n // 3)):
                step()
            t0 = clock()
            for _ in range(n):
                step()
            samples[k].append((clock() - t0) / n)
    rows = {}
    for k in names:
        s = sorted(samples[k])
        med = statistics.median(s)
        q1, q3 = np.percentile(s, [25, 75])
        rows[k] = {"step_s": med, "min_s": s[0], "max_s": s[-1], "iqr_s": float(q3 - q1),
                   "steps_per_sample": inner[k], "samples": len(s)}
    # peak memory: numpy allocations only (tracemalloc sees numpy's data buffers)
    for k in names:
        if k in ("fundl", "numpy"):
            rows[k]["peak_infer_bytes"] = _peak_bytes(impls[k].infer)
            rows[k]["peak_step_bytes"] = _peak_bytes(impls[k].step)
    return rows


def worker(args) -> Dict[str, Any]:
    from fundl import perf
    kept = perf.keep_freed_memory() if args.allocator == "keep" else False
    from . import others
    from .workloads import workloads
    which = tuple(args.frameworks)
    result: Dict[str, Any] = {
        "allocator": args.allocator, "keep_freed_memory": kept,
        "blas": blas_info(), "sgemm_gflops": sgemm_gflops(args.gemm_n),
        "numpy": np.__version__, "python": platform.python_version(),
        "versions": others.versions() if set(which) & {"torch", "jax"} else {},
        "skipped": {}, "workloads": [], "loadavg_start": os.getloadavg(), "gemm_n": args.gemm_n,
        "clock": args.clock,
    }
    for name in ("torch", "jax"):
        if name in which:
            why = others.unavailable(name)
            if why:
                result["skipped"][name] = why
    for wl in workloads(batches=tuple(args.mlp_batches), cnn_batch=args.cnn_batch):
        if wl.name not in args.only:
            continue
        entry = {"name": wl.name, "batch": wl.batch, "flops": wl.flops,
                 "fundl_skip": wl.fundl_skip}
        entry["check"] = _check_against_reference(wl, which)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        entry["rows"] = measure_workload(wl, which, args.repeats, args.target_ms / 1e3, clock,
                                         settle_s=0.25 if args.repeats > 2 else 0.0)
        result["workloads"].append(entry)
    result["loadavg_end"] = os.getloadavg()
    return result


# --- the parent: run workers, print the table --------------------------------

def _fmt_bytes(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def format_table(results: List[Dict[str, Any]]) -> str:
    first = results[0]
    lines = []
    blas = first["blas"]
    lines.append(f"date {datetime.date.today()}  python {first['python']}  numpy {first['numpy']}  "
                 f"cores {os.cpu_count()}  machine {platform.machine()} {platform.processor() or ''}")
    lines.append(f"BLAS {blas.get('name')} {blas.get('version')}  threads {blas.get('threads')}")
    lines.append(f"  {blas.get('config', '')}")
    for k, v in first.get("versions", {}).items():
        lines.append(f"{k} {v}")
    for k, v in first.get("skipped", {}).items():
        lines.append(f"{k}: skipped, {v}")
    for res in results:
        g = res["sgemm_gflops"]
        lines.append(f"[{res['allocator']}] sgemm {res.get('gemm_n', 1024)}^3: {g['median']:.1f} GFLOP/s median, "
                     f"{g['best']:.1f} best; load average {res['loadavg_start'][0]:.2f} -> "
                     f"{res['loadavg_end'][0]:.2f}")
    load = max(r["loadavg_start"][0] for r in results + [first])
    if load > 0.5 * (os.cpu_count() or 1):
        lines.append(f"WARNING: the machine was busy (load average up to {load:.2f} on "
                     f"{os.cpu_count()} cores): multi-threaded BLAS timings are unreliable")
    lines.append(f"clock: {first.get('clock', 'wall')}")
    lines.append("")
    hdr = (f"{'workload':<9}{'batch':>6} {'alloc':<8}{'impl':<7}{'ms/step':>9}{'spread':>8}"
           f"{'ex/s':>10}{'vs numpy':>9}{'GFLOP/s':>9}{'%sgemm':>7}{'inferMiB':>9}{'stepMiB':>8}"
           f"  first-step loss")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    by_key: Dict[Any, Dict[str, Any]] = {}
    for res in results:
        for wl in res["workloads"]:
            by_key.setdefault((wl["name"], wl["batch"]), {})[res["allocator"]] = (res, wl)
    for (name, batch), per_alloc in by_key.items():
        for alloc, (res, wl) in per_alloc.items():
            rows = wl["rows"]
            ref = rows.get("numpy", {}).get("step_s")
            gemm = res["sgemm_gflops"]["median"]
            for impl in FRAMEWORKS:
                if impl not in rows:
                    continue
                r = rows[impl]
                t = r["step_s"]
                ratio = f"{ref / t:.2f}x" if ref else "-"
                gf = wl["flops"] / t / 1e9
                loss = wl["check"]["loss"].get(impl)
                loss_s = "-" if loss is None else f"{loss:.6f}"
                lines.append(
                    f"{name:<9}{batch:>6} {alloc:<8}{impl:<7}{t * 1e3:>9.3f}"
                    f"{'±%.0f%%' % (50 * r['iqr_s'] / t):>8}{batch / t:>10.0f}{ratio:>9}"
                    f"{gf:>9.1f}{100 * gf / gemm:>6.0f}%"
                    f"{_fmt_bytes(r.get('peak_infer_bytes')):>9}{_fmt_bytes(r.get('peak_step_bytes')):>8}"
                    f"  {loss_s}")
            if wl.get("fundl_skip"):
                lines.append(f"{name:<9}{batch:>6} {alloc:<8}fundl  skipped: {wl['fundl_skip']}")
            d = wl["check"].get("param_max_abs_diff")
            if d is not None:
                lines.append(f"{'':<24}fundl vs numpy params after one step: max |diff| {d:.2e}")
    lines.append("")
    lines.append("ms/step: median over repeats; spread: half the interquartile range; vs numpy: "
                 "speed relative to the hand-written numpy reference (>1 is faster); GFLOP/s: "
                 "matmul FLOPs of the step / time; inferMiB/stepMiB: peak numpy allocation "
                 "(tracemalloc) during one apply / one training step, above what was live before.")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 repeats of ~20 ms each")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per implementation")
    p.add_argument("--target-ms", type=float, default=60.0,
                   help="approximate length of one timed repeat (steps are batched to it)")
    p.add_argument("--only", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    p.add_argument("--mlp-batches", nargs="+", type=int, default=[32, 128, 512])
    p.add_argument("--cnn-batch", type=int, default=64)
    p.add_argument("--allocator", nargs="+", default=["default", "keep"],
                   choices=["default", "keep"], help="allocator settings, one subprocess each")
    p.add_argument("--gemm-n", type=int, default=1024, help="size of the reference sgemm")
    p.add_argument("--threads", type=int, default=None,
                   help="set OPENBLAS/OMP/MKL thread counts (and torch's) in the workers")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: time.perf_counter (default); cpu: time.process_time, robust to "
                        "other load on the machine but meaningful only with --threads 1")
    p.add_argument("--json", help="also write the raw results to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.repeats, args.target_ms = 3, 20.0
    if args.worker:
        args.allocator = args.allocator[0]
        json.dump(worker(args), sys.stdout)
        return 0
    results = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for alloc in args.allocator:
        cmd = [sys.executable, "-m", "benchmarks.run", "--worker", "--allocator", alloc,
               "--repeats", str(args.repeats), "--target-ms", str(args.target_ms),
               "--only", *args.only, "--frameworks", *args.frameworks,
               "--mlp-batches", *map(str, args.mlp_batches), "--cnn-batch", str(args.cnn_batch),
               "--gemm-n", str(args.gemm_n), "--clock", args.clock]
        env = dict(os.environ)
        if args.threads:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(args.threads)
        print(f"running: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"worker for allocator {alloc!r} failed with code {proc.returncode}",
                  file=sys.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout))
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
