"""Variable-length sequences: an LSTM on padded batches with ``with_lengths=True``.

The task (generated here): each sequence has a random length between 1 and 20
steps of one feature drawn from N(0, 1), padded with large garbage values to 20
steps; the label is whether the sum of its valid entries is positive.  A model
that read the padding would be wrong, so the LSTM is told the lengths::

    (x (batch, 20, 1), lengths (batch,)) -> lstm(32, with_lengths=True,
        return_sequences=False) -> dense(2)

Padded steps neither update the LSTM's state nor get gradient, and its output is
the state after each sequence's own last valid step.  The script trains with
``make_step`` (``fit`` takes a single input array; this model takes a pair),
prints the test accuracy, and checks that the padded batch gives the same
logits as running every test sequence alone, unpadded, at its own length.

Run:  python3 examples/variable_length.py           (a few seconds; numpy only)
      python3 examples/variable_length.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, Tuple

import numpy as np

import fundl as fl

MAX_LEN = 20


def make_data(key: Any, n: int, max_len: int = MAX_LEN
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x`` ``(n, max_len, 1)`` float32 padded with garbage (+-5), ``lengths`` ``(n,)``
    int64 in ``[1, max_len]`` and labels ``(n,)``: 1 where the valid entries sum to > 0."""
    k_len, k_x, k_pad = fl.random.split(key, 3)
    lengths = fl.random.generator(k_len).integers(1, max_len + 1, n).astype(np.int64)
    x = fl.random.normal(k_x, (n, max_len, 1), np.float32)
    valid = np.arange(max_len)[None, :, None] < lengths[:, None, None]
    garbage = np.where(fl.random.uniform(k_pad, (n, max_len, 1)) < 0.5, -5.0, 5.0)
    x = np.where(valid, x, garbage).astype(np.float32)
    labels = ((x * valid).sum(axis=(1, 2)) > 0).astype(np.int64)
    return x, lengths, labels


def model(hidden: int = 32) -> fl.Layer:
    return fl.serial(fl.lstm(hidden, with_lengths=True, return_sequences=False), fl.dense(2))


def run(*, n_train: int = 3000, n_test: int = 1000, epochs: int = 10, hidden: int = 32,
        batch_size: int = 64, lr: float = 1e-2, seed: int = 0, verbose: bool = True
        ) -> Dict[str, Any]:
    """Train and check; returns ``losses`` (mean per epoch), ``accuracy`` (test),
    ``max_diff`` (padded vs unpadded logits) and ``seconds``."""
    say = print if verbose else (lambda *a, **k: None)
    k_train, k_test, k_init, k_data = fl.random.split(fl.random.key(seed), 4)
    x, lengths, y = make_data(k_train, n_train)
    x_test, len_test, y_test = make_data(k_test, n_test)
    say(f"{n_train} train / {n_test} test sequences, lengths 1-{MAX_LEN} padded to {MAX_LEN}; "
        f"{100 * y_test.mean():.1f}% of test labels positive")

    net = model(hidden)
    opt = fl.optim.chain(fl.optim.clip_by_global_norm(1.0), fl.optim.adam())
    ts = fl.TrainState.create(k_init, net, opt, in_shape=((MAX_LEN, 1), ()))
    step = fl.make_step(net, fl.losses.softmax_cross_entropy, opt)
    losses = []
    start = time.perf_counter()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for xb, lb, yb in fl.data.batches(fl.random.fold_in(k_data, epoch), (x, lengths, y),
                                          batch_size):
            ts, metrics = step(ts, ((xb, lb), yb), lr)
            total += metrics["loss"] * len(yb)
            count += len(yb)
        losses.append(total / count)
        say(f"epoch {epoch + 1:3d}  train loss {losses[-1]:.4f}")
    seconds = time.perf_counter() - start

    logits = net.apply(ts.params, ts.state, (x_test, len_test))
    accuracy = float((logits.argmax(axis=-1) == y_test).mean())
    # Every test sequence alone, cut to its own length: no padding at all.
    alone = np.concatenate([net.apply(ts.params, ts.state,
                                      (x_test[i:i + 1, :len_test[i]], len_test[i:i + 1]))
                            for i in range(n_test)])
    max_diff = float(np.abs(logits - alone).max())
    say(f"trained {ts.step} steps in {seconds:.1f} s")
    say(f"padded batch vs each sequence run alone, unpadded: max |logit difference| "
        f"{max_diff:.2e}")
    say(f"test accuracy: {accuracy:.3f}")
    return {"losses": losses, "accuracy": accuracy, "max_diff": max_diff, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="variable-length sequences with an LSTM")
    parser.add_argument("--quick", action="store_true", help="fewer examples and epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    fl.perf.keep_freed_memory()  # freed arrays reused by the next step (fundl.perf)
    if args.quick:
        run(n_train=1000, n_test=300, epochs=4, seed=args.seed)
    else:
        run(seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
