"""The benchmark workloads: fundl models, their data, FLOP counts and implementations.

A workload is one network at one batch size with one optimizer (SGD or Adam).
It builds a set of *implementations*: objects with ``step()`` (one training step
on a fixed batch; returns the loss before the update) and ``infer()`` (one
forward).  The harness times ``step()``.

Every implementation starts from fundl's initial weights (``initial_params``,
copied into the other frameworks' layouts by :mod:`benchmarks.others`) and the
same batch, so their first-step losses must agree.

Workloads (``KINDS``; sizes in ``FULL``, the tests' tiny sizes in ``TINY``):

- ``mlp``: 784-512-512-10, ReLU (batches 32, 128, 512);
- ``cnn``: 28x28x1, conv 3x3 32 same, relu, pool 2, conv 3x3 64 same, relu, pool 2,
  dense 10 (batch 64);
- ``cnn_bn``: 32x32x3, conv 3x3 32 same, batch norm, relu, pool 2, the same with 64
  channels, flatten, dense 10 (batch 64);
- ``lstm``: an LSTM classifier, batch 64, 50 steps of 32 features, 128 units, the
  last state into dense 10;
- ``gru_paper``: the MNIST-1D paper's model (``examples/mnist1d.py``): 40 steps of 1
  feature, a bidirectional GRU with 6 units per direction, every step's output
  flattened into dense 10 (batch 100, the paper's); ``gru128`` the same with 128 units;
- ``transformer``: a 2-block pre-LN causal transformer language model, batch 32,
  64 tokens, width 128, 4 heads, vocabulary 96 (embedding + learned positional
  embedding; per block ``x + mha(ln(x))`` and ``x + mlp(ln(x))``, the MLP
  d -> 4d -> d with GELU; final ln and dense(vocab); cross entropy over every position).

All use softmax cross-entropy; SGD with lr ``LR`` (0.01) or Adam with ``ADAM_LR``
(1e-3, betas 0.9/0.999, eps 1e-8).  The numpy reference exists for ``mlp`` and
``cnn`` with SGD only.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import fundl
from fundl import random
from fundl import Layer, stateless_layer
from fundl.checks import check_float_input
from fundl.layers.activations import relu
from fundl.layers.dense import dense
from fundl.losses import softmax_cross_entropy
from fundl.optim import adam
from fundl.optim.sgd import sgd
from fundl import TrainState, make_step

from .reference import CNNReference, MLPReference

__all__ = ["Workload", "workloads", "KINDS", "FULL", "TINY", "LR", "ADAM_LR", "OPTIMIZERS",
           "mlp_model", "cnn_model", "cnn_bn_model", "lstm_model", "gru_model",
           "transformer_model", "cnn_missing_reason", "make_batch",
           "make_tokens", "mlp_flops", "cnn_flops", "cnn_bn_flops", "lstm_flops", "gru_flops",
           "transformer_flops", "FundlImpl", "RefImpl"]

LR = 0.01        # SGD's learning rate (every framework)
ADAM_LR = 1e-3   # Adam's learning rate (every framework), betas (0.9, 0.999), eps 1e-8
MLP_SIZES = (784, 512, 512, 10)
OPTIMIZERS: Dict[str, Tuple[Callable[[], Any], float]] = {"sgd": (sgd, LR), "adam": (adam, ADAM_LR)}
KINDS = ("mlp", "cnn", "cnn_bn", "lstm", "gru_paper", "gru128", "transformer")

#: The benchmark's sizes.  (mlp and cnn have fixed layer sizes; their batches are
#: arguments of :func:`workloads`.)
FULL: Dict[str, Dict[str, int]] = {
    "cnn_bn": dict(batch=64, size=32, channels=3, c1=32, c2=64, classes=10),
    "lstm": dict(batch=64, steps=50, features=32, hidden=128, classes=10),
    "gru_paper": dict(batch=100, steps=40, features=1, hidden=6, classes=10),
    "gru128": dict(batch=100, steps=40, features=1, hidden=128, classes=10),
    "transformer": dict(batch=32, steps=64, width=128, heads=4, vocab=96, blocks=2),
}
#: Tiny sizes of the same networks, for the smoke tests (``--size tiny``).
TINY: Dict[str, Dict[str, int]] = {
    "cnn_bn": dict(batch=3, size=8, channels=3, c1=4, c2=6, classes=10),
    "lstm": dict(batch=4, steps=5, features=3, hidden=8, classes=10),
    "gru_paper": dict(batch=4, steps=6, features=1, hidden=3, classes=10),
    "gru128": dict(batch=4, steps=6, features=1, hidden=8, classes=10),
    "transformer": dict(batch=2, steps=8, width=16, heads=2, vocab=11, blocks=2),
}


def make_batch(seed: int, n: int, in_shape: Tuple[int, ...], classes: int = 10):
    """A fixed float32 batch in [0, 1) and int64 labels, from a fundl key."""
    kx, ky = random.split(random.key(seed))
    x = random.uniform(kx, (n,) + tuple(in_shape), np.float32)
    y = random.randint(ky, (n,), 0, classes).astype(np.int64)
    return x, y


def make_tokens(seed: int, n: int, steps: int, vocab: int):
    """A fixed language-model batch: ids ``(n, steps)`` and the next ids ``(n, steps)`` (int64)."""
    ids = random.randint(random.key(seed), (n, steps + 1), 0, vocab).astype(np.int64)
    return np.ascontiguousarray(ids[:, :-1]), np.ascontiguousarray(ids[:, 1:])


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
    # fundl's names through the module (not imported here): benchmarks.versions can then
    # build this model with another checkout's fundl
    pool = pool or (lambda: fundl.max_pool2d(2))
    return fundl.serial(fundl.conv2d(32, (3, 3), padding="same"), relu_layer(), pool(),
                        fundl.conv2d(64, (3, 3), padding="same"), relu_layer(), pool(),
                        fundl.flatten(), dense(10))


def cnn_bn_model(c1: int = 32, c2: int = 64, classes: int = 10, **_: int) -> Layer:
    """(conv 3x3 same, batch norm, relu, max-pool 2) with ``c1`` then ``c2`` channels,
    flatten, dense ``classes``; NHWC input ``(size, size, channels)``."""
    return fundl.serial(fundl.conv2d(c1, 3, padding="same"), fundl.batch_norm(), fundl.relu(),
                        fundl.max_pool2d(2),
                        fundl.conv2d(c2, 3, padding="same"), fundl.batch_norm(), fundl.relu(),
                        fundl.max_pool2d(2),
                        fundl.flatten(), fundl.dense(classes))


def lstm_model(hidden: int = 128, classes: int = 10, **_: int) -> Layer:
    """``lstm(hidden, return_sequences=False)``, dense ``classes``; input ``(steps, features)``."""
    return fundl.serial(fundl.lstm(hidden, return_sequences=False), fundl.dense(classes))


def gru_model(steps: int = 40, features: int = 1, hidden: int = 6, classes: int = 10,
              **_: int) -> Layer:
    """The MNIST-1D paper's GRU (``examples/mnist1d.py`` with ``hidden`` units per direction):
    input ``(steps,)`` reshaped to ``(steps, 1)``, bidirectional GRU, every step's output
    flattened (``steps * 2 * hidden``), dense ``classes``."""
    return fundl.serial(fundl.reshape((steps, features)), fundl.bidirectional(fundl.gru(hidden)),
                        fundl.flatten(), fundl.dense(classes))


def transformer_model(steps: int = 64, width: int = 128, heads: int = 4, vocab: int = 96,
                      blocks: int = 2, **_: int) -> Layer:
    """Pre-LN causal transformer LM on ids ``(batch, steps)`` -> logits ``(batch, steps, vocab)``:
    embedding, positional embedding (``max_len = steps``), ``blocks`` times
    ``x + mha(ln(x))`` (causal) and ``x + dense(gelu(dense_4d(ln(x))))``, final ln, dense vocab."""
    layers: List[Layer] = [fundl.embedding(vocab, width), fundl.positional_embedding(steps)]
    for _ in range(blocks):
        layers.append(fundl.residual(fundl.serial(
            fundl.layer_norm(), fundl.multi_head_attention(heads, causal=True))))
        layers.append(fundl.residual(fundl.serial(
            fundl.layer_norm(), fundl.dense(4 * width), fundl.gelu(), fundl.dense(width))))
    layers += [fundl.layer_norm(), fundl.dense(vocab)]
    return fundl.serial(*layers)


# --- FLOPs ------------------------------------------------------------------
# Matmul FLOPs of one training step, forward and backward, counted per layer as
# 2 * m * k * n per (m, k) @ (k, n) product: the forward product, the weight
# gradient and the input gradient (except where the input needs none: the model's
# input).  Products with a zero operand (an RNN's initial state) are not counted;
# neither are the embedding lookup and its scatter-add gradient (fundl does the
# latter as a one-hot matmul for small vocabularies; torch does not).

def mlp_flops(n: int) -> float:
    """Matmul FLOPs of one training step (forward 2*n*i*o; backward dW 2*n*i*o, dX except layer 1)."""
    total = 0.0
    for li, (i, o) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:])):
        total += 2 * n * i * o * (3 if li > 0 else 2)
    return total


def _conv_flops(n: int, h: int, w: int, c_in: int, c_out: int, k: int = 3) -> float:
    """Forward FLOPs of a 'same' k x k convolution as im2col @ kernel."""
    return 2.0 * n * h * w * k * k * c_in * c_out


def cnn_flops(n: int) -> float:
    """Matmul FLOPs of one CNN training step (im2col GEMMs and the dense layer)."""
    c1 = _conv_flops(n, 28, 28, 1, 32)
    c2 = _conv_flops(n, 14, 14, 32, 64)
    d = 2 * n * 7 * 7 * 64 * 10
    return 2 * c1 + 3 * c2 + 3 * d


def cnn_bn_flops(batch: int, size: int, channels: int, c1: int, c2: int, classes: int) -> float:
    """conv 1 (forward + dW, no dX), conv 2 and the dense layer (forward, dW, dX)."""
    n, s = batch, size
    return (2 * _conv_flops(n, s, s, channels, c1) + 3 * _conv_flops(n, s // 2, s // 2, c1, c2)
            + 3 * 2.0 * n * (s // 4) * (s // 4) * c2 * classes)


def lstm_flops(batch: int, steps: int, features: int, hidden: int, classes: int) -> float:
    """Input projection (forward + dW), recurrent ``h @ w_h`` over ``steps - 1`` steps
    (forward, dW_h, dh), dense on the last state (forward, dW, dX); 4 gates."""
    n, t, g = batch, steps, 4 * hidden
    return (2 * 2.0 * n * t * features * g + 3 * 2.0 * n * (t - 1) * hidden * g
            + 3 * 2.0 * n * hidden * classes)


def gru_flops(batch: int, steps: int, features: int, hidden: int, classes: int) -> float:
    """Two directions of: input projection (forward + dW), recurrent ``h @ w_h`` over
    ``steps - 1`` steps (forward, dW_h, dh); 3 gates; then dense on the flattened
    ``steps * 2 * hidden`` outputs (forward, dW, dX)."""
    n, t, g = batch, steps, 3 * hidden
    per_direction = 2 * 2.0 * n * t * features * g + 3 * 2.0 * n * (t - 1) * hidden * g
    return 2 * per_direction + 3 * 2.0 * n * t * 2 * hidden * classes


def transformer_flops(batch: int, steps: int, width: int, heads: int, vocab: int,
                      blocks: int) -> float:
    """Per block: q/k/v and output projections (4 d^2 per token), the MLP (8 d^2 per
    token), ``q k^T`` and ``p v`` (``2 * steps^2 * d`` per sequence each, the full
    square although causal), all forward, dW and dX; then the vocabulary head
    (forward, dW, dX).  Heads split ``d``, so they do not change the count."""
    m, d = batch * steps, width
    dense_per_block = 2.0 * m * (3 * d * d + d * d + 4 * d * d + 4 * d * d)
    attention_per_block = 2 * 2.0 * batch * steps * steps * d
    return blocks * 3 * (dense_per_block + attention_per_block) + 3 * 2.0 * m * d * vocab


# --- implementations --------------------------------------------------------

class FundlImpl:
    """fundl's ``make_step`` on a fixed batch (the TrainState is carried over)."""

    name = "fundl"

    def __init__(self, model: Layer, in_shape, x, y, optimizer=None, lr: float = LR) -> None:
        optimizer = sgd() if optimizer is None else optimizer
        self.model, self.lr = model, lr
        self.ts = TrainState.create(random.key(0), model, optimizer, in_shape=in_shape)
        self._step = make_step(model, softmax_cross_entropy, optimizer)
        self.x, self.y = x, y

    def step(self) -> float:
        self.ts, metrics = self._step(self.ts, (self.x, self.y), self.lr)
        return metrics["loss"]

    def infer(self) -> np.ndarray:
        return self.model.apply(self.ts.params, self.ts.state, self.x)

    def params_list(self) -> List[np.ndarray]:
        return [np.asarray(a) for a in fundl.tree.leaves(self.ts.params)]


