"""Multi-head self-attention over ``(batch, time, features)``.

Forward and backward are batched matmuls over ``(batch, heads)`` on 4-D arrays
(``np.matmul``), with the q/k/v projections fused into one BLAS matmul in each
direction.  No Python loop over heads, examples or positions.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .. import random
from ..checks import (LayerError, check_float_input, check_param_dtype, check_sequence_in_shape,
                      check_trailing_shape)
from ..core import Layer, stateless_layer
from ..initializers import Initializer, glorot_uniform, zeros

__all__ = ["multi_head_attention"]

Array = np.ndarray


def _softmax_(s: Array) -> Array:
    """In place on our own buffer: a numerically stable softmax over the last axis."""
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def multi_head_attention(num_heads: int, *, head_dim: Optional[int] = None, causal: bool = False,
                         use_bias: bool = True, w_init: Initializer = glorot_uniform,
                         b_init: Initializer = zeros, dtype: Any = np.float32,
                         name: str = "multi_head_attention") -> Layer:
    """Multi-head scaled dot-product self-attention (Vaswani et al., 2017).

    Shapes: ``x`` ``(batch, time, features)`` -> ``y`` ``(batch, time, features)``.
    With ``h = num_heads``, ``d = head_dim`` (default ``features // num_heads``;
    ``features`` must then be divisible by ``num_heads``) and ``D = h * d``::

        q, k, v = x @ w_q + b_q, x @ w_k, x @ w_v + b_v          # split into h heads of d
        p       = softmax(q k^T / sqrt(d) [+ causal mask])          # (batch, h, time, time)
        y       = concat_heads(p v) @ w_o + b_o

    With ``causal=True`` position ``t`` attends only to positions ``<= t``.
    Params: ``w_q``, ``w_k``, ``w_v`` ``(features, D)`` and ``w_o`` ``(D, features)``
    initialised by ``w_init`` (Glorot-uniform); with ``use_bias``, ``b_q``, ``b_v``
    ``(D,)`` and ``b_o`` ``(features,)`` by ``b_init`` (zeros).  There is no key
    bias: it would add ``q_i . b_k`` to every score of row ``i``, which the
    softmax cancels exactly, so its gradient is always zero (a PyTorch ``b_k``
    can be dropped when loading weights, with identical outputs).
    """
    if int(num_heads) < 1:
        raise ValueError(f"multi_head_attention needs num_heads >= 1, got {num_heads}")
    if head_dim is not None and int(head_dim) < 1:
        raise ValueError(f"multi_head_attention needs head_dim >= 1, got {head_dim}")
    heads = int(num_heads)
    dtype = np.dtype(dtype)

    def init(key, in_shape):
        in_shape = check_sequence_in_shape(in_shape)
        features = in_shape[1]
        if head_dim is None and features % heads:
            raise LayerError(f"features ({features}) must be divisible by num_heads ({heads}) "
                             f"when head_dim is not given; got input shape {in_shape}")
        d = features // heads if head_dim is None else int(head_dim)
        width = heads * d
        ks = random.split(key, 7)
        params = {"w_q": w_init(ks[0], (features, width), dtype),
                  "w_k": w_init(ks[1], (features, width), dtype),
                  "w_v": w_init(ks[2], (features, width), dtype),
                  "w_o": w_init(ks[3], (width, features), dtype)}
        if use_bias:
            params.update(b_q=b_init(ks[4], (width,), dtype), b_v=b_init(ks[5], (width,), dtype),
                          b_o=b_init(ks[6], (features,), dtype))
        return params, in_shape

    def check(params, x):
        check_float_input(x)
        check_trailing_shape(x, (None, params["w_q"].shape[0]))
        if x.shape[1] < 1:
            raise LayerError(f"expected at least one time step, got shape {tuple(x.shape)}")
        check_param_dtype(x, params["w_q"])

    def forward(params, x) -> Tuple[Array, Tuple]:
        n, t, f = x.shape
        width = params["w_q"].shape[1]
        d = width // heads
        w_qkv = np.concatenate([params["w_q"], params["w_k"], params["w_v"]], axis=1)
        qkv = x.reshape(n * t, f) @ w_qkv                     # (N*T, 3D)
        if use_bias:
            qkv[:, :width] += params["b_q"]
            qkv[:, 2 * width:] += params["b_v"]
        qkv = qkv.reshape(n, t, 3, heads, d)
        qkv[:, :, 0] *= 1.0 / math.sqrt(d)                    # fold the scale into q
        q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # (N, h, T, d)
        p = q @ k.transpose(0, 1, 3, 2)                       # (N, h, T, T)
        if causal:
            np.copyto(p, -np.inf, where=np.triu(np.ones((t, t), bool), 1))  # j > i
        _softmax_(p)
        o = (p @ v).transpose(0, 2, 1, 3).reshape(n * t, width)   # heads concatenated
        y = o @ params["w_o"]
        if use_bias:
            y += params["b_o"]
        return y.reshape(n, t, f), (w_qkv, qkv, p, o)

    def apply(params, x):
        check(params, x)
        return forward(params, x)[0]

    def vjp(params, x, need_dx=True):
        check(params, x)
        y, (w_qkv, qkv, p, o) = forward(params, x)

        def pullback(dy):
            n, t, f = x.shape
            width = params["w_q"].shape[1]
            d = width // heads
            q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
            dy2 = dy.reshape(n * t, f)
            grads: Dict[str, Array] = {"w_o": o.T @ dy2}
            do = (dy2 @ params["w_o"].T).reshape(n, t, heads, d).transpose(0, 2, 1, 3)
            dqkv = np.empty((n, t, 3, heads, d), x.dtype)
            dqkv[:, :, 2] = (p.transpose(0, 1, 3, 2) @ do).transpose(0, 2, 1, 3)   # dv
            ds = do @ v.transpose(0, 1, 3, 2)                                      # dp
            ds -= (ds * p).sum(axis=-1, keepdims=True)                             # softmax
            ds *= p
            dqkv[:, :, 0] = (ds @ k).transpose(0, 2, 1, 3)                         # dq (scaled)
            dqkv[:, :, 0] *= 1.0 / math.sqrt(d)
            dqkv[:, :, 1] = (ds.transpose(0, 1, 3, 2) @ q).transpose(0, 2, 1, 3)   # dk
            dqkv2 = dqkv.reshape(n * t, 3 * width)
            dw = x.reshape(n * t, f).T @ dqkv2
            for j, nm in enumerate(("w_q", "w_k", "w_v")):
                grads[nm] = np.ascontiguousarray(dw[:, j * width:(j + 1) * width])
            if use_bias:
                grads.update(b_q=dqkv2[:, :width].sum(axis=0),
                             b_v=dqkv2[:, 2 * width:].sum(axis=0), b_o=dy2.sum(axis=0))
            dx = (dqkv2 @ w_qkv.T).reshape(n, t, f) if need_dx else None
            return {key: grads[key] for key in params}, dx

        return y, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",))
