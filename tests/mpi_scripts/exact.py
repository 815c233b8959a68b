"""Run under ``mpiexec -n N`` (N = 2 or 3): the data-parallel step, ``evaluate`` and ``fit`` equal
one process on the global batch in float64, for ratio losses and with ranks holding no example.

Usage: ``exact.py OUT [CASE ...]`` (default: every case).  Each rank writes
``OUT/rank_<r>.json`` with, per case, its numbers (or the error the case raised);
tests/test_distributed_exact.py asserts on them.  Each rank computes the single-process
reference itself, on the whole global batch.

- ``ratio``: ``cross_entropy(ignore_index=)``, ``(weights=)`` and both with label smoothing,
  SGD and Adam, 5 steps over global batches of 10 split unevenly (a rank with 0 examples,
  a rank whose labels are all ignored, one whose labels all have class weight 0);
- ``evaluate``: ``evaluate(comm=)`` with those losses at batch sizes 3 and 7 against the loss
  of the whole set;
- ``fit_empty``: ``fit(comm=)`` on 65 examples in batches of 16 (the last batch: 1 example, so
  a rank with none) for a batch_norm model, a grouped conv and sync_batch_norm.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np

import fundl as fl
from fundl import distributed as dist

comm = dist.world()
out_dir = sys.argv[1]
cases = sys.argv[2:] or ["ratio", "evaluate", "fit_empty"]
R: dict = {"rank": comm.rank, "size": comm.size}
IGNORE = -100
CLASS_WEIGHTS = np.array([0.0, 1.0, 2.5, 0.5, 1.5])    # class 0 counts for nothing
COUNTS = {2: [[6, 4], [3, 7], [0, 10], [5, 5], [8, 2]],
          3: [[4, 3, 3], [2, 0, 8], [3, 4, 3], [0, 5, 5], [1, 1, 8]]}


def rel_diff(a, b) -> float:
    """max |a - b| over the leaves, relative to max |b|."""
    num = max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)), initial=0.0))
              for p, q in zip(fl.tree.leaves(a), fl.tree.leaves(b)))
    den = max(float(np.max(np.abs(np.asarray(q)), initial=0.0)) for q in fl.tree.leaves(b))
    return num / max(den, 1e-300)


def float64_state(model, opt, in_shape, key=1):
    ts = fl.TrainState.create(fl.random.key(key), model, opt, in_shape)
    params = fl.tree.cast(ts.params, np.float64)
    return ts._replace(params=params, state=fl.tree.cast(ts.state, np.float64),
                       opt_state=opt.init(params))


def losses():
    return {"ignore_index": fl.losses.cross_entropy(ignore_index=IGNORE),
            "weights": fl.losses.cross_entropy(weights=CLASS_WEIGHTS),
            "both_smoothed": fl.losses.cross_entropy(ignore_index=IGNORE, weights=CLASS_WEIGHTS,
                                                     label_smoothing=0.1)}


def labels_for(lname, y):
    """Without ignore_index an ignored label becomes class 0, whose weight is 0."""
    return np.where(y == IGNORE, 0, y) if lname == "weights" else y


def token_model():
    return fl.serial(fl.dense(8), fl.tanh(), fl.dense(5))


def global_batches(size, weightless_part):
    """5 global batches of 10 sequences of 3 tokens (4 features), labels in [0, 5) or ignored;
    rank ``size - 1``'s part of batches 0 and 3 is all ignored, and with ``weightless_part``
    rank 0's part of batch 1 is all class 0 (class weight 0)."""
    out = []
    for s, counts in enumerate(COUNTS[size]):
        k1, k2, k3 = fl.random.split(fl.random.fold_in(fl.random.key(40), s), 3)
        x = fl.random.normal(k1, (10, 3, 4), np.float64)
        y = fl.random.randint(k2, (10, 3), 0, 5).astype(np.int64)
        y[fl.random.uniform(k3, (10, 3)) < 0.25] = IGNORE
        edges = np.cumsum([0] + counts)
        if s in (0, 3):
            y[edges[-2]:edges[-1]] = IGNORE
        if s == 1 and weightless_part:
            y[edges[0]:edges[1]] = 0
        out.append((x, y, edges))
    return out


def two_head_model():
    return fl.serial(fl.dense(8), fl.tanh(), fl.fan_out(2), fl.parallel(fl.dense(5), fl.dense(1)))


