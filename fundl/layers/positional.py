"""Position encodings added to a ``(batch, time, features)`` sequence.

- :func:`positional_embedding`: a learned table ``pos`` of ``(max_len, features)``;
- :func:`sinusoidal_positions`: the fixed sine/cosine encoding of Vaswani et al. (2017).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import (Array, LayerError, check_float_input, check_param_dtype,
                      check_sequence_in_shape, check_trailing_shape, int_arg)
from ..core import Layer, builder, stateless_layer
from ..initializers import Initializer, normal

__all__ = ["positional_embedding", "sinusoidal_positions"]



@builder
def positional_embedding(max_len: int, *, init: Initializer = normal(0.02),
                         dtype: Any = np.float32, name: str = "positional_embedding") -> Layer:
    """A learned position embedding: ``y[n, t] = x[n, t] + pos[t]``.

    Shapes: ``x`` ``(batch, time, features)`` -> ``y`` of the same shape, for any
    ``1 <= time <= max_len`` (the rows ``pos[:time]`` are used; a longer input is a
    :class:`LayerError`).  Params: ``pos`` ``(max_len, features)`` initialised by
    ``init`` (normal with std 0.02, as in BERT/GPT-2).  The same as adding a
    PyTorch ``nn.Embedding(max_len, features)`` looked up at ``arange(time)``:
    ``pos`` is its ``weight``.  The gradient of ``pos`` is ``dy`` summed over the
    batch in the first ``time`` rows and zero in the rest; ``dx = dy``.
    """
    max_len = int_arg("positional_embedding", "max_len", max_len)
    dtype = np.dtype(dtype)

    def init_fn(key, in_shape):
        in_shape = check_sequence_in_shape(in_shape)
        if in_shape[0] > max_len:
            raise LayerError(f"input shape {in_shape} has {in_shape[0]} time steps, more than "
                             f"max_len={max_len}")
        return {"pos": init(key, (max_len, in_shape[1]), dtype)}, in_shape

    def check(params, x):
        check_float_input(x)
        pos = params["pos"]
        check_trailing_shape(x, (None, pos.shape[1]))
        if not 1 <= x.shape[1] <= pos.shape[0]:
            raise LayerError(f"expected 1 to max_len={pos.shape[0]} time steps, got input of "
                             f"shape {tuple(x.shape)}")
        check_param_dtype(x, pos)

    def apply(params, x):
        check(params, x)
        return x + params["pos"][:x.shape[1]]

    def vjp(params, x):
        check(params, x)
        pos = params["pos"]
        steps = x.shape[1]

        def pullback(dy):
            dpos = np.zeros_like(pos)
            dpos[:steps] = np.ascontiguousarray(dy).sum(axis=0)  # one order for any layout
            return {"pos": dpos}, dy

        return x + pos[:steps], pullback

    return stateless_layer(name, init_fn, apply, vjp, fresh=("y", "dparams"))


def sinusoid_table(steps: int, features: int, base: float = 10000.0) -> Array:
    """The float64 ``(steps, features)`` table of :func:`sinusoidal_positions`."""
    pos = np.arange(steps, dtype=np.float64)[:, None]
    pairs = np.arange(0, features, 2, dtype=np.float64)               # 2i
    angles = pos / np.power(base, pairs / features)                   # (steps, ceil(F/2))
    table = np.empty((steps, features))
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, :features // 2])
    return table


@builder
def sinusoidal_positions(*, base: float = 10000.0,
                         name: str = "sinusoidal_positions") -> Layer:
    """The fixed "Attention is all you need" encoding added to the input.

    ``y[n, t, 2i] = x[n, t, 2i] + sin(t / base^(2i / F))`` and
    ``y[n, t, 2i+1] = x[n, t, 2i+1] + cos(t / base^(2i / F))`` with ``F = features``
    (an odd ``F`` ends with a sine column).  Shapes: ``(batch, time, features)`` in
    and out, any ``time``.  No params; the table is computed in float64 and cast
    to the input's dtype.  The pullback is exactly the identity: ``dx = dy``.
    PyTorch has no such layer (its transformer tutorial builds the same table).
    """
    base = float(base)
    if not base > 0:
        raise ValueError(f"sinusoidal_positions needs base > 0, got {base}")

    def init(key, in_shape):
        return {}, check_sequence_in_shape(in_shape)

    def check(x):
        check_float_input(x)
        check_trailing_shape(x, (None, None))

    def forward(x):
        return x + sinusoid_table(x.shape[1], x.shape[2], base).astype(x.dtype)

    def apply(params, x):
        check(x)
        return forward(x)

    def vjp(params, x):
        check(x)
        return forward(x), lambda dy: ({}, dy)

    return stateless_layer(name, init, apply, vjp, fresh=("y", "dparams"))