class RefImpl:
    """A numpy reference on a fixed batch (SGD)."""

    name = "numpy"

    def __init__(self, ref, x, y, lr: float = LR) -> None:
        self.ref, self.x, self.y, self.lr = ref, x, y, lr

    def step(self) -> float:
        return self.ref.step(self.x, self.y, self.lr)

    def infer(self) -> np.ndarray:
        return self.ref.forward(self.x)


class Workload:
    """One benchmark row group: a network (``name``), a batch size, an optimizer, FLOPs,
    and the implementation builders.

    ``cfg`` holds the network's sizes (passed to the model builder and to
    :func:`benchmarks.others.build`); ``data()`` the fixed batch; ``reference`` the
    numpy reference's constructor (None if there is none).  ``notes`` says why an
    implementation is absent.
    """

    def __init__(self, name: str, batch: int, in_shape: Tuple[int, ...], flops: float,
                 fundl_model: Callable[[], Layer], reference: Optional[Callable[[Dict], Any]] = None,
                 fundl_skip: Optional[str] = None, optimizer: str = "sgd",
                 cfg: Optional[Dict[str, int]] = None,
                 data: Optional[Callable[[], Tuple[np.ndarray, np.ndarray]]] = None) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose from {list(OPTIMIZERS)}")
        self.name, self.batch, self.in_shape = name, batch, tuple(in_shape)
        self.flops = float(flops)
        self.fundl_model, self.fundl_skip = fundl_model, fundl_skip
        self.optimizer, self.lr = optimizer, OPTIMIZERS[optimizer][1]
        self.cfg = dict(cfg or {})
        self._data = data
        self.notes: Dict[str, str] = {}
        if reference is not None and optimizer != "sgd":
            self.notes["numpy"] = "the numpy reference is SGD only"
            reference = None
        elif reference is None:
            self.notes["numpy"] = "no numpy reference for this workload"
        self.reference = reference

    @property
    def label(self) -> str:
        return f"{self.name}/{self.optimizer}"

    def data(self):
        if self._data is not None:
            return self._data()
        return make_batch(1, self.batch, self.in_shape)

    def initial_params(self) -> Dict:
        """fundl's initial params (the others copy them); from fundl's own init."""
        model = self.fundl_model()
        return TrainState.create(random.key(0), model, sgd(), in_shape=self.in_shape).params

    def implementations(self, which: Sequence[str]) -> Dict[str, Any]:
        """``{name: impl}`` for the requested names ("fundl", "numpy", "torch", "jax")."""
        from . import others
        x, y = self.data()
        impls: Dict[str, Any] = {}
        params = self.initial_params()
        if "fundl" in which and self.fundl_skip is None:
            impls["fundl"] = FundlImpl(self.fundl_model(), self.in_shape, x, y,
                                       OPTIMIZERS[self.optimizer][0](), self.lr)
        if "numpy" in which and self.reference is not None:
            impls["numpy"] = RefImpl(self.reference(params), x, y, self.lr)
        for other in ("torch", "jax"):
            if other in which:
                why = others.unsupported(other, self.name, self.optimizer)
                if why:
                    self.notes[other] = why
                    continue
                impl = others.build(other, self.name, params, x, y, self.lr,
                                    optimizer=self.optimizer, cfg=self.cfg)
                if impl is not None:
                    impls[other] = impl
        return impls


