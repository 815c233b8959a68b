"""Run under ``mpiexec -n 2``: one rank fails; the guard of ``dist.world()`` must end every rank.

``fail.py layer``: rank 1 feeds a batch of the wrong width (a LayerError in its
forward) while rank 0 goes on into the step's collectives.
``fail.py nonfinite``: one example is NaN; the global loss is NaN on every
rank, so every rank raises NonFiniteLossError from fit at the same step.
"""

import sys

import numpy as np

import fundl as fl
from fundl import distributed as dist

comm = dist.world()
mode = sys.argv[1]
model = fl.serial(fl.dense(4), fl.relu(), fl.dense(2))
opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.sgd())
x = np.ones((8, 3), np.float32)
y = np.zeros(8, np.int64)
if mode == "layer":
    ts = dist.broadcast(comm, fl.TrainState.create(fl.random.key(0), model, opt, (3,)))
    step = dist.make_step(model, fl.losses.softmax_cross_entropy, opt, comm)
    part = np.ones((4, 5 if comm.rank == 1 else 3), np.float32)
    for _ in range(3):
        ts, _ = step(ts, (part, y[:4]), 0.1)
elif mode == "nonfinite":
    x[5] = np.nan
    fl.fit(model, fl.losses.softmax_cross_entropy, opt, (x, y), key=fl.random.key(0),
           epochs=3, batch_size=8, progress=False, comm=comm)
print(f"rank {comm.rank}: not reached", flush=True)
