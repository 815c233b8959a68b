"""fundl's benchmark: training-step speed against PyTorch eager, the machine's GEMM rate
and (MLP and CNN, SGD) a hand-written numpy reference.

    python3 -m benchmarks.run                         # full run (every workload, SGD and Adam)
    python3 -m benchmarks.run --quick                 # fewer repeats, for a look
    python3 -m benchmarks.run --workloads lstm transformer --optimizers adam
    python3 -m benchmarks.run --quick --size tiny     # a smoke run at the tests' tiny sizes
    python3 -m benchmarks.run --help

The parent process starts one worker subprocess per allocator setting
("default": glibc as it comes; "keep": :func:`fundl.perf.keep_freed_memory`),
because ``mallopt`` is process-wide and cannot be undone.  Each worker measures
every workload with every implementation, interleaved (round-robin over the
implementations within each repeat, the starting one rotated), after warm-up,
and returns medians and spreads as JSON; the parent prints two tables: every
implementation's row, then fundl against PyTorch per workload (times, their
ratio, the step's matmul FLOPs and each framework's share of the GEMM limit,
``flops / sgemm rate / step time``, and the first-step losses).
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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

FRAMEWORKS = ("fundl", "numpy", "torch", "jax")
#: The workloads (see :mod:`benchmarks.workloads`).
KINDS = ("mlp", "cnn", "cnn_bn", "lstm", "gru_paper", "gru128", "transformer")
#: Which thread pool each implementation's heavy work runs on.
THREAD_POOL = {"fundl": "numpy BLAS", "numpy": "numpy BLAS", "torch": "torch", "jax": "xla",
               "before": "numpy BLAS"}
#: The row of the fundl of another checkout (``--against PATH``), timed with the others.
BEFORE = "before"


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
    """First- and second-step losses of every implementation, and fundl's params after one
    step against the numpy reference's (max abs difference)."""
    impls = wl.implementations(which)
    out: Dict[str, Any] = {"loss": {k: float(v.step()) for k, v in impls.items()}}
    if "fundl" in impls and "numpy" in impls:
        from fundl import tree
        ref = impls["numpy"].ref.params_list()
        mine = [np.asarray(a) for _, a in tree.flatten_with_paths(impls["fundl"].ts.params)]
        out["param_max_abs_diff"] = max(float(np.max(np.abs(a - b.reshape(a.shape))))
                                        for a, b in zip(mine, ref))
    out["loss2"] = {k: float(v.step()) for k, v in impls.items()}
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
                     clock=time.perf_counter, settle_s: float = 0.25,
                     extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    impls = wl.implementations(which)
    impls.update(extra or {})   # e.g. another checkout's fundl (--against), interleaved too
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
        if k in ("fundl", "numpy", BEFORE):
            rows[k]["peak_infer_bytes"] = _peak_bytes(impls[k].infer)
            rows[k]["peak_step_bytes"] = _peak_bytes(impls[k].step)
    return rows


