"""Run under ``mpiexec -n N``: ranks that disagree, or do not take the same steps, end the job
with a message on every rank instead of hanging (tests/test_distributed_failures.py).

Usage: ``failures.py OUT MODE TOKEN`` (``TOKEN`` only marks the processes, so that the test
can look for orphans).  Modes that end the job (each rank's stderr is asserted on):

- ``short_exit``: the last rank runs 2 batches, the others 3, then every rank ends its script;
- ``short_evaluate``: rank 1 runs 2 batches and goes on to ``evaluate(comm=)``;
- ``short_sum``: rank 1 runs 2 batches, then sums 5 numbers (``comm.sum``), which pairs with
  the other rank's loss reduction of the same size;
- ``stuck``: rank 1 runs 2 batches, then sleeps (the watchdog's deadline, ``FUNDL_MPI_TIMEOUT``);
- ``structure_change``: rank 1's gradients become float64 at the third ``mean_gradients`` call.

``agreement`` ends normally: every check there raises the same ``ValueError`` on every rank,
which is caught and written to ``OUT/rank_<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import fundl as fl
from fundl import distributed as dist

comm = dist.world()
out_dir, mode = sys.argv[1], sys.argv[2]
rank, size = comm.rank, comm.size


def mlp():
    return fl.serial(fl.dense(4), fl.relu(), fl.dense(2))


def train(batches):
    opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.sgd())
    ts = dist.broadcast(comm, fl.TrainState.create(fl.random.key(0), mlp(), opt, (3,)))
    step = dist.make_step(mlp(), fl.losses.softmax_cross_entropy, opt, comm)
    x, y = np.ones((4, 3), np.float32), np.zeros(4, np.int64)
    for _ in range(batches):
        ts, _ = step(ts, (x, y), 0.1)
    return ts


if mode == "short_exit":
    train(2 if rank == size - 1 else 3)
elif mode in ("short_evaluate", "short_sum", "stuck"):
    ts = train(2 if rank == 1 else 3)
    if rank == 1 and mode == "short_evaluate":
        fl.evaluate(mlp(), ts.params, ts.state, (np.ones((4, 3), np.float32), np.zeros(4, int)),
                    metrics=["accuracy"], comm=comm)
    elif rank == 1 and mode == "short_sum":
        comm.sum([1.0, 2.0, 3.0, 4.0, 5.0])
    elif rank == 1 and mode == "stuck":
        time.sleep(300)
elif mode == "structure_change":
    mg = dist.mean_gradients(comm)
    params = {"w": np.ones((30, 40), np.float32), "b": np.ones(40, np.float32)}
    state = mg.init(params)
    for call in range(4):
        grads = dict(params)
        if rank == 1 and call >= 2:
            grads["w"] = grads["w"].astype(np.float64)
        _, state = mg.update(params, grads, state)
elif mode == "agreement":
    R = {}
    x = fl.random.normal(fl.random.key(0), (40, 3), np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def fit_with(**change):
        """fit on every rank, rank 1 with ``change`` (arguments replaced); the error."""
        kw = dict(model=mlp(), loss=fl.losses.softmax_cross_entropy,
                  optimizer=fl.optim.chain(dist.mean_gradients(comm), fl.optim.adam()),
                  train_data=(x, y), key=fl.random.key(7), epochs=2, batch_size=8,
                  lr=fl.optim.exponential_decay(0.1, 0.5, 5), progress=False)
        if rank == 1:
            kw.update(change)
        try:
            fl.fit(comm=comm, **kw)
            return "accepted"
        except ValueError as err:
            return str(err)

    R["fit_key"] = fit_with(key=fl.random.key(8))
    R["fit_lr"] = fit_with(lr=fl.optim.exponential_decay(0.1, 0.5, 6))
    R["fit_epochs"] = fit_with(epochs=3)
    R["fit_batch_size"] = fit_with(batch_size=16)
    R["fit_optimizer"] = fit_with(optimizer=fl.optim.chain(dist.mean_gradients(comm),
                                                           fl.optim.sgd()))
    R["fit_model"] = fit_with(model=fl.serial(fl.dense(5), fl.relu(), fl.dense(2)))
    R["fit_data"] = fit_with(train_data=(x + 1, y))
    R["fit_same"] = fit_with()

    def gradients(change):
        mg = dist.mean_gradients(comm, bucket_bytes=64 if change == "bucket_bytes" and rank == 1
                                 else 1 << 20)
        grads = {"dense_0": {"w": np.ones((3, 4), np.float32), "b": np.ones(4, np.float32)}}
        if rank == 1 and change == "dtype":
            grads["dense_0"]["b"] = grads["dense_0"]["b"].astype(np.float64)
        if rank == 1 and change == "structure":
            grads["dense_1"] = {"w": np.ones((4, 2), np.float32)}
        try:
            mg.update(None, grads, mg.init(None))
            return "accepted"
        except ValueError as err:
            return str(err)

    for change in ("dtype", "structure", "bucket_bytes", "none"):
        R[f"gradients_{change}"] = gradients(change)

    opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.sgd())
    ts = dist.broadcast(comm, fl.TrainState.create(fl.random.key(0), mlp(), opt, (3,)))
    loss = fl.losses.softmax_cross_entropy if rank == 0 else fl.losses.cross_entropy(
        ignore_index=-1)
    try:
        dist.make_step(mlp(), loss, opt, comm)(ts, (np.ones((4, 3), np.float32),
                                                    np.zeros(4, np.int64)), 0.1)
        R["step_loss"] = "accepted"
    except ValueError as err:
        R["step_loss"] = str(err)
    with open(os.path.join(out_dir, f"rank_{rank}.json"), "w") as f:
        json.dump(R, f)
else:
    raise SystemExit(f"failures.py: unknown mode {mode!r}")
print(f"rank {rank}: reached the end of {mode}", flush=True)
