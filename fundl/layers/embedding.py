"""Embedding: integer ids -> rows of a learned table ``w``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import (LayerError, as_shape, check_float_input, check_param_dtype, int_arg)
from ..core import Layer, builder, stateless_layer
from ..initializers import Initializer, normal

__all__ = ["embedding", "tied_output"]

# One-hot matmul for the gradient when the one-hot matrix is small (fast BLAS,
# measured quicker than np.add.at up to a vocabulary of ~200); otherwise sort.
_ONE_HOT_MAX_VOCAB = 128
_ONE_HOT_MAX_ENTRIES = 1 << 22


def _check_ids(ids: Any, vocab_size: int) -> None:
    if not isinstance(ids, np.ndarray):
        raise LayerError(f"expected an integer numpy array of ids, got {type(ids).__name__}")
    if ids.dtype.kind not in "iu":
        raise LayerError(f"expected integer ids in [0, {vocab_size}), got dtype {ids.dtype}; "
                         f"cast them, e.g. ids.astype(np.int64)")
    if ids.ndim < 1:
        raise LayerError(f"expected ids of shape (batch, ...), got a scalar of shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = np.unique(ids[(ids < 0) | (ids >= vocab_size)])
        shown = ", ".join(str(int(b)) for b in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise LayerError(f"expected ids in [0, {vocab_size}), got out-of-range ids {shown}")


def _scatter_add_rows(ids: np.ndarray, rows: np.ndarray, vocab_size: int) -> np.ndarray:
    """``dw`` of shape ``(vocab_size, F)`` with ``dw[i] = sum of rows[j] where ids[j] == i``."""
    n, f = rows.shape
    if vocab_size <= _ONE_HOT_MAX_VOCAB and vocab_size * n <= _ONE_HOT_MAX_ENTRIES:
        one_hot = np.zeros((vocab_size, n), rows.dtype)
        one_hot[ids, np.arange(n)] = 1.0
        return one_hot @ rows
    dw = np.zeros((vocab_size, f), rows.dtype)
    if n == 0:
        return dw
    # Sort the ids: each id's first occurrence is written by plain (unique)
    # fancy assignment; only the repeats need the slower np.add.at.
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    first = np.empty(n, bool)
    first[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=first[1:])
    dw[sorted_ids[first]] = rows[order[first]]
    if not first.all():
        repeat = ~first
        np.add.at(dw, sorted_ids[repeat], rows[order[repeat]])
    return dw


@builder
def embedding(vocab_size: int, features: int, *, w_init: Initializer = normal(1.0),
              dtype: Any = np.float32, name: str = "embedding") -> Layer:
    """Look up a ``features``-vector for each integer id in ``[0, vocab_size)``.

    Shapes: ids ``(batch, ...)`` of any integer dtype -> ``(batch, ..., features)``.
    Params: ``w`` of shape ``(vocab_size, features)`` and ``dtype`` (float32),
    initialised by ``w_init`` (default ``normal(1.0)``: N(0, 1), as in PyTorch).
    The gradient of ``w`` sums the cotangents of repeated ids; the input
    gradient ``dx`` is ``None`` (ids are not differentiable).  Float ids and
    ids out of range raise a LayerError naming the range and the bad values.
    """
    vocab_size = int_arg("embedding", "vocab_size", vocab_size)
    features = int_arg("embedding", "features", features)
    dtype = np.dtype(dtype)

    def init(key, in_shape):
        return {"w": w_init(key, (vocab_size, features), dtype)}, as_shape(in_shape) + (features,)

    def apply(params, ids):
        _check_ids(ids, vocab_size)
        return np.take(params["w"], ids, axis=0)

    def vjp(params, ids, need_dx=True):
        y = apply(params, ids)
        w = params["w"]

        def pullback(dy):
            rows = np.asarray(dy, w.dtype).reshape(-1, features)
            return {"w": _scatter_add_rows(ids.reshape(-1), rows, vocab_size)}, None

        return y, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",), fresh=("y", "dparams"))



@builder(children=("embedding",))
def tied_output(embedding: Layer, *, name: str = "tied_output") -> Layer:
    """The output projection tied to a shared embedding: ``logits = x @ w.T``.

    ``embedding`` is ``fl.shared(fl.embedding(vocab_size, features))``, used earlier
    in the same model.  This layer has no params of its own (``{}`` in the params
    tree): it runs with the embedding's table ``w`` of shape ``(vocab_size,
    features)``, and its gradient ``dy^T x`` is added to the embedding's.  Shapes:
    ``x`` is ``(batch, ..., features)``, ``y`` is ``(batch, ..., vocab_size)``.
    """
    inner = embedding.children[0][1] if embedding.kind == "shared" else None
    if inner is None or inner.kind != "embedding":
        raise TypeError(f"tied_output needs fl.shared(fl.embedding(...)), got {embedding!r}")
    vocab_size, features = inner.config["vocab_size"], inner.config["features"]

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        if not in_shape or in_shape[-1] != features:
            raise LayerError(f"expected an input shape (..., {features}), got {in_shape}")
        return {}, in_shape[:-1] + (vocab_size,)

    def table(params, x):
        w = params.get("w")
        if w is None:
            raise LayerError("no embedding table: tied_output runs inside a model that uses "
                             "its shared embedding first")
        check_float_input(x)
        if x.ndim < 2 or x.shape[-1] != features:
            raise LayerError(f"expected input of shape (batch, ..., {features}), "
                             f"got shape {tuple(x.shape)}")
        check_param_dtype(x, w)
        return w

    def apply(params, x):
        w = table(params, x)
        return (x.reshape(-1, features) @ w.T).reshape(x.shape[:-1] + (vocab_size,))

    def vjp(params, x, need_dx=True):
        w = table(params, x)
        x2 = x.reshape(-1, features)
        y = (x2 @ w.T).reshape(x.shape[:-1] + (vocab_size,))

        def pullback(dy):
            dy2 = dy.reshape(-1, vocab_size)
            dx = (dy2 @ w).reshape(x.shape) if need_dx else None
            return {"w": dy2.T @ x2}, dx

        return y, pullback

    layer = stateless_layer(name, init, apply, vjp, takes=("need_dx",),
                            fresh=("y", "dx", "dparams"))
    return layer.replace(traits=layer.traits._replace(ties=embedding))