def _batches(args) -> Tuple[List[int], int]:
    """The MLP batches and the CNN batch: as given, else 32/128/512 and 64 (``--size tiny``: 8, 2)."""
    tiny = getattr(args, "size", "full") == "tiny"
    mlp = args.mlp_batches or ([8] if tiny else [32, 128, 512])
    cnn = args.cnn_batch or (2 if tiny else 64)
    return list(mlp), int(cnn)


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
    mlp_batches, cnn_batch = _batches(args)
    spec = dict(batches=tuple(mlp_batches), cnn_batch=cnn_batch,
                size=getattr(args, "size", "full"), names=getattr(args, "workloads", None) or None,
                optimizers=getattr(args, "optimizers", None) or ("sgd", "adam"))
    befores = [None] * 1000
    if getattr(args, "against", None):
        from .versions import load, workloads_for
        befores = workloads_for(load(args.against, "before")).workloads(**spec)
        result["against"] = args.against
    for wl, before in zip(workloads(**spec), befores):
        entry = {"name": wl.name, "opt": wl.optimizer, "batch": wl.batch, "flops": wl.flops,
                 "fundl_skip": wl.fundl_skip}
        entry["check"] = _check_against_reference(wl, which)
        extra = {}
        if before is not None and before.fundl_skip is None:
            extra[BEFORE] = before.implementations(("fundl",))["fundl"]
            entry["check"]["loss"][BEFORE] = float(
                before.implementations(("fundl",))["fundl"].step())
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        entry["rows"] = measure_workload(wl, which, args.repeats, args.target_ms / 1e3, clock,
                                         settle_s=0.25 if args.repeats > 2 else 0.0, extra=extra)
        entry["notes"] = {k: v for k, v in wl.notes.items()
                          if k in which and k not in result["skipped"]}
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
        lines.append(f"[{res['allocator']}] sgemm {res.get('gemm_n', 1024)}^3: "
                     f"{g['median']:.1f} GFLOP/s median, "
                     f"{g['best']:.1f} best; load average {res['loadavg_start'][0]:.2f} -> "
                     f"{res['loadavg_end'][0]:.2f}")
    load = max(r["loadavg_start"][0] for r in results + [first])
    if load > 0.5 * (os.cpu_count() or 1):
        lines.append(f"WARNING: the machine was busy (load average up to {load:.2f} on "
                     f"{os.cpu_count()} cores): multi-threaded BLAS timings are unreliable")
    lines.append(f"clock: {first.get('clock', 'wall')}")
    lines.append("")
    hdr = (f"{'workload':<12}{'opt':<5}{'batch':>6} {'alloc':<8}{'impl':<7}{'ms/step':>9}"
           f"{'spread':>8}{'ex/s':>10}{'vs numpy':>9}{'GFLOP/s':>9}{'%sgemm':>7}{'inferMiB':>9}"
           f"{'stepMiB':>8}  first-step loss")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    groups = _groups(results)
    for (name, opt, batch), per_alloc in groups.items():
        for i, (alloc, (res, wl)) in enumerate(per_alloc.items()):
            rows = wl["rows"]
            ref = rows.get("numpy", {}).get("step_s")
            gemm = res["sgemm_gflops"]["median"]
            lead = f"{name:<12}{opt:<5}{batch:>6} {alloc:<8}"
            for impl in FRAMEWORKS + (BEFORE,):
                if impl not in rows:
                    continue
                r = rows[impl]
                t = r["step_s"]
                ratio = f"{ref / t:.2f}x" if ref else "-"
                gf = wl["flops"] / t / 1e9
                loss = wl["check"]["loss"].get(impl)
                loss_s = "-" if loss is None else f"{loss:.6f}"
                lines.append(
                    f"{lead}{impl:<7}{t * 1e3:>9.3f}"
                    f"{'±%.0f%%' % (50 * r['iqr_s'] / t):>8}{batch / t:>10.0f}{ratio:>9}"
                    f"{gf:>9.1f}{100 * gf / gemm:>6.0f}%"
                    f"{_fmt_bytes(r.get('peak_infer_bytes')):>9}{_fmt_bytes(r.get('peak_step_bytes')):>8}"
                    f"  {loss_s}")
            if wl.get("fundl_skip"):
                lines.append(f"{lead}fundl  skipped: {wl['fundl_skip']}")
            for impl, why in (wl.get("notes", {}).items() if i == 0 else ()):
                lines.append(f"{lead}{impl:<7}none: {why}")
            d = wl["check"].get("param_max_abs_diff")
            if d is not None:
                lines.append(f"{'':<32}fundl vs numpy params after one step: max |diff| {d:.2e}")
    lines.append("")
    lines.append("ms/step: median over repeats; spread: half the interquartile range; vs numpy: "
                 "speed relative to the hand-written numpy reference (>1 is faster); GFLOP/s: "
                 "matmul FLOPs of the step / time; %sgemm: that rate as a share of the measured "
                 "sgemm rate (the GEMM limit); inferMiB/stepMiB: peak numpy allocation "
                 "(tracemalloc) during one apply / one training step, above what was live before.")
    lines.append("")
    lines.append(format_torch_table(results))
    if first.get("against"):
        lines.append("")
        lines.append(format_before_table(results))
    return "\n".join(lines)


def format_before_table(results: List[Dict[str, Any]]) -> str:
    """This checkout's fundl against the one of ``--against``, timed interleaved."""
    hdr = (f"{'workload':<12}{'opt':<5}{'batch':>6} {'alloc':<8}{'fundl ms':>10}{'before ms':>10}"
           f"{'before/fundl':>13}{'loss fundl':>12}{'loss before':>12}")
    lines = [f"fundl (this checkout) against fundl at {results[0]['against']} "
             "(before/fundl > 1: this checkout is faster)", hdr, "-" * len(hdr)]
    for (name, opt, batch), per_alloc in _groups(results).items():
        for alloc, (_, wl) in per_alloc.items():
            rows = wl["rows"]
            if "fundl" not in rows or BEFORE not in rows:
                continue
            tf, tb = rows["fundl"]["step_s"], rows[BEFORE]["step_s"]
            loss = wl["check"]["loss"]
            lines.append(f"{name:<12}{opt:<5}{batch:>6} {alloc:<8}{tf * 1e3:>10.3f}{tb * 1e3:>10.3f}"
                         f"{tb / tf:>12.3f}x{loss.get('fundl', float('nan')):>12.6f}"
                         f"{loss.get(BEFORE, float('nan')):>12.6f}")
    return "\n".join(lines)


