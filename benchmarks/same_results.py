"""Do two versions of fundl train to the same params?  A check for refactorings.

    git worktree add /tmp/old <commit>
    python3 -m benchmarks.same_results --against /tmp/old          # about 10 s

Both versions (this checkout's and the one at ``--against``) build the same three
models from the same keys and train them ``--steps`` steps on the same batches:

- ``mlp adam``: dense-relu-dense-relu-dense, softmax cross-entropy, Adam;
- ``cnn bn dropout momentum``: conv, batch norm, ReLU, dropout, max pool, conv, ReLU,
  flatten, dense; momentum;
- ``lstm residual layer_norm adamw``: an LSTM, a residual block of layer norm and dense,
  the last step into dense; AdamW with global-norm clipping.

For each it prints the largest difference of the params, the state and the losses
between the versions (0 means bit for bit) and the count of differing leaves.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import fundl

from .versions import load


def _models(fl: Any) -> Dict[str, Tuple[Callable[[], Any], Callable[[], Any], Any, Any]]:
    """name -> (model builder, optimizer builder, in_shape, batch maker)."""
    def classes(shape, n, k):
        def make(i):
            kx, ky = fl.random.split(fl.random.fold_in(fl.random.key(7), i))
            return (fl.random.normal(kx, (n,) + shape, np.float32),
                    fl.random.randint(ky, (n,), 0, k).astype(np.int64))
        return make

    return {
        "mlp adam": (lambda: fl.serial(fl.dense(32), fl.relu(), fl.dense(32), fl.relu(),
                                       fl.dense(10)),
                     lambda: fl.optim.adam(), (20,), classes((20,), 16, 10)),
        "cnn bn dropout momentum": (
            lambda: fl.serial(fl.conv2d(8, 3, padding="same"), fl.batch_norm(), fl.relu(),
                              fl.dropout(0.2), fl.max_pool2d(2), fl.conv2d(8, 3), fl.relu(),
                              fl.flatten(), fl.dense(5)),
            lambda: fl.optim.momentum(0.9), (12, 12, 3), classes((12, 12, 3), 8, 5)),
        "lstm residual layer_norm adamw": (
            lambda: fl.serial(fl.lstm(16), fl.residual(fl.serial(fl.layer_norm(), fl.dense(16))),
                              fl.lstm(16, return_sequences=False), fl.dense(4)),
            lambda: fl.optim.chain(fl.optim.clip_by_global_norm(1.0),
                                   fl.optim.adamw(weight_decay=1e-2)),
            (10, 6), classes((10, 6), 8, 4)),
    }


def train(fl: Any, name: str, steps: int) -> Tuple[Any, List[float]]:
    """The train state after ``steps`` steps of model ``name`` and its losses."""
    build, opt_fn, in_shape, batch = _models(fl)[name]
    model, opt = build(), opt_fn()
    ts = fl.TrainState.create(fl.random.key(0), model, opt, in_shape)
    step = fl.make_step(model, fl.losses.softmax_cross_entropy, opt)
    losses = []
    for i in range(steps):
        ts, metrics = step(ts, batch(i), 1e-2)
        losses.append(metrics["loss"])
    return ts, losses


def _leaves(fl: Any, t: Any) -> List[np.ndarray]:
    return [np.asarray(a) for a in fl.tree.leaves(t)]


def compare(other: Any, steps: int) -> List[Tuple[str, float, int, float]]:
    """``(model, max |params diff|, differing leaves, max |loss diff|)`` per model."""
    rows = []
    for name in _models(fundl):
        ts_new, loss_new = train(fundl, name, steps)
        ts_old, loss_old = train(other, name, steps)
        new, old = _leaves(fundl, (ts_new.params, ts_new.state)), \
            _leaves(other, (ts_old.params, ts_old.state))
        if len(new) != len(old):
            raise AssertionError(f"{name}: {len(new)} leaves here, {len(old)} there")
        diffs = [float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
                 for a, b in zip(new, old)]
        rows.append((name, max(diffs), sum(d > 0 for d in diffs),
                     float(np.max(np.abs(np.subtract(loss_new, loss_old))))))
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="a checkout of the other version")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    other = load(args.against)
    print(f"{args.steps} steps, this checkout against {args.against}")
    for name, params, leaves, loss in compare(other, args.steps):
        print(f"  {name:32s} params+state max |diff| {params:.3g} ({leaves} leaves differ), "
              f"losses max |diff| {loss:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
