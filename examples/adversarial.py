"""Eval mode in the contract: adversarial examples and fine-tuning with frozen statistics.

1. Train an MLP with batch norm and dropout on three spirals.
2. FGSM: the gradient of the loss with respect to the input *of the deployed model*
   (``fl.value_and_grad``: eval mode, batch norm on its running statistics, dropout
   off) moves each test point by ``eps * sign(dx)``; the accuracy falls as eps grows.
   The training-mode gradient (batch statistics, a dropout mask) points elsewhere.
3. Fine-tune: the trained body inside ``fl.eval_mode`` and a new head, on the spirals
   turned by a quarter turn.  The body's params still train, its batch-norm statistics
   stay bit-identical.

Run: python examples/adversarial.py [--quick]   (a few seconds; numpy only)
"""

from __future__ import annotations

import argparse
from typing import Dict

import numpy as np

import fundl as fl


def body() -> fl.Layer:
    return fl.serial(fl.dense(64), fl.batch_norm(momentum=0.9), fl.relu(), fl.dropout(0.1),
                     fl.dense(64), fl.batch_norm(momentum=0.9), fl.relu())


def accuracy(model: fl.Layer, params, state, x, y) -> float:
    return float(np.mean(np.argmax(model.apply(params, state, x), -1) == y))


def fgsm(model: fl.Layer, params, state, x, y, eps: float, train: bool = False,
         key=None) -> np.ndarray:
    """``x + eps * sign(d loss / d x)``: one step of the fast gradient sign method."""
    _, _, dx = fl.value_and_grad(model, fl.losses.softmax_cross_entropy, params, state, x, y,
                                 train=train, key=key)
    return x + eps * np.sign(dx)


def main(quick: bool = False) -> Dict[str, float]:
    k_data, k_split, k_fit, k_tune, k_grad = fl.random.split(fl.random.key(0), 5)
    x, y = fl.datasets.spirals(k_data, n_per_class=300 if quick else 600, noise=0.15)
    (x_train, y_train), (x_test, y_test) = fl.data.train_test_split(k_split, (x, y), test_size=0.25)

    model = fl.serial(body(), fl.dense(3))
    epochs = 15 if quick else 40
    ts, _ = fl.fit(model, fl.losses.softmax_cross_entropy, fl.optim.adam(), (x_train, y_train),
                   key=k_fit, epochs=epochs, batch_size=32, lr=1e-2)
    results = {"clean": accuracy(model, ts.params, ts.state, x_test, y_test)}
    print(f"1. trained {ts.step} steps: test accuracy {results['clean']:.3f}")

    print("2. FGSM with the deployed model's input gradient (eval mode):")
    for eps in (0.02, 0.05, 0.1):
        x_adv = fgsm(model, ts.params, ts.state, x_test, y_test, eps)
        results[f"fgsm {eps}"] = accuracy(model, ts.params, ts.state, x_adv, y_test)
        print(f"   eps {eps:<4}  accuracy {results[f'fgsm {eps}']:.3f}")
    _, _, dx_eval = fl.value_and_grad(model, fl.losses.softmax_cross_entropy, ts.params,
                                      ts.state, x_test, y_test)
    _, _, dx_train = fl.value_and_grad(model, fl.losses.softmax_cross_entropy, ts.params,
                                       ts.state, x_test, y_test, train=True, key=k_grad)
    agree = float(np.mean(np.sign(dx_eval) == np.sign(dx_train)))
    results["sign agreement eval/train"] = agree
    print(f"   the training-mode gradient has the eval-mode sign at {agree:.0%} of the inputs")

    # 3. a new task: the same spirals turned by 90 degrees; the body keeps its statistics
    turn = np.array([[0.0, -1.0], [1.0, 0.0]], np.float32)
    tuned = fl.serial(fl.eval_mode(body()), fl.dense(3))
    start = fl.TrainState.create(k_tune, tuned, fl.optim.adam(), (2,))
    start = start._replace(params={**start.params, "eval_mode_0": ts.params["serial_0"]},
                           state={**start.state, "eval_mode_0": ts.state["serial_0"]})
    before = accuracy(tuned, start.params, start.state, x_test @ turn, y_test)
    tuned_ts, _ = fl.fit(tuned, fl.losses.softmax_cross_entropy, fl.optim.adam(),
                         (x_train @ turn, y_train), key=k_tune, epochs=epochs // 3,
                         batch_size=32, lr=1e-2, train_state=start)
    after = accuracy(tuned, tuned_ts.params, tuned_ts.state, x_test @ turn, y_test)
    frozen = fl.tree.all_equal(tuned_ts.state, start.state)
    moved = not fl.tree.all_equal(tuned_ts.params["eval_mode_0"], start.params["eval_mode_0"])
    results.update({"turned before": before, "turned after": after})
    print(f"3. fine-tuned on the turned spirals: accuracy {before:.3f} -> {after:.3f}; "
          f"the body's statistics {'unchanged' if frozen else 'CHANGED'}, "
          f"its params {'trained' if moved else 'untouched'}")
    assert frozen and moved
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and epochs")
    main(parser.parse_args().quick)
