"""Train one small regression model with every optimizer in fundl.optim and compare.

    python examples/optimizers.py [--steps 400] [--plot losses.png]

The model is ``serial(dense(32), tanh(), dense(1))`` fitting
``y = sin(2 x0) * cos(x1) + 0.1 noise`` on 512 points drawn from a fundl key.
Every optimizer starts from the same initial params and runs the same
minibatches; the table shows the final full-data loss.  With ``--plot PATH``
(and only if matplotlib is installed) the loss curves are saved side by side.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fundl
from fundl import optim, random

# name -> (optimizer, learning rate or schedule).  Sign-like methods (lion) want a small lr.
STEPS_DEFAULT = 400


def optimizers(steps: int):
    return {
        "sgd": (optim.sgd(), 0.1),
        "momentum": (optim.momentum(0.9), 0.02),
        "nesterov": (optim.nesterov(0.9), 0.02),
        "adagrad": (optim.adagrad(), 0.1),
        "rmsprop": (optim.rmsprop(), 0.003),
        "adam": (optim.adam(), 0.01),
        "adamw": (optim.adamw(weight_decay=1e-4, mask=lambda path: path.endswith("/w")), 0.01),
        "adamax": (optim.adamax(), 0.02),
        "lion": (optim.lion(), 0.001),
        "clip+adam, warmup-cosine": (optim.chain(optim.clip_by_global_norm(1.0), optim.adam()),
                                     optim.warmup_cosine(0.02, steps // 10, steps, end=0.001)),
        "adam, accumulate 2": (optim.accumulate(optim.adam(), 2), 0.01),
    }


def make_data(key, n: int = 512):
    k_x, k_noise = random.split(key)
    x = random.uniform(k_x, (n, 2), np.float32, low=-2.0, high=2.0)
    y = np.sin(2.0 * x[:, :1]) * np.cos(x[:, 1:]) + 0.1 * random.normal(k_noise, (n, 1))
    return x, y.astype(np.float32)


def minibatches(key, n: int, batch: int, steps: int):
    """``steps`` index arrays of ``batch`` rows: a fresh permutation of ``range(n)`` every epoch."""
    per_epoch = n // batch
    out = []
    for s in range(steps):
        epoch, i = divmod(s, per_epoch)
        perm = random.permutation(random.fold_in(key, epoch), n)
        out.append(perm[i * batch:(i + 1) * batch])
    return out


def train(model, opt, lr, params, model_state, x, y, batches):
    ts = fundl.TrainState(params, model_state, opt.init(params), random.key(1), 0)
    step = fundl.make_step(model, fundl.losses.mse, opt)
    curve = []
    for idx in batches:
        ts, _ = step(ts, (x[idx], y[idx]), lr)
        curve.append(float(fundl.losses.mse(model.apply(ts.params, ts.state, x), y)))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS_DEFAULT)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="save the loss curves to this PNG (needs matplotlib); default: no file")
    args = parser.parse_args()
    fundl.perf.keep_freed_memory()  # freed arrays reused by the next step (fundl.perf)

    k_data, k_init, k_batches = random.split(random.key(0), 3)
    x, y = make_data(k_data)
    model = fundl.serial(fundl.dense(32), fundl.tanh(), fundl.dense(1))
    params, model_state, _ = model.init(k_init, (2,))
    batches = minibatches(k_batches, len(x), args.batch, args.steps)  # the same for every optimizer
    start_loss = float(fundl.losses.mse(model.apply(params, model_state, x), y))

    curves = {}
    print(f"{'optimizer':28s} {'lr':>9s} {'final loss':>11s} {'time':>7s}")
    print(f"{'(initial params)':28s} {'':>9s} {start_loss:11.5f}")
    for name, (opt, lr) in optimizers(args.steps).items():
        t0 = time.perf_counter()
        curves[name] = train(model, opt, lr, params, model_state, x, y, batches)
        lr_text = f"{lr:.4g}" if not callable(lr) else "schedule"
        print(f"{name:28s} {lr_text:>9s} {curves[name][-1]:11.5f} {time.perf_counter() - t0:6.2f}s")

    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot written")
            return
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, curve in curves.items():
            for ax in axes:
                ax.plot(curve, label=name)
        axes[0].set_title("full-data MSE")
        axes[1].set_title("full-data MSE (log scale)")
        axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("step")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"loss curves saved to {args.plot}")


if __name__ == "__main__":
    main()
