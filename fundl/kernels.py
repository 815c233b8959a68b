"""Array kernels shared by layers and losses: relu, tanh, sigmoid, softmax, log-softmax.

Each takes an array and returns a new one, or writes into ``out`` (which may be
the input itself: that is how a layer works in place on an array it owns).
Constants are Python floats, so float32 stays float32.  Every branch is a
``max``/``min``: ``np.where`` and ``np.logaddexp`` are much slower than plain
arithmetic (benchmarks/README.md, "Measurements behind the code").
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union, overload

import numpy as np

from .checks import Array


__all__ = ["relu", "tanh", "sigmoid", "softmax", "log_softmax", "column_sums", "row_sums",
           "blockwise", "BLOCK"]

#: Elements per block of :func:`blockwise`: 256 KiB per float32 temporary, so a chain of
#: elementwise passes stays in the L2 cache.  Measured on the transformer's gelu input
#: ((32, 64, 512) float32): the erfc series 13.5 ms in one go, 5.0 ms in blocks of 2**16
#: (8.4 ms in blocks of 2**12).
BLOCK = 1 << 16


def relu(x: Array, out: Optional[Array] = None) -> Array:
    """``max(x, 0)``, elementwise."""
    return np.maximum(x, 0, out=out)


def tanh(x: Array, out: Optional[Array] = None) -> Array:
    """``tanh(x)``, elementwise."""
    return np.tanh(x, out=out)


def sigmoid(x: Array, out: Optional[Array] = None) -> Array:
    """``1 / (1 + exp(-x))`` as ``exp(min(x, 0)) / (1 + exp(-|x|))``: exp only of
    non-positive numbers, no overflow, no branch.  Exact at both ends."""
    den = np.abs(x)
    np.negative(den, out=den)
    np.exp(den, out=den)
    den += 1.0
    num = np.minimum(x, 0, out=out)  # x is not read after this: ``out`` may be x
    np.exp(num, out=num)
    num /= den
    return num


def softmax(x: Array, axis: int = -1, out: Optional[Array] = None) -> Array:
    """``exp(x) / sum(exp(x))`` along ``axis``, stable for any finite logits (the max
    is subtracted first)."""
    e = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(e, out=e)
    if axis in (-1, e.ndim - 1):
        e /= row_sums(e)[..., None]
    else:
        e /= e.sum(axis=axis, keepdims=True)
    return e


def log_softmax(x: Array, axis: int = -1) -> Array:
    """``x - logsumexp(x)`` along ``axis``, stable for any finite logits."""
    s = x - x.max(axis=axis, keepdims=True)
    s -= np.log(np.exp(s).sum(axis=axis, keepdims=True))
    return s


def column_sums(a: Array) -> Array:
    """The sums of ``a`` over every axis but the last: shape ``(C,)``, as ``ones @ a2`` on
    the 2-D view ``a2`` (a BLAS gemv, faster than ``a2.sum(axis=0)``, and closer to the
    float64 sum in float32)."""
    c = a.shape[-1]
    return np.ones(a.size // c if c else 0, a.dtype) @ a.reshape(-1, c)


def row_sums(a: Array) -> Array:
    """The sums of ``a`` over its last axis: shape ``a.shape[:-1]``, as one BLAS gemv
    ``a2 @ ones`` on the 2-D view ``a2`` when ``a`` is C-contiguous (else ``a.sum(-1)``).

    Short rows (the attention scores') are where numpy's reduction is slowest.  A row's
    sum depends on its own
    values alone, not on the other rows' (for one shape: like any BLAS product, its
    rounding may change with the number of rows, e.g. for fewer than four).
    """
    if not a.flags.c_contiguous or a.ndim == 0 or a.size < 1024:  # below, the sum is faster
        return a.sum(axis=-1)
    c = a.shape[-1]
    return (a.reshape(-1, c) @ np.ones(c, a.dtype)).reshape(a.shape[:-1])


Outputs = Union[Array, Tuple[Optional[Array], ...]]


@overload
def blockwise(fn: Callable[[Array], Array], x: Array) -> Array: ...
@overload
def blockwise(fn: Callable[[Array], Tuple[Optional[Array], ...]], x: Array
              ) -> Tuple[Optional[Array], ...]: ...
def blockwise(fn: Callable[[Array], Outputs], x: Array) -> Union[Optional[Array], Outputs]:
    """``fn(x)`` for an elementwise ``fn`` (returning an array or a tuple of arrays or
    ``None``), computed over cache-sized blocks of ``x``: the same values, bit for bit,
    with each of ``fn``'s many passes over memory running in the cache."""
    if x.size <= 2 * BLOCK:
        return fn(x)
    flat = np.ascontiguousarray(x).reshape(-1)
    outs: List[Optional[Array]] = []
    for lo in range(0, flat.size, BLOCK):
        part = fn(flat[lo:lo + BLOCK])
        parts = part if isinstance(part, tuple) else (part,)
        if not outs:
            outs = [None if a is None else np.empty(flat.size, a.dtype) for a in parts]
        for out, a in zip(outs, parts):
            if out is not None:
                out[lo:lo + BLOCK] = a   # the last block is shorter: the slice stops at the end
    shaped = tuple(None if out is None else out.reshape(x.shape) for out in outs)
    return shaped if isinstance(part, tuple) else shaped[0]
