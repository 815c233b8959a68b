"""Run under ``mpiexec -n N``: data-parallel fundl against the single-process computation.

Every rank runs every check and writes its numbers to ``OUT/rank_<r>.json``;
tests/test_distributed.py asserts on them.  Each rank also computes the
single-process reference itself (on the whole global batch), so a check is
a comparison within one process.  Usage: ``checks.py OUT``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import warnings

import numpy as np

import fundl as fl
from fundl import distributed as dist
from fundl.fit.inputs import Caster
from fundl.testing import check_layer, read_only

comm = dist.world()
out_dir = sys.argv[1]
R: dict = {"rank": comm.rank, "size": comm.size}


def max_diff(a, b) -> float:
    return max((float(np.max(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)),
                              initial=0.0))
                for p, q in zip(fl.tree.leaves(a), fl.tree.leaves(b))), default=0.0)


def data(n, in_shape, classes=3, seed=5):
    kx, ky = fl.random.split(fl.random.key(seed))
    x = fl.random.normal(kx, (n,) + in_shape, np.float32)
    y = fl.random.randint(ky, (n,), 0, classes).astype(np.int64)
    return read_only(x), read_only(y)


def mlp():
    return fl.serial(fl.dense(16), fl.relu(), fl.dense(3))


def cnn():
    return fl.serial(fl.reshape((12, 1)), fl.conv1d(4, 3, padding=1), fl.relu(),
                     fl.conv1d(4, 3, stride=2), fl.relu(), fl.flatten(), fl.dense(3))


def bn_model(norm):
    return fl.serial(fl.dense(8, use_bias=False), norm, fl.relu(), fl.dense(3))  # a bias before
    # the norm has gradient 0 up to rounding, which Adam would blow up to +-lr per step


# --- 1. k steps on N ranks == k steps of one process on the global batch ----------------

def train_both(model, opt_fn, in_shape, n, batch, epochs=2, lr=1e-2, single_model=None):
    """(distributed train state, single-process train state, per-step losses of both)."""
    x, y = data(n, in_shape)
    loss = fl.losses.softmax_cross_entropy
    d_opt = fl.optim.chain(dist.mean_gradients(comm), opt_fn())
    s_opt = opt_fn()
    ts = dist.broadcast(comm, fl.TrainState.create(fl.random.key(1), model, d_opt, in_shape))
    ref = fl.TrainState.create(fl.random.key(1), single_model or model, s_opt, in_shape)
    d_step = dist.make_step(model, loss, d_opt, comm)
    s_step = fl.make_step(single_model or model, loss, s_opt)
    d_loss, s_loss, sizes = [], [], []
    for e in range(epochs):
        k = fl.random.fold_in(fl.random.key(2), e)
        shards = fl.data.batches(k, (x, y), batch, shard=(comm.rank, comm.size))
        for part, whole in zip(shards, fl.data.batches(k, (x, y), batch)):
            ts, m = d_step(ts, part, lr)
            ref, ms = s_step(ref, whole, lr)
            d_loss.append(m["loss"])
            s_loss.append(ms["loss"])
            sizes.append((len(part[0]), m["examples"]))
    return ts, ref, d_loss, s_loss, sizes


for label, model_fn, in_shape in [("mlp", mlp, (5,)), ("cnn", cnn, (12,))]:
    for opt_name, opt_fn in [("sgd", fl.optim.sgd), ("adam", fl.optim.adam)]:
        # 11 examples in global batches of 4: 4, 4, 3 (with -n 3: parts 1,1,2 / 1,1,1)
        ts, ref, dl, sl, sizes = train_both(model_fn(), opt_fn, in_shape, 11, 4)
        R[f"{label}_{opt_name}"] = {
            "param_diff": max_diff(ts.params, ref.params),
            "opt_state_diff": max_diff(ts.opt_state[-1], ref.opt_state),
            "loss_diff": float(np.max(np.abs(np.subtract(dl, sl)))),
            "in_sync": dist.in_sync(comm, ts),
            "steps": ts.step, "sizes": sizes}

# a global batch with fewer examples than ranks: 9 examples in batches of 4 -> 4, 4, 1
ts, ref, dl, sl, sizes = train_both(mlp(), fl.optim.adam, (5,), 9, 4, epochs=1)
R["tiny_last_batch"] = {"param_diff": max_diff(ts.params, ref.params), "sizes": sizes,
                        "loss_diff": float(np.max(np.abs(np.subtract(dl, sl)))),
                        "in_sync": dist.in_sync(comm, ts)}

# sync batch norm trained on N ranks == batch_norm on the global batch in one process
ts, ref, dl, sl, sizes = train_both(bn_model(dist.sync_batch_norm(comm, momentum=0.9)),
                                    fl.optim.adam, (5,), 11, 4,
                                    single_model=bn_model(fl.batch_norm(momentum=0.9)))
R["sync_bn_training"] = {"param_diff": max_diff(ts.params, ref.params),
                         "state_diff": max_diff(ts.state, ref.state),
                         "loss_diff": float(np.max(np.abs(np.subtract(dl, sl)))),
                         "in_sync": dist.in_sync(comm, ts)}

# plain batch_norm + dropout: running statistics averaged, params and state in sync
model = fl.serial(fl.dense(8), fl.batch_norm(), fl.relu(), fl.dropout(0.5), fl.dense(3))
opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.momentum())
x, y = data(11, (5,))
step = dist.make_step(model, fl.losses.softmax_cross_entropy, opt, comm)


def run_dropout():
    ts = dist.broadcast(comm, fl.TrainState.create(fl.random.key(3), model, opt, (5,)))
    for part in fl.data.batches(fl.random.key(4), (x, y), 6, shard=(comm.rank, comm.size)):
        ts, _ = step(ts, part, 1e-2)
    return ts


first, again = run_dropout(), run_dropout()
# the dropout mask of rank r: the step key folded with r, on ones
sub = fl.random.split(fl.random.key(9))[1]
mask = fl.dropout(0.5).apply({}, {}, np.ones((1, 64), np.float32),
                             key=fl.random.fold_in(sub, comm.rank), train=True)
masks = comm.gather_all(mask.tolist())
R["bn_dropout"] = {"in_sync": dist.in_sync(comm, first), "deterministic": fl.tree.all_equal(first, again),
                   "state_changed": max_diff(first.state, model.init(fl.random.key(0), (5,))[1]),
                   "masks_differ": len({json.dumps(m) for m in masks}) == comm.size}

# --- 2. sync batch norm: forward and VJP against batch_norm on the global batch ---------

counts = [3, 0, 2, 4][:comm.size] if comm.size > 2 else [3, 2][:comm.size]
lo = sum(counts[:comm.rank])
hi = lo + counts[comm.rank]
for label, shape, axis in [("nc", (4,), -1), ("nwc", (5, 3), -1), ("ncw", (3, 5), 1)]:
    for dtype in (np.float32, np.float64):
        kx, kp, kd, ku = fl.random.split(fl.random.key(11), 4)
        x_all = fl.random.normal(kx, (sum(counts),) + shape, dtype) * 3 + 1
        dy_all = fl.random.normal(kd, x_all.shape, dtype)
        sync = dist.sync_batch_norm(comm, axis=axis, dtype=dtype, momentum=0.8)
        ref_bn = fl.batch_norm(axis=axis, dtype=dtype, momentum=0.8)
        params, state, _ = sync.init(kp, shape)
        params = {"scale": fl.random.normal(kp, params["scale"].shape, dtype),
                  "bias": params["bias"] + 0.5}
        params, state = read_only(params), read_only(state)
        xr = read_only(x_all[lo:hi])
        y, new_state, pb = sync.vjp(params, state, xr)
        dparams, dx = pb(read_only(dy_all[lo:hi]))
        ry, rstate, rpb = ref_bn.vjp(params, state, x_all)
        rdparams, rdx = rpb(dy_all)
        dsum = {k: comm.sum(v) for k, v in dparams.items()}  # parameter gradients: summed
        y_train = sync.apply(params, state, xr, train=True)
        y_eval = sync.apply(params, new_state, xr, train=False)
        scale = float(np.max(np.abs(rdx))) + 1.0
        R[f"sync_bn_{label}_{np.dtype(dtype).name}"] = {
            "y": max_diff(y, ry[lo:hi]), "dx": max_diff(dx, rdx[lo:hi]) / scale,
            "dparams": max_diff(dsum, rdparams), "state": max_diff(new_state, rstate),
            "apply_train": max_diff(y_train, y), "dtype_kept": bool(y.dtype == dx.dtype == dtype),
            "eval": max_diff(y_eval, ref_bn.apply(params, rstate, xr, train=False)),
            "shapes": [list(y.shape), list(dx.shape)]}

# the layer contract (fundl.testing.check_layer) with the same input on every rank: then each
# rank's finite differences move every rank's input together, which the global VJP matches
worst_contract = 0.0
for shape, kw in [((4,), {}), ((5, 3), {}), ((3, 5), {"axis": 1}), ((2, 2, 3), {"use_scale": False}),
                  ((4,), {"use_bias": False})]:
    result = check_layer(dist.sync_batch_norm(comm, **kw), shape, batch=4)
    worst_contract = max(worst_contract, result.max_error)
errors = []
layer = dist.sync_batch_norm(comm)
params, state, _ = layer.init(fl.random.key(0), (4,))
for bad in (np.ones((2, 5), np.float32), np.ones((2, 4), np.int64), np.ones((2, 4), np.float64)):
    try:
        layer.vjp(params, state, bad)
    except fl.LayerError as err:
        errors.append(str(err))
R["sync_bn_contract"] = {"worst_error": worst_contract, "errors": errors}

# float64 finite differences of the global function sum_r <u_r, y_r> through the reduction
x_all = fl.random.normal(fl.random.key(21), (sum(counts), 3, 2), np.float64) * 2 - 1
u_all = fl.random.normal(fl.random.key(22), x_all.shape, np.float64)
sync = dist.sync_batch_norm(comm, dtype=np.float64)
params, state, _ = sync.init(fl.random.key(23), (3, 2))
params = {"scale": np.array([1.5, -0.7]), "bias": np.array([0.1, 0.2])}
xr, ur = x_all[lo:hi], u_all[lo:hi]


def global_value(p, xl):
    return float(comm.sum([np.sum(ur * sync.vjp(p, state, xl)[0])])[0])


worst = 0.0
for j in range(3):
    vx_all = fl.random.normal(fl.random.fold_in(fl.random.key(24), j), x_all.shape, np.float64)
    vp = {k: fl.random.normal(fl.random.fold_in(fl.random.key(25 + i), j), v.shape, np.float64)
          for i, (k, v) in enumerate(params.items())}
    vx = vx_all[lo:hi]
    h = 1e-6
    plus = global_value({k: params[k] + h * vp[k] for k in params}, xr + h * vx)
    minus = global_value({k: params[k] - h * vp[k] for k in params}, xr - h * vx)
    numeric = (plus - minus) / (2 * h)
    _, _, pb = sync.vjp(params, state, xr)
    dp, dx = pb(ur)
    analytic = float(comm.sum([np.sum(dx * vx) + sum(np.sum(dp[k] * vp[k]) for k in dp)])[0])
    worst = max(worst, abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-12))
R["sync_bn_fd"] = {"worst_rel_error": worst}

# --- 3. evaluate with comm == evaluate in one process (exactly) ---------------------------

model = mlp()
params, state, _ = model.init(fl.random.key(6), (5,))
xv, yv = data(23, (5,), seed=8)
metrics = {"accuracy": "accuracy", "ce": "cross_entropy", "mse_loss": fl.losses.softmax_cross_entropy}
shared = fl.evaluate(model, params, state, (xv, yv), metrics=metrics, batch_size=4, comm=comm)
alone = fl.evaluate(model, params, state, (xv, yv), metrics=metrics, batch_size=4)
R["evaluate"] = {"shared": shared, "alone": alone, "equal": shared == alone}
# float64 batches of a source for float32 params: each rank casts only the batches it runs
source = [(xv[i:i + 4].astype(np.float64), yv[i:i + 4]) for i in range(0, 23, 4)]
casts = []
cast = Caster.__call__
Caster.__call__ = lambda self, x: casts.append(1) or cast(self, x)   # counts the casts
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)    # "x is float64 but the params are float32"
    from_source = fl.evaluate(model, params, state, source, metrics=metrics, comm=comm)
Caster.__call__ = cast
R["evaluate"].update(from_source=from_source, casts=len(casts),
                     runs=len(range(comm.rank, len(source), comm.size)))

# --- 4. fit with comm: same as one process; rank 0 checkpoints; resume ------------------

ckpt = os.path.join(out_dir, "fit.npz")
x, y = data(26, (5,))
xv, yv = data(10, (5,), seed=9)
kw = dict(key=fl.random.key(7), batch_size=8, lr=1e-2, val_data=(xv, yv), metrics=["accuracy"],
          progress=False)
d_opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.adam())
d_ts, d_hist = fl.fit(mlp(), fl.losses.softmax_cross_entropy, d_opt, (x, y), epochs=2,
                      checkpoint_path=ckpt, comm=comm, **kw)
s_ts, s_hist = fl.fit(mlp(), fl.losses.softmax_cross_entropy, fl.optim.adam(), (x, y), epochs=2,
                      **kw)
saved = fl.io.load(ckpt)
files = sorted(os.listdir(out_dir))
comm.barrier()
# resume: 1 epoch with a checkpoint, then every rank loads it and finishes epochs 2-3
ckpt1 = os.path.join(out_dir, "half.npz")
fl.fit(mlp(), fl.losses.softmax_cross_entropy, d_opt, (x, y), epochs=1, checkpoint_path=ckpt1,
       comm=comm, **kw)
resumed, _ = fl.fit(mlp(), fl.losses.softmax_cross_entropy, d_opt, (x, y), epochs=3,
                    train_state=fl.io.load(ckpt1), comm=comm, **kw)
straight, _ = fl.fit(mlp(), fl.losses.softmax_cross_entropy, d_opt, (x, y), epochs=3,
                     comm=comm, **kw)
real_stderr, sys.stderr = sys.stderr, io.StringIO()
try:
    fl.fit(mlp(), fl.losses.softmax_cross_entropy, d_opt, (x, y), epochs=1, comm=comm,
           **{**kw, "progress": True})
    shown = sys.stderr.getvalue()
finally:
    sys.stderr = real_stderr
R["fit"] = {"progress_chars": len(shown),
"param_diff": max_diff(d_ts.params, s_ts.params),
            "loss_diff": float(np.max(np.abs(np.subtract(d_hist["loss"], s_hist["loss"])))),
            "val_acc": [d_hist["val_accuracy"], s_hist["val_accuracy"]],
            "val_loss_diff": float(np.max(np.abs(np.subtract(d_hist["val_loss"],
                                                             s_hist["val_loss"])))),
            "checkpoint_is_final": fl.tree.all_equal(saved, d_ts), "files": files,
            "resume_identical": fl.tree.all_equal(resumed, straight),
            "in_sync": dist.in_sync(comm, d_ts)}

# --- 5. fusion, mean_gradients and broadcast on read-only inputs ------------------------

fusion = dist.Fusion(comm, bucket_bytes=64)        # 16 float32 per bucket: several buckets
tree = read_only({"a": np.arange(10, dtype=np.float32) * (comm.rank + 1),
                  "b": {"c": np.ones((3, 4), np.float32) * (comm.rank + 1), "n": np.int64(3)},
                  "d": np.full((2,), comm.rank + 1.0, np.float64)})
tri = comm.size * (comm.size + 1) / 2
first = fusion.sum(tree)
held = first["b"]["c"].copy()
second = fusion.sum(tree, weight=0.5)       # ``first`` is still alive: new buffers
weighted_ok = bool(np.array_equal(second["a"], np.arange(10) * tri * 0.5))
addresses = [b.__array_interface__["data"][0] for b in fusion._buffers]
del first, second
third = fusion.sum(tree)                           # nothing alive: the buffers are reused
reused = [b.__array_interface__["data"][0] for b in fusion._buffers] == addresses
R["fusion"] = {"buckets": len(fusion._buffers), "reused": reused, "weighted_ok": weighted_ok,
               "sum_ok": bool(np.array_equal(third["a"], np.arange(10) * tri)
                              and np.array_equal(third["b"]["c"], np.full((3, 4), tri))
                              and third["b"]["n"] == 3 and third["d"].dtype == np.float64
                              and np.array_equal(third["d"], [tri, tri])),
               "held_unchanged": bool(np.array_equal(held, np.full((3, 4), tri)))}
mg = dist.mean_gradients(comm)
g, s = mg.update(None, tree, mg.init(None))
R["mean_gradients"] = {"ok": bool(np.allclose(g["a"], np.arange(10) * tri / comm.size)
                                  and s == {})}
bc = dist.broadcast(comm, fl.TrainState.create(fl.random.key(comm.rank), mlp(), fl.optim.adam(),
                                               (5,))._replace(step=comm.rank + 4))
root_ts = fl.TrainState.create(fl.random.key(0), mlp(), fl.optim.adam(), (5,))._replace(step=4)
R["broadcast"] = {"equal_root": fl.tree.all_equal(bc, root_ts), "step": bc.step,
                  "key_read_only": not bc.key.flags.writeable}

# an optimizer without mean_gradients: the ranks' params drift apart at the first step
no_mean = dist.make_step(mlp(), fl.losses.softmax_cross_entropy, fl.optim.adam(), comm)
x_nm, y_nm = data(8 * comm.size, (5,))
ts_nm = fl.TrainState.create(fl.random.key(0), mlp(), fl.optim.adam(), (5,))
part = slice(8 * comm.rank, 8 * comm.rank + 8)
try:
    no_mean(ts_nm, (x_nm[part], y_nm[part]), 1e-2)
    R["no_mean_gradients"] = "accepted"
except ValueError as err:
    R["no_mean_gradients"] = str(err)
# ranks that start from different train states or learning rates are told at once
try:
    good = dist.make_step(mlp(), fl.losses.softmax_cross_entropy,
                          fl.optim.chain(dist.mean_gradients(comm), fl.optim.adam()), comm)
    ts_k = fl.TrainState.create(fl.random.key(comm.rank), mlp(),
                                fl.optim.chain(dist.mean_gradients(comm), fl.optim.adam()), (5,))
    good(ts_k, (x_nm[part], y_nm[part]), 1e-2)
    R["different_states"] = "accepted"
except ValueError as err:
    R["different_states"] = str(err)

with open(os.path.join(out_dir, f"rank_{comm.rank}.json"), "w") as f:
    json.dump(R, f)