def train_both(loss, opt_fn, batches, labels, weighted, model_fn=token_model):
    """Distributed and single-process float64 training on ``batches``: the relative param
    difference, the per-step losses of both and this rank's divisors ``W_r``."""
    d_opt = fl.optim.chain(dist.mean_gradients(comm), opt_fn())
    s_opt = opt_fn()
    ts = float64_state(model_fn(), d_opt, (3, 4))
    ref = float64_state(model_fn(), s_opt, (3, 4))
    d_step = dist.make_step(model_fn(), loss, d_opt, comm)
    s_step = fl.make_step(model_fn(), loss, s_opt)
    d_losses, s_losses, weights = [], [], []
    for x, y, edges in batches:
        y = labels(y)
        lo, hi = edges[comm.rank], edges[comm.rank + 1]
        if isinstance(y, tuple):
            part = tuple(t[lo:hi] for t in y)
        else:
            part = y[lo:hi]
        ts, m = d_step(ts, (x[lo:hi], part), 0.05)
        ref, ms = s_step(ref, (x, y), 0.05)
        d_losses.append(m["loss"])
        s_losses.append(ms["loss"])
        labels_r = part[0] if isinstance(part, tuple) else part   # W_r of the cross-entropy
        counted = labels_r[labels_r != IGNORE]
        weights.append(float(CLASS_WEIGHTS[counted].sum() if weighted else counted.size))
    return {"param_rel_diff": rel_diff(ts.params, ref.params),
            "loss_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(d_losses, s_losses)),
            "losses": [d_losses, s_losses], "part_weights": weights,
            "in_sync": dist.in_sync(comm, ts)}


def ratio_case():
    """Per loss and optimizer: 5 steps of both (see train_both).  Without label smoothing a
    part whose labels all have class weight 0 has S_r = W_r = 0; ``smoothing_weightless`` is
    the one case where S_r != 0 = W_r (the smoothing term of weight-0 labels)."""
    results = {}
    for lname, loss in losses().items():
        batches = global_batches(comm.size, weightless_part=lname == "weights")
        for oname, opt_fn in (("sgd", lambda: fl.optim.sgd()), ("adam", lambda: fl.optim.adam())):
            results[f"{lname}_{oname}"] = train_both(loss, opt_fn, batches,
                                                     lambda y: labels_for(lname, y),
                                                     lname != "ignore_index")
    if hasattr(fl.losses, "combine"):   # (not on 76c14af)
        # two heads: cross-entropy with ignored labels (its divisor) + 0.5 * MSE (examples)
        combined = fl.losses.combine(losses()["ignore_index"], fl.losses.mse,
                                     weights=(1.0, 0.5))
        results["combined_sgd"] = train_both(
            combined, lambda: fl.optim.sgd(), global_batches(comm.size, weightless_part=False),
            lambda y: (y, np.tanh(y[..., None] * 0.3)), False, two_head_model)
    results["smoothing_weightless"] = train_both(
        losses()["both_smoothed"], lambda: fl.optim.sgd(),
        global_batches(comm.size, weightless_part=True), lambda y: y, True)
    return results


def evaluate_case():
    model = token_model()
    params, state, _ = model.init(fl.random.key(3), (3, 4))
    params = fl.tree.cast(params, np.float64)
    x = fl.random.normal(fl.random.key(4), (23, 3, 4), np.float64)
    y = fl.random.randint(fl.random.key(5), (23, 3), 0, 5).astype(np.int64)
    y[fl.random.uniform(fl.random.key(6), (23, 3)) < 0.3] = IGNORE
    y[:7] = IGNORE             # whole batches with nothing counted
    results = {}
    for lname, loss in losses().items():
        yl = labels_for(lname, y)
        whole = float(loss.value(model.apply(params, state, x), yl))
        for batch_size in (3, 7):
            got = fl.evaluate(model, params, state, (x, yl), metrics={"ce": loss},
                              batch_size=batch_size, comm=comm)["ce"]
            results[f"{lname}_{batch_size}"] = {"shared": got, "whole": whole,
                                                "rel_diff": abs(got - whole) / abs(whole)}
    return results


def fit_models():
    bn = (fl.serial(fl.dense(8, use_bias=False), fl.batch_norm(momentum=0.9), fl.relu(),
                    fl.dense(3)), None, (5,))
    grouped = (fl.serial(fl.reshape((6, 2)), fl.conv1d(4, 3, padding=1, groups=2), fl.relu(),
                         fl.conv1d(4, 3, groups=2), fl.relu(), fl.flatten(), fl.dense(3)),
               None, (12,))
    sync = (fl.serial(fl.dense(8, use_bias=False), dist.sync_batch_norm(comm, momentum=0.9),
                      fl.relu(), fl.dense(3)), bn[0], (5,))
    return {"batch_norm": bn, "grouped_conv": grouped, "sync_batch_norm": sync}