def _sized(kind: str, cfg: Dict[str, int], optimizer: str) -> Workload:
    """A workload of kind ``kind`` (not mlp/cnn) with sizes ``cfg``."""
    n = cfg["batch"]
    if kind == "cnn_bn":
        shape = (cfg["size"], cfg["size"], cfg["channels"])
        return Workload(kind, n, shape, cnn_bn_flops(**cfg), lambda: cnn_bn_model(**cfg),
                        optimizer=optimizer, cfg=cfg)
    if kind == "lstm":
        return Workload(kind, n, (cfg["steps"], cfg["features"]), lstm_flops(**cfg),
                        lambda: lstm_model(**cfg), optimizer=optimizer, cfg=cfg)
    if kind in ("gru_paper", "gru128"):
        return Workload(kind, n, (cfg["steps"],), gru_flops(**cfg), lambda: gru_model(**cfg),
                        optimizer=optimizer, cfg=cfg)
    if kind == "transformer":
        return Workload(kind, n, (cfg["steps"],), transformer_flops(**cfg),
                        lambda: transformer_model(**cfg), optimizer=optimizer, cfg=cfg,
                        data=lambda: make_tokens(1, n, cfg["steps"], cfg["vocab"]))
    raise ValueError(f"unknown workload {kind!r}; choose from {list(KINDS)}")


