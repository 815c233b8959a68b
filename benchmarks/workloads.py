"""The benchmark workloads: fundl models, their numpy references, data, and FLOP counts.

A workload builds, for one batch size, a set of *implementations*: objects with
``step()`` (one SGD training step on a fixed batch; returns the loss before the
update) and ``infer()`` (one forward).  The harness times ``step()``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import fundl
from fundl import random
from fundl import Layer, stateless_layer
from fundl.checks import check_float_input
from fundl.layers.activations import relu
from fundl.layers.dense import dense
from fundl.losses import softmax_cross_entropy
from fundl.optim.sgd import sgd
from fundl import TrainState, make_step

from .reference import CNNReference, MLPReference

__all__ = ["Workload", "workloads", "mlp_model", "cnn_model", "cnn_missing_reason", "make_batch"]

LR = 0.01
MLP_SIZES = (784, 512, 512, 10)


def make_batch(seed: int, n: int, in_shape: Tuple[int, ...], classes: int = 10):
    """A fixed float32 batch in [0, 1) and int64 labels, from a fundl key."""
    kx, ky = random.split(random.key(seed))
    x = random.uniform(kx, (n,) + tuple(in_shape), np.float32)
    y = random.randint(ky, (n,), 0, classes).astype(np.int64)
    return x, y


# --- models -----------------------------------------------------------------

def mlp_model(relu_layer: Callable[[], Layer] = relu, sizes=(512, 512, 10)) -> Layer:
    """784-512-512-10 with ReLU (``benchmarks.gap`` varies the ReLU and the sizes)."""
    layers: List[Layer] = []
    for i, size in enumerate(sizes):
        layers += [dense(size)] + ([relu_layer()] if i < len(sizes) - 1 else [])
    return fundl.serial(*layers)


def cnn_missing_reason() -> Optional[str]:
    """None if fundl has conv2d and max_pool2d, else why the fundl CNN row is skipped."""
    try:
        from fundl.layers.conv import conv2d  # noqa: F401
        from fundl.layers.pool import max_pool2d  # noqa: F401
    except Exception as err:  # noqa: BLE001 - report any import problem as a skip note
        return f"fundl.layers.conv.conv2d / fundl.layers.pool.max_pool2d not importable ({err})"
    return None


def _flatten() -> Layer:
    """Flatten every axis after the batch axis (a fundl reshape layer, if there is one)."""
    try:
        from fundl.layers.reshape import flatten  # type: ignore
        return flatten()
    except Exception:  # noqa: BLE001 - fall back to a local stateless layer
        pass

    def init(key, in_shape):
        return {}, (int(np.prod(in_shape)),)

    def apply(params, x):
        check_float_input(x)
        return x.reshape(x.shape[0], -1)

    def vjp(params, x):
        check_float_input(x)
        shape = x.shape
        return x.reshape(shape[0], -1), lambda dy: ({}, dy.reshape(shape))

    return stateless_layer("flatten", init, apply, vjp)


def cnn_model(relu_layer: Callable[[], Layer] = relu,
              pool: Optional[Callable[[], Layer]] = None) -> Layer:
    """conv 3x3 32 same, relu, max-pool 2, conv 3x3 64 same, relu, max-pool 2, flatten, dense 10
    (``benchmarks.gap`` varies the ReLU and the pool)."""
    from fundl.layers.conv import conv2d
    from fundl.layers.pool import max_pool2d
    pool = pool or (lambda: max_pool2d(2))
    return fundl.serial(conv2d(32, (3, 3), padding="same"), relu_layer(), pool(),
                        conv2d(64, (3, 3), padding="same"), relu_layer(), pool(),
                        _flatten(), dense(10))


# --- FLOPs ------------------------------------------------------------------

def mlp_flops(n: int) -> float:
    """Matmul FLOPs of one training step (forward 2*n*i*o; backward dW 2*n*i*o, dX except layer 1)."""
    total = 0.0
    for li, (i, o) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:])):
        total += 2 * n * i * o * (3 if li > 0 else 2)
    return total


def cnn_flops(n: int) -> float:
    """Matmul FLOPs of one CNN training step (im2col GEMMs and the dense layer)."""
    c1 = 2 * n * 28 * 28 * 9 * 1 * 32
    c2 = 2 * n * 14 * 14 * 9 * 32 * 64
    d = 2 * n * 7 * 7 * 64 * 10
    return 2 * c1 + 3 * c2 + 3 * d


# --- implementations --------------------------------------------------------

class FundlImpl:
    """fundl's ``make_step`` on a fixed batch (the TrainState is carried over)."""

    name = "fundl"

    def __init__(self, model: Layer, in_shape, x, y) -> None:
        self.model = model
        self.ts = TrainState.create(random.key(0), model, sgd(), in_shape=in_shape)
        self._step = make_step(model, softmax_cross_entropy, sgd())
        self.x, self.y = x, y

    def step(self) -> float:
        self.ts, metrics = self._step(self.ts, (self.x, self.y), LR)
        return metrics["loss"]

    def infer(self) -> np.ndarray:
        return self.model.apply(self.ts.params, self.ts.state, self.x)

    def params_list(self) -> List[np.ndarray]:
        return [np.asarray(a) for a in fundl.tree.leaves(self.ts.params)]


