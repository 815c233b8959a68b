"""The small CNN written plainly in numpy (im2col via ``as_strided``, ``np.pad``,
out-of-place arithmetic), against fundl's training step: the comparison of issue #3.

``benchmarks/reference.py`` is the tight reference (in-place everything); this one is
what a careful person writes without tuning.  Run from the repository root::

    python3 -m benchmarks.plain_cnn [repeats]
"""

from __future__ import annotations

import sys
import time
from typing import Dict, Tuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

import fundl as fl

from .workloads import cnn_model


def im2col(x: np.ndarray, k: int) -> np.ndarray:
    """'same' padding, stride 1: (n, h, w, c) -> (n*h*w, k*k*c)."""
    n, h, w, c = x.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    s = xp.strides
    win = as_strided(xp, (n, h, w, k, k, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    return np.ascontiguousarray(win).reshape(n * h * w, k * k * c)


def col2im(dcols: np.ndarray, shape: Tuple[int, int, int, int], k: int) -> np.ndarray:
    n, h, w, c = shape
    p = k // 2
    dcols = dcols.reshape(n, h, w, k, k, c)
    dxp = np.zeros((n, h + 2 * p, w + 2 * p, c), dcols.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, i:i + h, j:j + w] += dcols[:, :, :, i, j]
    return dxp[:, p:p + h, p:p + w]


def step(P: Dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray, lr: float):
    """One SGD step; returns (new params, loss).  P: c1w, c1b, c2w, c2b, dw, db."""
    n = len(x)
    c1 = im2col(x, 3)
    a1 = (c1 @ P["c1w"].reshape(-1, 32) + P["c1b"]).reshape(n, 28, 28, 32)
    r1 = np.maximum(a1, 0)
    r1v = r1.reshape(n, 14, 2, 14, 2, 32)
    p1 = r1v.max(axis=(2, 4))
    c2 = im2col(p1, 3)
    a2 = (c2 @ P["c2w"].reshape(-1, 64) + P["c2b"]).reshape(n, 14, 14, 64)
    r2 = np.maximum(a2, 0)
    r2v = r2.reshape(n, 7, 2, 7, 2, 64)
    p2 = r2v.max(axis=(2, 4))
    f = p2.reshape(n, -1)
    logits = f @ P["dw"] + P["db"]
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    loss = -logp[np.arange(n), labels].mean()
    g = np.exp(logp)
    g[np.arange(n), labels] -= 1
    g /= n
    dw, db = f.T @ g, g.sum(0)
    dp2 = (g @ P["dw"].T).reshape(n, 7, 1, 7, 1, 64)
    dr2 = ((r2v == p2[:, :, None, :, None, :]) * dp2).reshape(n, 14, 14, 64)
    da2 = (dr2 * (a2 > 0)).reshape(-1, 64)
    dc2w, dc2b = (c2.T @ da2).reshape(P["c2w"].shape), da2.sum(0)
    dp1 = col2im(da2 @ P["c2w"].reshape(-1, 64).T, p1.shape, 3).reshape(n, 14, 1, 14, 1, 32)
    dr1 = ((r1v == p1[:, :, None, :, None, :]) * dp1).reshape(n, 28, 28, 32)
    da1 = (dr1 * (a1 > 0)).reshape(-1, 32)
    dc1w, dc1b = (c1.T @ da1).reshape(P["c1w"].shape), da1.sum(0)
    grads = dict(c1w=dc1w, c1b=dc1b, c2w=dc2w, c2b=dc2b, dw=dw, db=db)
    return {k: P[k] - np.float32(lr) * grads[k] for k in P}, float(loss)


def setup(batch: int = 64):
    net = cnn_model()
    opt = fl.optim.sgd()
    ts = fl.TrainState.create(fl.random.key(0), net, opt, in_shape=(28, 28, 1))
    x = fl.random.normal(fl.random.key(1), (batch, 28, 28, 1))
    y = fl.random.randint(fl.random.key(2), (batch,), 0, 10)
    p = ts.params
    P = dict(c1w=p["conv2d_0"]["w"], c1b=p["conv2d_0"]["b"], c2w=p["conv2d_3"]["w"],
             c2b=p["conv2d_3"]["b"], dw=p["dense_7"]["w"], db=p["dense_7"]["b"])
    return fl.make_step(net, fl.losses.softmax_cross_entropy, opt), ts, P, x, y


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    reps = int(argv[0]) if argv else 40
    fundl_step, ts, P, x, y = setup()
    lr = 0.01
    ts1, metrics = fundl_step(ts, (x, y), lr)
    P1, loss = step(P, x, y, lr)
    diff = max(float(np.abs(ts1.params[a]["w"] - P1[b]).max())
               for a, b in (("conv2d_0", "c1w"), ("conv2d_3", "c2w"), ("dense_7", "dw")))
    print(f"first-step loss: fundl {metrics['loss']:.6f}, plain numpy {loss:.6f}; "
          f"max |param diff| after one step {diff:.1e}")
    for _ in range(3):
        fundl_step(ts, (x, y), lr)
        step(P, x, y, lr)
    tf, tr = [], []
    for _ in range(reps):  # interleaved
        t0 = time.perf_counter()
        fundl_step(ts, (x, y), lr)
        t1 = time.perf_counter()
        step(P, x, y, lr)
        tr.append(time.perf_counter() - t1)
        tf.append(t1 - t0)
    f, r = np.median(tf), np.median(tr)
    print(f"median step over {reps}: fundl {1e3 * f:.2f} ms, plain numpy {1e3 * r:.2f} ms; "
          f"fundl is {r / f:.2f}x the speed of plain numpy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