def per_rank_reference(model, loss, opt, ts, x, y, key, epochs, batch_size, lr):
    """What data-parallel training with plain ``batch_norm`` means, in one process: fit's
    batches (epoch ``e``: ``batches(fold_in(k_data, e), ...)``), each rank's part run on its
    own (batch statistics of the part), the gradient ``sum_r W_r / W * grad_r``, the state
    ``sum_r n_r / N * state_r`` (a part without examples keeps the old state)."""
    _, k_data = fl.random.split(key)
    params, state, opt_state = ts.params, ts.state, ts.opt_state
    losses_seen = []
    for e in range(epochs):
        k = fl.random.fold_in(k_data, e)
        shards = [list(fl.data.batches(k, (x, y), batch_size, shard=(r, comm.size)))
                  for r in range(comm.size)]
        for parts in zip(*shards):
            runs = []
            for xr, yr in parts:
                if len(xr):
                    out, st, pullback = model.vjp(params, state, xr, train=True)
                    value, dout = loss.value_and_grad(out, yr)
                    runs.append((len(xr), loss.weight_of(out, yr), float(value), dout, st,
                                 pullback))
            n_all = sum(r[0] for r in runs)
            w_all = sum(r[1] for r in runs)
            grads = None
            new_state = fl.tree.map(np.zeros_like, state)
            for n_r, w_r, _, dout, st, pullback in runs:
                g = pullback(dout * (w_r / w_all))[0]
                grads = g if grads is None else fl.tree.map(np.add, grads, g)
                new_state = fl.tree.map(lambda a, b: a + b * (n_r / n_all), new_state, st)
            losses_seen.append(sum(r[1] * r[2] for r in runs) / w_all)
            params, opt_state = opt.update(params, grads, opt_state, lr)
            state = new_state
    return params, state, losses_seen


def fit_empty_case():
    """65 examples in global batches of 16 (the last has 1: ranks without examples)."""
    results = {}
    for name, (model, single_model, in_shape) in fit_models().items():
        single_model = single_model or model
        kx, ky = fl.random.split(fl.random.key(8))
        x = fl.random.normal(kx, (65,) + in_shape, np.float64)
        y = fl.random.randint(ky, (65,), 0, 3).astype(np.int64)
        kw = dict(key=fl.random.key(9), epochs=2, batch_size=16, lr=0.1, progress=False,
                  val_data=(x[:20], y[:20]))
        d_opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.sgd())
        d_ts, d_hist = fl.fit(model, fl.losses.softmax_cross_entropy, d_opt, (x, y),
                              train_state=float64_state(model, d_opt, in_shape), comm=comm, **kw)
        s_opt = fl.optim.sgd()
        s_ts0 = float64_state(single_model, s_opt, in_shape)
        last = list(fl.data.batches(fl.random.key(0), (x, y), 16,
                                    shard=(comm.rank, comm.size)))[-1]
        got = {"last_part": int(len(last[0])), "steps": int(d_ts.step),
               "in_sync": dist.in_sync(comm, d_ts)}
        if name == "batch_norm":   # each rank normalises with its own part's statistics
            params, state, ref_losses = per_rank_reference(
                model, fl.losses.softmax_cross_entropy, s_opt, s_ts0, x, y, kw["key"], 2, 16,
                0.1)
            got.update(param_rel_diff=rel_diff(d_ts.params, params),
                       state_rel_diff=rel_diff(d_ts.state, state))
        else:                      # the global batch's statistics, or none: one process
            s_ts, s_hist = fl.fit(single_model, fl.losses.softmax_cross_entropy, s_opt, (x, y),
                                  train_state=s_ts0, **kw)
            got.update(param_rel_diff=rel_diff(d_ts.params, s_ts.params),
                       state_rel_diff=(rel_diff(d_ts.state, s_ts.state)
                                       if fl.tree.leaves(s_ts.state) else 0.0),
                       loss_diff=max(abs(a - b) for a, b in zip(d_hist["loss"],
                                                                 s_hist["loss"])),
                       val_loss_diff=max(abs(a - b) for a, b in zip(d_hist["val_loss"],
                                                                     s_hist["val_loss"])))
        results[name] = got
    return results


for case in cases:
    try:
        R[case] = {"ratio": ratio_case, "evaluate": evaluate_case,
                   "fit_empty": fit_empty_case}[case]()
    except Exception as err:  # noqa: BLE001 - recorded (on 76c14af some cases crash)
        R[case] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
        break        # the ranks may now be out of step: stop here, write what we have

with open(os.path.join(out_dir, f"rank_{comm.rank}.json"), "w") as f:
    json.dump(R, f)
