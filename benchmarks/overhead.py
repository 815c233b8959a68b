"""The fixed Python cost of a training step: ``make_step`` against the same layer calls by hand.

    python3 -m benchmarks.overhead              # a 8-8-8-10 MLP at batch 2, about 20 s
    python3 -m benchmarks.overhead --repeats 3  # a quicker look
    python3 -m benchmarks.overhead --against /tmp/old   # and another checkout's, interleaved

On a model this small the arithmetic is negligible, so a step's time is what its
Python code costs.  Both sides run the same layers (``dense(8), relu, dense(8),
relu, dense(10)``), the same loss (``softmax_cross_entropy``) and SGD:

- **make_step**: ``fundl.make_step(model, loss, sgd())``, the train state carried
  from step to step -- with everything it does besides the layers: the checks of
  the batch, the train state and the params against the model, the key split,
  ``serial``'s plan (donations, hints), the optimizer's tree walk;
- **by hand**: each layer's own function (``layer.vjp_fn``, what ``serial`` runs)
  called in a loop, the loss, each pullback in reverse, and ``p - lr * g`` per leaf
  in a dict comprehension: no checks beyond the layers' own, no key.

The implementations alternate within each repeat (the first one rotated); the medians
and their ratio are printed.  With ``--against PATH`` the fundl of the checkout at
``PATH`` (:mod:`benchmarks.versions`) runs too, both of its sides interleaved with
this checkout's.  The target is a ratio of at most 1.1.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import fundl

from .versions import load


def build(batch: int = 2, width: int = 8, fl: Any = fundl
          ) -> Tuple[Callable[[], float], Callable[[], float]]:
    """``(make_step_step, hand_step)``: two closures that each run one SGD step of the same
    tiny MLP from the same initial params and return the loss (with the fundl module ``fl``)."""
    layers = [fl.dense(width), fl.relu(), fl.dense(width), fl.relu(), fl.dense(10)]
    # what serial runs for each layer: its own function (``vjp`` before the Layer record)
    runs = [getattr(layer, "vjp_fn", None) or layer.vjp for layer in layers]
    model = fl.serial(*layers)
    opt = fl.optim.sgd()
    loss = fl.losses.softmax_cross_entropy
    ts = fl.TrainState.create(fl.random.key(0), model, opt, (width,))
    step = fl.make_step(model, loss, opt)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, width)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    names = [f"{layer.name}_{i}" for i, layer in enumerate(layers)]
    state = {"ts": ts, "hand": {k: dict(v) for k, v in ts.params.items()}}
    lr = 1e-3

    def via_step() -> float:
        state["ts"], metrics = step(state["ts"], (x, y), lr)
        return metrics["loss"]

    def by_hand() -> float:
        params = state["hand"]
        h, pullbacks = x, []
        for k, run in zip(names, runs):
            h, _, pb = run(params[k], {}, h)
            pullbacks.append(pb)
        value, d = loss.value_and_grad(h, y)
        grads = {}
        for k, pb in zip(reversed(names), reversed(pullbacks)):
            grads[k], d = pb(d)
        state["hand"] = {k: {n: p - lr * grads[k][n] for n, p in params[k].items()}
                         for k in names}
        return float(value)

    return via_step, by_hand


def _per_call_us(fn: Callable[[], float], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def measure(repeats: int = 9, steps: int = 2000, batch: int = 2, against: Optional[str] = None
            ) -> Dict[str, Tuple[float, float, List[Tuple[float, float]]]]:
    """``{version: (make_step us, by-hand us, [(make_step, by hand) per repeat])}``: medians of
    ``repeats`` interleaved timings of ``steps`` steps each, after a warm-up; ``version`` is
    ``"this"`` and, with ``against``, ``"other"``."""
    versions = {"this": build(batch)}
    if against is not None:
        versions["other"] = build(batch, fl=load(against))
    sides = [(v, i, fn) for v, pair in versions.items() for i, fn in enumerate(pair)]
    for _, _, fn in sides:
        _per_call_us(fn, max(1, steps // 7))
    times: Dict[Tuple[str, int], List[float]] = {(v, i): [] for v, i, _ in sides}
    for r in range(repeats):
        for v, i, fn in sides[r % len(sides):] + sides[:r % len(sides)]:
            times[v, i].append(_per_call_us(fn, steps))
    return {v: (float(np.median(times[v, 0])), float(np.median(times[v, 1])),
                list(zip(times[v, 0], times[v, 1]))) for v in versions}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=2000, help="steps per timed repeat")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--against", help="another checkout, timed interleaved with this one")
    args = parser.parse_args(argv)
    results = measure(args.repeats, args.steps, args.batch, args.against)
    print(f"tiny MLP 8-8-8-10, batch {args.batch}, SGD; {args.repeats} interleaved repeats of "
          f"{args.steps} steps")
    for version, (step_us, hand_us, rows) in results.items():
        label = "this checkout" if version == "this" else args.against
        print(f"{label}:")
        print(f"  make_step  {step_us:8.1f} us per step")
        print(f"  by hand    {hand_us:8.1f} us per step")
        print(f"  ratio      {step_us / hand_us:8.2f}x  (repeats: "
              + ", ".join(f"{a / b:.2f}" for a, b in rows) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
