"""Where a workload's step time goes, in both frameworks: fundl layer by layer, PyTorch op by op.

    python3 -m benchmarks.breakdown transformer          # one workload (SGD), about 20 s
    python3 -m benchmarks.breakdown cnn_bn --repeats 30
    python3 -m benchmarks.breakdown lstm --size tiny     # a smoke run (timings meaningless)

fundl: every leaf layer of the model (``serial`` and ``residual`` are opened,
to a depth of three) is run on the input it sees in the step, through the same
plain ``vjp_fn`` (no hints), and its forward (``vjp``) and
backward (the pullback, with a fixed ``dy``) are timed separately: medians over
``--repeats``.  Layers run here in the order written (``serial``'s ReLU-after-pool
reordering is not applied) and each asks for its input gradient, so the sum is
an upper bound of the step's layer time; the step itself is timed too.

PyTorch: ``torch.profiler`` over ``--repeats`` steps of the same model
(:mod:`benchmarks.others`), the ops with the most self CPU time, per step.
Run it on a quiet machine: nothing here is interleaved.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, List, Tuple

import numpy as np

from fundl import random

from .workloads import KINDS, workloads


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def fundl_layers(model: Any, params: Any, state: Any, x: Any,
                 repeats: int) -> List[Tuple[str, str, float, float]]:
    """``(path, layer name, forward ms, backward ms)`` for each leaf layer of ``model``."""
    rows: List[Tuple[str, str, float, float]] = []
    key = random.key(1)

    def walk(layer, p, s, x, path, depth):
        if layer.children and layer.kind == "serial" and depth < 3:
            for k, child in layer.children:
                x = walk(child, p[k], s[k], x, f"{path}/{k}", depth + 1)
            return x
        if layer.children and layer.kind == "residual" and depth < 3:
            (k, child), = layer.children
            return x + walk(child, p[k], s[k], x, f"{path}/{k}", depth + 1)
        forward = lambda: layer.vjp_fn(p, s, x, key=key)  # noqa: E731
        y, _, _ = forward()
        dy = np.full_like(y, 0.01) if isinstance(y, np.ndarray) and y.dtype.kind == "f" else y
        fwd = _median_ms(forward, repeats)
        times = []
        for _ in range(repeats):
            pullback = forward()[2]
            t = time.perf_counter()
            pullback(dy)
            times.append(time.perf_counter() - t)
        rows.append((path or "/", layer.kind, fwd, float(np.median(times) * 1e3)))
        return y

    walk(model, params, state, x, "", 0)
    return rows


def torch_ops(impl: Any, repeats: int, limit: int) -> List[Tuple[str, float, int]]:
    """``(op, self CPU ms per step, calls per step)`` of the ``limit`` costliest ops."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            impl.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3 / repeats, round(e.count / repeats))
            for e in events[:limit]]


def main(argv: Any = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=KINDS)
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--size", default="full", choices=("full", "tiny"))
    ap.add_argument("--ops", type=int, default=15, help="how many torch ops to list")
    args = ap.parse_args(argv)
    wl = [w for w in workloads(batches=(32,), size=args.size, names=[args.workload],
                               optimizers=[args.optimizer])][0]
    which = ["fundl", "torch"]
    impls = wl.implementations(which)
    fundl_impl = impls["fundl"]
    for impl in impls.values():
        for _ in range(3):
            impl.step()
    print(f"{wl.name} {wl.optimizer} batch {wl.batch}: fundl step "
          f"{_median_ms(fundl_impl.step, args.repeats):.3f} ms")
    rows = fundl_layers(fundl_impl.model, fundl_impl.ts.params, fundl_impl.ts.state,
                        fundl_impl.x, args.repeats)
    width = max(len(r[0]) for r in rows)
    for path, name, f, b in rows:
        print(f"  {path:{width}s} {name:22s} fwd {f:8.3f}  bwd {b:8.3f} ms")
    print(f"  {'layers':{width}s} {'':22s} fwd {sum(r[2] for r in rows):8.3f}  "
          f"bwd {sum(r[3] for r in rows):8.3f} ms")
    torch_impl = impls.get("torch")
    if torch_impl is None:
        print("torch: " + wl.notes.get("torch", "not installed"))
        return
    print(f"torch step {_median_ms(torch_impl.step, args.repeats):.3f} ms; "
          "self CPU per step under the profiler:")
    for op, ms, calls in torch_ops(torch_impl, args.repeats, args.ops):
        print(f"  {op[:48]:48s} {ms:8.3f} ms  x{calls}")


if __name__ == "__main__":
    main()