def _groups(results: List[Dict[str, Any]]) -> Dict[Any, Dict[str, Any]]:
    """``{(name, opt, batch): {allocator: (result, workload entry)}}`` in run order."""
    by_key: Dict[Any, Dict[str, Any]] = {}
    for res in results:
        for wl in res["workloads"]:
            key = (wl["name"], wl.get("opt", "sgd"), wl["batch"])
            by_key.setdefault(key, {})[res["allocator"]] = (res, wl)
    return by_key


def format_torch_table(results: List[Dict[str, Any]]) -> str:
    """fundl against PyTorch eager, one line per workload, optimizer, batch and allocator."""
    hdr = (f"{'workload':<12}{'opt':<5}{'batch':>6} {'alloc':<8}{'fundl ms':>10}{'torch ms':>10}"
           f"{'torch/fundl':>12}{'GFLOP/step':>11}{'fundl %GEMM':>12}{'torch %GEMM':>12}"
           f"{'loss fundl':>12}{'loss torch':>12}{'step-2 |dloss|':>15}")
    lines = ["fundl vs PyTorch eager (torch/fundl = torch's step time / fundl's, >1: fundl "
             "faster; %GEMM = FLOPs / sgemm rate / step time)", hdr, "-" * len(hdr)]
    for (name, opt, batch), per_alloc in _groups(results).items():
        for alloc, (res, wl) in per_alloc.items():
            rows, check = wl["rows"], wl["check"]
            gemm = res["sgemm_gflops"]["median"] * 1e9
            lead = f"{name:<12}{opt:<5}{batch:>6} {alloc:<8}"
            if "fundl" not in rows or "torch" not in rows:
                missing = "fundl" if "fundl" not in rows else "torch"
                why = (wl.get("notes", {}).get(missing) or res.get("skipped", {}).get(missing)
                       or (wl.get("fundl_skip") if missing == "fundl" else None) or "not requested")
                lines.append(f"{lead}no {missing}: {why}")
                continue
            tf, tt = rows["fundl"]["step_s"], rows["torch"]["step_s"]
            lf, lt = check["loss"]["fundl"], check["loss"]["torch"]
            d2 = abs(check["loss2"]["fundl"] - check["loss2"]["torch"]) if "loss2" in check else None
            lines.append(
                f"{lead}{tf * 1e3:>10.3f}{tt * 1e3:>10.3f}{tt / tf:>11.2f}x"
                f"{wl['flops'] / 1e9:>11.4g}{100 * wl['flops'] / gemm / tf:>11.1f}%"
                f"{100 * wl['flops'] / gemm / tt:>11.1f}%{lf:>12.6f}{lt:>12.6f}"
                f"{'-' if d2 is None else f'{d2:.1e}':>15}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 repeats of ~20 ms each")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per implementation")
    p.add_argument("--target-ms", type=float, default=60.0,
                   help="approximate length of one timed repeat (steps are batched to it)")
    p.add_argument("--workloads", "--only", dest="workloads", nargs="+", default=list(KINDS),
                   choices=KINDS, metavar="NAME",
                   help=f"run only these workloads (default all: {', '.join(KINDS)})")
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adam"], choices=["sgd", "adam"],
                   help="the optimizer variants of every workload (default both)")
    p.add_argument("--size", choices=["full", "tiny"], default="full",
                   help="full: the benchmark's sizes; tiny: the tests' tiny sizes, for a smoke run")
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    p.add_argument("--mlp-batches", nargs="+", type=int, default=None,
                   help="the MLP's batch sizes (default 32 128 512; --size tiny: 8)")
    p.add_argument("--cnn-batch", type=int, default=None,
                   help="the CNN's batch size (default 64; --size tiny: 2)")
    p.add_argument("--allocator", nargs="+", default=["default", "keep"],
                   choices=["default", "keep"], help="allocator settings, one subprocess each")
    p.add_argument("--gemm-n", type=int, default=1024, help="size of the reference sgemm")
    p.add_argument("--threads", type=int, default=None,
                   help="set OPENBLAS/OMP/MKL thread counts (and torch's) in the workers")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: time.perf_counter (default); cpu: time.process_time, robust to "
                        "other load on the machine but meaningful only with --threads 1")
    p.add_argument("--against", metavar="PATH",
                   help="also time the fundl of the checkout at PATH (e.g. a git worktree of an "
                        "older commit), interleaved with this one: a before/after table")
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
    mlp_batches, cnn_batch = _batches(args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for alloc in args.allocator:
        cmd = [sys.executable, "-m", "benchmarks.run", "--worker", "--allocator", alloc,
               "--repeats", str(args.repeats), "--target-ms", str(args.target_ms),
               "--workloads", *args.workloads, "--optimizers", *args.optimizers,
               "--size", args.size, "--frameworks", *args.frameworks,
               "--mlp-batches", *map(str, mlp_batches), "--cnn-batch", str(cnn_batch),
               "--gemm-n", str(args.gemm_n), "--clock", args.clock]
        if args.against:
            cmd += ["--against", os.path.abspath(args.against)]
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
