"""Dense (fully connected) layer: ``y = x @ w + b`` over the last axis."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels, random
from ..checks import (LayerError, as_shape, check_float_input, check_param_dtype, int_arg)
from ..core import Layer, builder, stateless_layer
from ..initializers import Initializer, glorot_uniform, zeros

__all__ = ["dense"]


@builder
def dense(features: int, *, use_bias: bool = True,
          w_init: Initializer = glorot_uniform, b_init: Initializer = zeros,
          dtype: Any = np.float32, name: str = "dense") -> Layer:
    """A fully connected layer with ``features`` outputs.

    Shapes: ``x`` is ``(batch, ..., in)``, ``y`` is ``(batch, ..., features)``.
    Params: ``w`` of shape ``(in, features)`` initialised by ``w_init``
    (default Glorot-uniform, as in Keras), and ``b`` of shape ``(features,)``
    initialised by ``b_init`` (default zeros), both of ``dtype`` (float32).
    """
    features = int_arg("dense", "features", features)
    dtype = np.dtype(dtype)

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        if len(in_shape) == 0 or in_shape[-1] < 1:
            raise LayerError(f"expected an input shape (..., in) with in >= 1, got {in_shape}")
        k_w, k_b = random.split(key)
        params = {"w": w_init(k_w, (in_shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_init(k_b, (features,), dtype)
        return params, in_shape[:-1] + (features,)

    def check(params, x):
        check_float_input(x)
        w = params["w"]
        if x.ndim < 2 or x.shape[-1] != w.shape[0]:
            raise LayerError(f"expected input of shape (batch, ..., {w.shape[0]}), "
                             f"got shape {tuple(x.shape)}")
        check_param_dtype(x, w)

    def forward(params, x):
        w = params["w"]
        x2 = x.reshape(-1, w.shape[0])
        y = x2 @ w
        if use_bias:
            y += params["b"]  # y is our own fresh array
        return y.reshape(x.shape[:-1] + (features,))

    def apply(params, x):
        check(params, x)
        return forward(params, x)

    def vjp(params, x, need_dx=True):
        check(params, x)
        y = forward(params, x)
        w = params["w"]

        def pullback(dy):
            x2 = x.reshape(-1, w.shape[0])
            dy2 = dy.reshape(-1, features)
            grads = {"w": x2.T @ dy2}
            if use_bias:
                grads["b"] = kernels.column_sums(dy2)
            dx = (dy2 @ w.T).reshape(x.shape) if need_dx else None
            return grads, dx

        return y, pullback

    # y, dx and the gradients are new arrays nobody keeps: they may be donated.
    return stateless_layer(name, init, apply, vjp, takes=("need_dx",),
                           fresh=("y", "dx", "dparams"))
