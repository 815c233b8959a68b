"""Dropout: zero each entry with probability ``rate`` while training (inverted scaling)."""

from __future__ import annotations

import numpy as np

from .. import random
from ..checks import LayerError, as_shape, check_float_input
from ..core import Layer, builder, stateless_layer

__all__ = ["dropout"]


@builder
def dropout(rate: float, *, name: str = "dropout") -> Layer:
    """Drop each entry with probability ``rate`` (0 <= rate < 1) while training.

    Training (``vjp`` and ``apply(train=True)``) needs a key: entries are kept where
    ``uniform(key, x.shape) >= rate`` and scaled by ``1 / (1 - rate)``, so the
    expected output equals the input.  The mask depends only on the key and the
    input shape (same key, same mask).  The pullback applies the same mask and scale.
    In eval mode (``apply(train=False)``, ``vjp(train=False)``) it is the identity
    and needs no key; ``rate == 0`` is the identity always.  Any shape; no params,
    no state.
    """
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate is the probability of dropping and must be in [0, 1), "
                         f"got {rate}")

    def init(key, in_shape):
        return {}, as_shape(in_shape)

    def scaled_mask(x, key):
        """``keep / (1 - rate)`` as an array of x's dtype."""
        check_float_input(x)
        if key is None:
            raise LayerError("training mode (vjp or apply(train=True)) needs a random key, "
                             "e.g. key=fundl.random.key(0); use apply(train=False) for inference")
        scale = 1.0 / (1.0 - rate)
        if not np.isfinite(x.dtype.type(scale)):
            raise LayerError(f"rate {rate} scales the kept entries by 1 / (1 - rate) = {scale:.4g}, "
                             f"which {x.dtype} cannot hold; use a lower rate or float32")
        if x.itemsize >= 4:
            u = random.uniform(key, x.shape, x.dtype)
            mask = np.greater_equal(u, rate, out=u)   # 1.0 where kept, 0.0 where dropped
        else:  # float16's uniform steps (2**-11) would bias the keep probability
            mask = np.greater_equal(random.uniform(key, x.shape, np.float32), rate).astype(x.dtype)
        mask *= scale
        return mask

    def apply(params, x, *, key, train):
        if not train or rate == 0.0:
            check_float_input(x)
            return x
        return x * scaled_mask(x, key)

    def vjp(params, x, *, key, train):
        if not train or rate == 0.0:
            check_float_input(x)
            return x, lambda dy: ({}, dy)
        mask = scaled_mask(x, key)
        return x * mask, lambda dy: ({}, dy * mask)

    return stateless_layer(name, init, apply, vjp, uses_key=True, fresh=("dparams",))