def workloads(batches=(32, 128, 512), cnn_batch: int = 64, *, size: str = "full",
              names: Optional[Sequence[str]] = None,
              optimizers: Sequence[str] = ("sgd", "adam")) -> List[Workload]:
    """The benchmark's workloads, in ``KINDS`` order, each with every optimizer in ``optimizers``.

    ``batches`` are the MLP's, ``cnn_batch`` the CNN's; ``size`` is ``"full"``
    (``FULL``) or ``"tiny"`` (``TINY``) for the others; ``names`` keeps only those
    workloads (default all).  The CNN uses a stand-in init if fundl has no conv.
    """
    if size not in ("full", "tiny"):
        raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")
    names = KINDS if names is None else tuple(names)
    unknown = set(names) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown workloads {sorted(unknown)}; choose from {list(KINDS)}")
    sizes = FULL if size == "full" else TINY
    out: List[Workload] = []
    for kind in KINDS:
        if kind not in names:
            continue
        for opt in optimizers:
            if kind == "mlp":
                out += [Workload("mlp", b, (784,), mlp_flops(b), mlp_model, MLPReference,
                                 optimizer=opt) for b in batches]
            elif kind == "cnn":
                skip = cnn_missing_reason()
                out.append(Workload("cnn", cnn_batch, (28, 28, 1), cnn_flops(cnn_batch),
                                    cnn_model if skip is None else _cnn_stub_model,
                                    CNNReference, skip, optimizer=opt))
            else:
                out.append(_sized(kind, sizes[kind], opt))
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

