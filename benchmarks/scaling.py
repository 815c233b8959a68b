"""Data-parallel scaling: examples/s of the benchmark's MLP and CNN on 1 and 2 cores.

    python3 -m benchmarks.scaling                # ~1 minute on 2 idle cores
    python3 -m benchmarks.scaling --smoke        # tiny batch, 2 steps: checks it runs
    python3 -m benchmarks.scaling --help

Three configurations of the same global batch, each a fresh launch with
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` set:

- ``1x1``: one process, one BLAS thread (``fundl.make_step``);
- ``1x2``: one process, two BLAS threads;
- ``2x1``: ``mpiexec -n 2``, one thread each, each rank half of the batch
  (``fundl.distributed.make_step`` with ``mean_gradients``).

The workloads are ``benchmarks/workloads.py``'s: ``mlp`` (784-512-512-10,
the "MLP-512", batch ``--mlp-batch``, 512) and ``cnn`` (28x28x1 conv-pool-
conv-pool-dense, batch ``--cnn-batch``, 64), SGD lr 0.01 on a fixed batch.
Each worker warms up, then times ``--repeats`` samples of ``--steps`` steps
(the ranks start each sample together after a barrier) and reports the
median time per step; the 2-rank worker also times the gradient averaging
alone (``mean_gradients``: pack, ``Allreduce``, scale).  The table shows
ms/step, examples/s, the speed-up over ``1x1`` and the scaling efficiency
(speed-up / cores used), then the ring-allreduce model of benchmarks/README.md
("Data-parallel scaling") applied to the measured ``1x1`` step time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (("1x1", 1, 1), ("1x2", 1, 2), ("2x1", 2, 1))  # (name, processes, threads each)

#: The model of benchmarks/README.md: links (bytes/s, per-message latency in s).
LINKS = {"10 GbE (TCP)": (1.25e9, 30e-6), "100 Gb/s (RDMA)": (12.5e9, 3e-6)}


def ring_allreduce_seconds(nbytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    """A ring allreduce of ``nbytes`` over ``ranks``: ``2 (N-1)/N`` of the bytes over each
    link (reduce-scatter, then all-gather) and ``2 (N-1)`` messages' latency."""
    if ranks < 2:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


# --- worker -------------------------------------------------------------------

def worker(args: argparse.Namespace) -> None:
    import numpy as np

    import fundl as fl
    from benchmarks.workloads import cnn_model, make_batch, mlp_model

    comm = None
    if args.mpi:
        from fundl import distributed as dist
        comm = dist.world()
    rank, size = (comm.rank, comm.size) if comm else (0, 1)
    builders = {"mlp": (mlp_model, (784,), args.mlp_batch), "cnn": (cnn_model, (28, 28, 1),
                                                                    args.cnn_batch)}
    results: Dict[str, Any] = {}
    for name in args.only:
        build, in_shape, batch = builders[name]
        model = build()
        x, y = make_batch(1, batch, in_shape)
        loss = fl.losses.softmax_cross_entropy
        if comm is None:
            opt = fl.optim.sgd()
            step = fl.make_step(model, loss, opt)
            part = (x, y)
        else:
            opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.sgd())
            step = dist.make_step(model, loss, opt, comm)
            lo, hi = fl.data.batching.shard_range(batch, rank, size)
            part = (x[lo:hi], y[lo:hi])
        ts = fl.TrainState.create(fl.random.key(0), model, opt, in_shape)
        if comm is not None:
            ts = dist.broadcast(comm, ts)
        for _ in range(args.warmup):
            ts, _ = step(ts, part, 0.01)
        samples: List[float] = []
        for _ in range(args.repeats):
            if comm is not None:
                comm.barrier()
            start = time.perf_counter()
            for _ in range(args.steps):
                ts, metrics = step(ts, part, 0.01)
            if comm is not None:
                comm.barrier()
            samples.append((time.perf_counter() - start) / args.steps)
        entry = {"step_s": statistics.median(samples), "batch": batch,
                 "grad_bytes": int(sum(a.nbytes for a in fl.tree.leaves(ts.params))),
                 "loss": metrics["loss"]}
        if comm is not None:  # the gradient averaging alone, on this step's gradient shapes
            mean = dist.mean_gradients(comm)
            grads = fl.tree.map(np.ones_like, ts.params)
            reduce_samples = []
            for _ in range(args.repeats):
                comm.barrier()
                start = time.perf_counter()
                for _ in range(args.steps):
                    out, _ = mean.update(None, grads, {})
                    del out
                reduce_samples.append((time.perf_counter() - start) / args.steps)
            entry["reduce_s"] = statistics.median(reduce_samples)
        results[name] = entry
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)


