"""Run under ``mpiexec -n N`` (N = 2 or 3; 36 examples in global batches of 12): fit(comm=) with
a two-input, two-output model and with a data source equals one process.  (Uneven parts and a
combined loss with a ratio part: tests/mpi_scripts/exact.py.)  Writes ``OUT/rank_<r>.json``;
tests/test_fit_mpi.py asserts on it."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

import fundl as fl
from fundl import distributed as dist

comm = dist.world()
out_dir = sys.argv[1]
k1, k2, k3 = fl.random.split(fl.random.key(3), 3)
xa = fl.random.normal(k1, (36, 3), np.float64)
xb = fl.random.normal(k2, (36, 2), np.float64)
y_cls = fl.random.randint(k3, (36,), 0, 3).astype(np.int64)
y_reg = (xa[:, :1] - xb[:, 1:]).astype(np.float64)


def model():
    return fl.serial(fl.parallel(fl.dense(8), fl.dense(8)), fl.fan_in_sum(), fl.relu(),
                     fl.fan_out(2), fl.parallel(fl.dense(3), fl.dense(1)))


loss = fl.losses.combine(fl.losses.softmax_cross_entropy, fl.losses.mse, weights=(1.0, 0.5))
metrics = {"accuracy": fl.metrics.at(0, "accuracy"), "mae": fl.metrics.at(1, "mae")}
key = fl.random.key(1)
ts0 = fl.TrainState.create(key, model(), fl.optim.sgd(), ((3,), (2,)))
ts0 = ts0._replace(params=fl.tree.cast(ts0.params, np.float64))
data = ((xa, xb), (y_cls, y_reg))
kw = dict(key=key, epochs=2, batch_size=12, lr=0.1, val_data=data, metrics=metrics,
          progress=False)
d_opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.sgd())
d_ts0 = ts0._replace(opt_state=d_opt.init(ts0.params))


def diff(a, b):
    return max(float(np.max(np.abs(p - q))) for p, q in zip(fl.tree.leaves(a), fl.tree.leaves(b)))


d_ts, d_hist = fl.fit(model(), loss, d_opt, data, comm=comm, train_state=d_ts0, **kw)
s_ts, s_hist = fl.fit(model(), loss, fl.optim.sgd(), data, train_state=ts0, **kw)
source = fl.data.from_arrays(data, 12)
src_ts, src_hist = fl.fit(model(), loss, d_opt, source, comm=comm, train_state=d_ts0, **kw)
R = {"tuple_param_diff": diff(d_ts.params, s_ts.params),
     "source_param_diff": diff(src_ts.params, s_ts.params),
     "hist_keys": list(d_hist),
     "loss_diff": max(abs(a - b) for a, b in zip(d_hist["loss"], s_hist["loss"])),
     "val_loss_diff": max(abs(a - b) for a, b in zip(d_hist["val_loss"], s_hist["val_loss"])),
     "accuracy": [d_hist["accuracy"], s_hist["accuracy"]],
     "val_accuracy": [d_hist["val_accuracy"], s_hist["val_accuracy"]]}
with open(os.path.join(out_dir, f"rank_{comm.rank}.json"), "w") as f:
    json.dump(R, f)
