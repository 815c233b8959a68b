"""Run under ``mpiexec -n 2``: a model with ``sync_batch_norm`` trained data-parallel; rank 0
saves its train state with the architecture of the single-process model (``batch_norm`` in
its place) and writes what that model computes, and the refusal to record the MPI model
itself (its ``comm``).  tests/test_io_models.py loads the file in one process."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

import fundl as fl
from fundl import distributed as dist

comm = dist.world()
out_dir = sys.argv[1]


def model(norm):
    return fl.serial(fl.dense(6), norm, fl.relu(), fl.dense(3))


mpi_model = model(dist.sync_batch_norm(comm, momentum=0.9))
single_model = model(fl.batch_norm(momentum=0.9))
k_x, k_y = fl.random.split(fl.random.key(5))
x = fl.random.normal(k_x, (24, 4), np.float64)
y = fl.random.randint(k_y, (24,), 0, 3).astype(np.int64)
opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.momentum(0.9))
ts = fl.TrainState.create(fl.random.key(1), mpi_model, opt, (4,))
ts = ts._replace(params=fl.tree.cast(ts.params, np.float64), state=fl.tree.cast(ts.state, np.float64))
ts = ts._replace(opt_state=opt.init(ts.params))
step = dist.make_step(mpi_model, fl.losses.softmax_cross_entropy, opt, comm)
part = slice(comm.rank * 12, (comm.rank + 1) * 12)
for _ in range(3):
    ts, _ = step(ts, (x[part], y[part]), 0.1)

if comm.rank == 0:
    try:
        fl.io.save(os.path.join(out_dir, "refused.npz"), ts, model=mpi_model, in_shape=(4,))
        refusal = None
    except fl.io.CheckpointError as err:
        refusal = str(err)
    fl.io.save(os.path.join(out_dir, "ckpt.npz"), ts, model=single_model, in_shape=(4,))
    np.save(os.path.join(out_dir, "x.npy"), x)
    np.save(os.path.join(out_dir, "y_eval.npy"), mpi_model.apply(ts.params, ts.state, x))
    with open(os.path.join(out_dir, "rank_0.json"), "w") as f:
        json.dump({"refusal": refusal,
                   "refused_file": os.path.exists(os.path.join(out_dir, "refused.npz"))}, f)
comm.barrier()
