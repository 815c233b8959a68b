"""Where fundl's step loses to the hand-written numpy reference, measured.

The reference (``benchmarks/reference.py``) knows the whole network, so it can
take shortcuts that fundl's independent, pure layers cannot or need help for:

- **in-place ReLU**: it overwrites the previous layer's output with the ReLU,
  and the incoming gradient with the masked gradient.  A fundl layer never
  writes into an array it is given, except one that ``serial`` donates to it
  (``Traits.fresh``, see :mod:`fundl.plan`); the row "without donation" shows
  what that buys.
- **ReLU after the max pool**: ``relu(max(x)) == max(relu(x))``, so both the
  reference and fundl's ``serial`` (see :func:`fundl.plan.run_order`) run
  a ReLU that precedes a max pool after it, on the 4x smaller pooled array; the
  pool then sees the conv output, which has no ties at 0 to break.  The row
  "ReLU before pool" runs the layers as written, which is what fundl did before.

The rows are timed interleaved, with the reference; the last case, a tiny
8-8-8-10 MLP at batch 2, where the arithmetic is negligible, shows the per-step
Python overhead.  From the repository root::

    python3 -m benchmarks.gap            # about 1 minute
    python3 -m benchmarks.gap --quick
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

import numpy as np

import fundl
from fundl import Layer, elementwise_layer
from fundl.layers.activations import relu

from .reference import CNNReference, MLPReference
from .run import measure_workload
from .workloads import FundlImpl, RefImpl, cnn_model, make_batch, mlp_model


# --- the variants' layers ------------------------------------------------------------

def relu_not_donated() -> Layer:
    """fundl's ReLU without the ``out=`` support that lets ``serial`` donate to it
    (still declared a ReLU: it runs after a max pool)."""
    return elementwise_layer("relu", lambda x: np.maximum(x, 0),
                             lambda x, y, dy: np.multiply(dy, y > 0), saves="y", fresh=("dx",))


def relu_kept_before_pool() -> Layer:
    """fundl's ReLU of another kind than ``"relu"``: the planner then runs it before the
    max pool that follows it, as written, instead of after it."""
    return relu().replace(kind="relu_as_written")


# --- variants ----------------------------------------------------------------------

class Variants:
    """A ``measure_workload``-compatible set of implementations on one batch."""

    def __init__(self, in_shape, batch: int, models: Dict[str, Any], reference) -> None:
        self.in_shape, self.batch = in_shape, batch
        self.models, self.reference = models, reference

    def implementations(self, which=None) -> Dict[str, Any]:
        x, y = make_batch(1, self.batch, self.in_shape)
        impls: Dict[str, Any] = {}
        for name, build in self.models.items():
            impls[name] = FundlImpl(build(), self.in_shape, x, y)
        params = impls["fundl"].ts.params  # every variant starts from the same weights
        impls["numpy"] = RefImpl(self.reference(params), x, y)
        return impls


def cases(mlp_batches) -> List[Any]:
    out = [("cnn 64", Variants((28, 28, 1), 64, {
        "fundl": cnn_model,
        "without donation": lambda: cnn_model(relu_layer=relu_not_donated),
        "ReLU before pool": lambda: cnn_model(relu_layer=relu_kept_before_pool),
    }, CNNReference))]
    for b in mlp_batches:
        out.append((f"mlp {b}", Variants((784,), b, {
            "fundl": mlp_model,
            "without donation": lambda: mlp_model(relu_not_donated),
        }, MLPReference)))
    out.append(("tiny mlp 2", Variants((8,), 2, {"fundl": lambda: mlp_model(sizes=(8, 8, 10))},
                                       MLPReference)))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 repeats of ~20 ms")
    parser.add_argument("--mlp-batches", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--default-allocator", action="store_true",
                        help="do not call fundl.perf.keep_freed_memory() first")
    args = parser.parse_args(argv)
    if not args.default_allocator:
        fundl.perf.keep_freed_memory()
    repeats, target = (5, 0.02) if args.quick else (15, 0.06)
    print(f"allocator: {'default' if args.default_allocator else 'keep_freed_memory'}; "
          f"{repeats} interleaved repeats of ~{target * 1e3:.0f} ms; median step time")
    for label, variants in cases(args.mlp_batches):
        rows = measure_workload(variants, None, repeats, target, settle_s=0.0)
        ref = rows["numpy"]["step_s"]
        print(f"\n{label}")
        for name, row in rows.items():
            t = row["step_s"]
            unit, scale = ("us", 1e6) if ref < 1e-3 else ("ms", 1e3)
            print(f"  {name:18s} {t * scale:9.3f} {unit}  {ref / t:5.2f}x the reference's speed"
                  f"  ({(t - ref) * scale:+.3f} {unit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
