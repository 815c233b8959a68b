"""The seed's experiment: recover a random linear map with Dense + ReLU, MSE and SGD.

The tutorial fundl grew from ("Deep Learning from scratch") trains
``relu(dense(x))`` on ``y = x @ w_real + b_real`` with 10 input features, 2
outputs and batches of 512 fresh uniform inputs.  Its draft code has two
gradient slips that fundl's exact, tested gradients fix:

1. ``dDense`` computed the input gradient from the layer's output ``y``
   (``w^T y``) instead of the incoming cotangent ``dy`` (``dy @ w^T``).  It
   went unnoticed there because the first layer's input gradient is unused.
2. ``dMSE`` dropped the ``2/N`` factor of the mean squared error's gradient;
   it only worked because the draft also averaged ``dw`` over the batch, which
   folds a different constant into the learning rate.

fundl's ``mse`` returns the exact gradient ``2 (pred - y) / N`` (N counts
every element) and ``dense``'s pullback returns ``dy @ w.T``; both pass
``fundl.check_vjp`` in the unit tests.

Run:  python3 examples/linear_regression.py [--steps N] [--lr LR] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fundl as fl

IN_FEATURES, OUT_FEATURES, BATCH = 10, 2, 512


def run(steps: int = 3000, lr: float = 0.1, seed: int = 0, log_every: int = 500,
        verbose: bool = True):
    """Train and return ``(w, b, w_real, b_real, final_loss)`` (w is (in, out) as in fundl)."""
    k_real, k_model, k_data = fl.random.split(fl.random.key(seed), 3)
    k_w, k_b = fl.random.split(k_real)
    w_real = fl.random.uniform(k_w, (IN_FEATURES, OUT_FEATURES))
    b_real = fl.random.uniform(k_b, (OUT_FEATURES,))

    # As in the seed: weights start uniform in [0, 1) and the bias at zero.
    model = fl.serial(fl.dense(OUT_FEATURES, w_init=fl.initializers.uniform(0.0, 1.0)), fl.relu())
    opt = fl.optim.sgd()
    ts = fl.TrainState.create(k_model, model, opt, in_shape=(IN_FEATURES,))
    step = fl.make_step(model, fl.losses.mse, opt)

    loss = float("nan")
    for i in range(steps):
        x = fl.random.uniform(fl.random.fold_in(k_data, i), (BATCH, IN_FEATURES))
        y = x @ w_real + b_real
        ts, metrics = step(ts, (x, y), lr)
        loss = metrics["loss"]
        if verbose and (i % log_every == 0 or i == steps - 1):
            print(f"step {i:5d}  loss = {loss:.3e}")

    w, b = ts.params["dense_0"]["w"], ts.params["dense_0"]["b"]
    return w, b, w_real, b_real, loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    fl.perf.keep_freed_memory()  # freed arrays reused by the next step (fundl.perf)

    start = time.perf_counter()
    w, b, w_real, b_real, loss = run(args.steps, args.lr, args.seed)
    seconds = time.perf_counter() - start
    np.set_printoptions(precision=4, suppress=True)
    print(f"\ntrained {args.steps} steps (batch {BATCH}, lr {args.lr}) in {seconds:.2f} s; "
          f"final loss {loss:.3e}")
    print(f"learned w (in, out) =\n{w}\nlearned b = {b}")
    print(f"|w - w_real| =\n{np.abs(w - w_real)}\n|b - b_real| = {np.abs(b - b_real)}")
    worst = max(np.abs(w - w_real).max(), np.abs(b - b_real).max())
    if worst < 0.01:
        print(f"recovered w_real and b_real: every entry within {worst:.1e} (< 0.01)")
        return 0
    print(f"NOT recovered: worst difference {worst:.3e} >= 0.01")
    return 1


if __name__ == "__main__":
    sys.exit(main())