class RefImpl:
    """A numpy reference on a fixed batch."""

    name = "numpy"

    def __init__(self, ref, x, y) -> None:
        self.ref, self.x, self.y = ref, x, y

    def step(self) -> float:
        return self.ref.step(self.x, self.y, LR)

    def infer(self) -> np.ndarray:
        return self.ref.forward(self.x)


class Workload:
    """One benchmark row group: a name, a batch size, FLOPs, and implementation builders."""

    def __init__(self, name: str, batch: int, in_shape: Tuple[int, ...],
                 flops: Callable[[int], float], fundl_model: Callable[[], Layer],
                 reference: Callable[[Dict], Any], fundl_skip: Optional[str] = None) -> None:
        self.name, self.batch, self.in_shape = name, batch, in_shape
        self.flops = flops(batch)
        self.fundl_model, self.reference, self.fundl_skip = fundl_model, reference, fundl_skip

    def data(self):
        return make_batch(1, self.batch, self.in_shape)

    def initial_params(self) -> Dict:
        """fundl's initial params (the reference copies them); from fundl's own init."""
        model = self.fundl_model()
        return TrainState.create(random.key(0), model, sgd(), in_shape=self.in_shape).params

    def implementations(self, which: Tuple[str, ...]) -> Dict[str, Any]:
        """``{name: impl}`` for the requested names ("fundl", "numpy", "torch", "jax")."""
        from . import others
        x, y = self.data()
        impls: Dict[str, Any] = {}
        params = self.initial_params()
        if "fundl" in which and self.fundl_skip is None:
            impls["fundl"] = FundlImpl(self.fundl_model(), self.in_shape, x, y)
        if "numpy" in which:
            impls["numpy"] = RefImpl(self.reference(params), x, y)
        for other in ("torch", "jax"):
            if other in which:
                impl = others.build(other, self.name, params, x, y, LR)
                if impl is not None:
                    impls[other] = impl
        return impls


def workloads(batches=(32, 128, 512), cnn_batch: int = 64) -> List[Workload]:
    """The benchmark's workloads (the CNN uses the numpy reference's init if fundl has no conv)."""
    out = [Workload("mlp", b, (784,), mlp_flops, mlp_model, MLPReference) for b in batches]
    skip = cnn_missing_reason()
    out.append(Workload("cnn", cnn_batch, (28, 28, 1), cnn_flops,
                        cnn_model if skip is None else _cnn_stub_model, CNNReference, skip))
    return out


def _cnn_stub_model() -> Layer:
    """A params-only stand-in for the fundl CNN (used to initialise the references
    when fundl has no conv yet): same param tree layout and Glorot-uniform init."""
    from fundl.initializers import glorot_uniform, zeros

    def conv_like(c_out):
        def init(key, in_shape):
            h, w, c = in_shape
            kw, kb = random.split(key)
            fan = (3, 3, c, c_out)
            return {"w": glorot_uniform(kw, fan), "b": zeros(kb, (c_out,))}, (h, w, c_out)
        return stateless_layer("conv2d", init, lambda p, x: x, lambda p, x: (x, None))

    def pool():
        def init(key, in_shape):
            h, w, c = in_shape
            return {}, (h // 2, w // 2, c)
        return stateless_layer("max_pool2d", init, lambda p, x: x, lambda p, x: (x, None))

    return fundl.serial(conv_like(32), relu(), pool(), conv_like(64), relu(), pool(),
                        _flatten(), dense(10))

