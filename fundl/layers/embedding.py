"""Embedding: integer ids -> rows of a learned table ``w``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import LayerError, as_shape, int_arg
from ..core import Layer, stateless_layer
from ..initializers import Initializer, normal

__all__ = ["embedding"]

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

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",))
