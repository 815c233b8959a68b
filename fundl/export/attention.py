"""Multi-head attention to ONNX, written out in MatMul, Softmax and Where.

As fundl computes it (:func:`fundl.multi_head_attention`), with ``h`` heads of
``d`` features, ``D = h * d``, scale ``1 / sqrt(d)`` and ``c = x`` for self-attention::

    q, k, v = (x @ w_q + b_q) * scale, c @ w_k, c @ w_v + b_v     -> (batch, h, time, d)
    p       = softmax(q k^T) over the keys, masked
    y       = concat_heads(p v) @ w_o + b_o

Self-attention projects q, k and v with one MatMul (the scale folded into ``w_q``
and ``b_q``, as fundl does), cross-attention k and v with one.  Masks: the causal
one is a constant ``(time, k_time)`` lower triangle; a boolean mask input (True =
attend; shape ``(batch, k_time)``, ``(batch, time, k_time)`` or ``(batch, h, time,
k_time)``, any axis 1) is unsqueezed to 4-D; both combine with ``And``.  Masked
scores are set to the float's lowest value before the Softmax, whose weight is
then exactly 0 as with fundl's ``-inf``; a query with every key masked gets all-zero
weights (fundl's rule, where ``-inf`` would give NaN) by a ``Where`` after the Softmax.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .site import Site, converts


def _heads(s: Site, v: Any, steps: int, heads: int, d: int, perm: Any) -> Any:
    """``(batch, steps, h*d)`` -> ``(batch, steps, h, d)`` transposed by ``perm``."""
    return s.g.transpose(s.g.reshape(v, (steps, heads, d)), perm)


@converts("multi_head_attention")
def multi_head_attention(s: Site, inp: Any) -> Any:
    """Multi-head attention in eval mode (attention dropout off); see the module docstring."""
    g, c = s.g, s.config
    cross, masked = bool(c["cross"]), bool(c["masked"])
    x = inp[0] if cross or masked else inp
    ctx = inp[1] if cross else None
    mask = inp[-1] if masked else None
    steps = (s.in_shape[0] if cross or masked else s.in_shape)[0]
    k_steps = s.in_shape[1][0] if cross else steps
    heads = int(c["num_heads"])
    width = s.params["w_q"].shape[1]
    d = width // heads
    scale = 1.0 / math.sqrt(d)
    p, use_bias = s.params, bool(c["use_bias"])

    if ctx is None:     # one projection for q, k, v; the scale folded into w_q and b_q
        w_in = np.concatenate([p["w_q"] * scale, p["w_k"], p["w_v"]], axis=1)
        qkv = g.op("MatMul", x, g.const(w_in, "w_qkv"))
        if use_bias:
            b_in = np.concatenate([p["b_q"] * scale, np.zeros_like(p["b_v"]), p["b_v"]])
            qkv = g.op("Add", qkv, g.const(b_in, "b_qkv"))
        qkv = g.reshape(qkv, (steps, 3, heads, d))
        q, k, v = (g.op("Gather", qkv, g.const(j, "index", np.int64), axis=2) for j in range(3))
        q = g.transpose(q, [0, 2, 1, 3])                     # (N, h, T, d)
    else:               # q from x, one projection for k and v from the context
        q = g.op("MatMul", x, s.param("w_q"))
        if use_bias:
            q = g.op("Add", q, s.param("b_q"))
        q = _heads(s, g.op("Mul", q, g.floats(scale)), steps, heads, d, [0, 2, 1, 3])
        kv = g.op("MatMul", ctx, g.const(np.concatenate([p["w_k"], p["w_v"]], axis=1), "w_kv"))
        if use_bias:
            kv = g.op("Add", kv, g.const(np.concatenate([np.zeros_like(p["b_v"]), p["b_v"]]),
                                         "b_kv"))
        kv = g.reshape(kv, (k_steps, 2, heads, d))
        k, v = (g.op("Gather", kv, g.const(j, "index", np.int64), axis=2) for j in range(2))
    k_t = g.transpose(k, [0, 2, 3, 1])                       # (N, h, d, S)
    v = g.transpose(v, [0, 2, 1, 3])                         # (N, h, S, d)

    scores = g.op("MatMul", q, k_t)                          # (N, h, T, S)
    allowed = _allowed(s, mask, steps, k_steps)
    if allowed is None:
        weights = g.op("Softmax", scores, axis=-1)
    else:
        lowest = g.floats(np.finfo(g.float_dtype).min, "lowest")
        weights = g.op("Softmax", g.op("Where", allowed, scores, lowest), axis=-1)
        if mask is not None:    # a query with no key to attend to: all-zero weights
            weights = g.op("Where", allowed, weights, g.floats(0.0, "zero"))
    o = g.transpose(g.op("MatMul", weights, v), [0, 2, 1, 3])   # (N, T, h, d)
    y = g.op("MatMul", g.reshape(o, (steps, width)), s.param("w_o"))
    if use_bias:
        y = g.op("Add", y, s.param("b_o"))
    return y


def _allowed(s: Site, mask: Optional[Any], steps: int, k_steps: int) -> Optional[Any]:
    """The boolean "may attend" tensor, broadcastable to ``(batch, h, T, S)``: the causal
    triangle and/or the mask input unsqueezed to 4-D; None when nothing is masked."""
    g = s.g
    allowed = None
    if s.config["causal"]:
        allowed = g.const(np.tril(np.ones((steps, k_steps), bool)), "causal")
    if mask is not None:
        rank = len(s.in_shape[-1])                 # per-example: (S,), (T, S) or (h, T, S)
        m = g.need(mask, np.bool_)
        m4 = g.unsqueeze(m, [1, 2] if rank == 1 else [1]) if rank < 3 else m
        allowed = m4 if allowed is None else g.op("And", allowed, m4)
    return allowed