# --- parent -------------------------------------------------------------------

def _mpiexec() -> Optional[str]:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def launch(args: argparse.Namespace, processes: int, threads: int) -> Dict[str, Any]:
    """One worker launch; its RESULT line as a dict."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))})
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker",
           "--only", *args.only, "--mlp-batch", str(args.mlp_batch),
           "--cnn-batch", str(args.cnn_batch), "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if processes > 1:
        mpiexec = _mpiexec()
        if mpiexec is None:
            raise SystemExit('benchmarks.scaling: no mpiexec; pip install "fundl[mpi]"')
        env.setdefault("OMPI_MCA_btl", "self,sm")
        env.setdefault("OMPI_MCA_pml", "ob1")
        if os.geteuid() == 0:
            env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
        cmd = [mpiexec, "--oversubscribe", "--bind-to", "none", "-n", str(processes)] + cmd + \
              ["--mpi"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {processes}x{threads} failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def report(runs: Dict[str, Dict[str, Any]], only: List[str]) -> str:
    lines = [f"{'workload':10s} {'config':6s} {'ms/step':>9s} {'examples/s':>11s} "
             f"{'speed-up':>9s} {'efficiency':>10s}"]
    for name in only:
        base = runs["1x1"][name]["step_s"]
        for config, processes, threads in CONFIGS:
            r = runs[config][name]
            speedup = base / r["step_s"]
            lines.append(f"{name + ' ' + str(r['batch']):10s} {config:6s} {1e3 * r['step_s']:9.2f} "
                         f"{r['batch'] / r['step_s']:11,.0f} {speedup:8.2f}x "
                         f"{100 * speedup / (processes * threads):9.0f}%")
        reduce_s = runs["2x1"][name].get("reduce_s")
        if reduce_s is not None:
            lines.append(f"{'':10s} 2x1 gradient averaging alone: {1e3 * reduce_s:.3f} ms/step "
                         f"({runs['2x1'][name]['grad_bytes'] / 2**20:.2f} MiB of float32)")
    lines.append("")
    lines.append("ring-allreduce model (weak scaling: every rank runs the 1x1 step on its own "
                 "batch, then averages; no overlap):")
    for name in only:
        compute = runs["1x1"][name]["step_s"]
        nbytes = runs["1x1"][name]["grad_bytes"]
        for link, (bandwidth, latency) in LINKS.items():
            cells = []
            for ranks in (8, 64):
                comm_s = ring_allreduce_seconds(nbytes, ranks, bandwidth, latency)
                cells.append(f"N={ranks}: {1e3 * (compute + comm_s):.2f} ms/step "
                             f"({100 * compute / (compute + comm_s):.0f}%)")
            lines.append(f"  {name:4s} {link:16s} " + "   ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--mlp-batch", type=int, default=512)
    p.add_argument("--cnn-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="steps per timed sample")
    p.add_argument("--repeats", type=int, default=9, help="timed samples (the median is shown)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    p.add_argument("--smoke", action="store_true",
                   help="batch 4, 1 step, 1 repeat: checks that every launch runs")
    p.add_argument("--json", help="also write the raw results to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.smoke:
        args.mlp_batch, args.cnn_batch, args.steps, args.repeats, args.warmup = 4, 4, 1, 1, 1
    runs = {config: launch(args, processes, threads) for config, processes, threads in CONFIGS}
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    print(report(runs, args.only))
    if args.smoke:
        print("(smoke run: tiny batches, one step; the numbers mean nothing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
