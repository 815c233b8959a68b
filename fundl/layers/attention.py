"""Multi-head attention over ``(batch, time, features)``: self- or cross-attention,
with optional causal and boolean masks and attention dropout.

Forward and backward are batched matmuls over ``(batch, heads)`` on 4-D arrays
(``np.matmul``), with the q/k/v projections fused into one BLAS matmul in each
direction (self-attention; cross-attention fuses k/v).  No Python loop over
heads, examples or positions.
"""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from .. import kernels, random
from ..checks import (Array, LayerError, check_input_tuple, as_shape, check_float_input, check_param_dtype,
                      check_sequence_in_shape, check_trailing_shape, is_shape)
from ..core import Layer, builder, stateless_layer
from ..initializers import Initializer, glorot_uniform, zeros

__all__ = ["multi_head_attention", "KVCache", "kv_cache", "attend_cached"]



def _masked_softmax_(s: Array, axis: int) -> Array:
    """An in-place softmax over ``axis`` (:func:`fundl.kernels.softmax`) where ``-inf``
    entries are masked out; a row that is all ``-inf`` (fully masked) becomes all zeros
    instead of NaN."""
    m = s.max(axis=axis, keepdims=True)
    m[m == -np.inf] = 0.0
    s -= m
    np.exp(s, out=s)            # exp(-inf) = 0 exactly
    total = s.sum(axis=axis, keepdims=True)
    total[total == 0] = 1.0     # a fully masked row stays 0 / 1 = 0
    s /= total
    return s


_CAUSAL_BIAS: Dict[Tuple[int, int, str], Array] = {}


def _causal_bias_key_major(s: int, t: int, dtype: Any) -> Array:
    """A read-only ``(s, t)`` matrix, ``-inf`` where key ``j`` > query ``i``, else 0: added
    to the key-major scores (faster than ``np.copyto(where=triu)``).  Cached per shape and
    dtype (a constant)."""
    k = (s, t, np.dtype(dtype).str)
    bias = _CAUSAL_BIAS.get(k)
    if bias is None:
        bias = np.where(np.tril(np.ones((s, t), bool), -1), -np.inf, 0.0).astype(dtype)
        bias.setflags(write=False)
        if len(_CAUSAL_BIAS) < 64:
            _CAUSAL_BIAS[k] = bias
    return bias


def _mask4(mask: Any, n: int, heads: int, t: int, s: int) -> Array:
    """The boolean ``mask`` as a 4-D view broadcastable to ``(n, heads, t, s)``."""
    forms = ("(batch, k_time), (batch, q_time, k_time) or (batch, heads, q_time, k_time), "
             f"here with q_time={t}, k_time={s}, heads={heads} (any axis may be 1)")
    if not isinstance(mask, np.ndarray):
        raise LayerError(f"expected the mask to be a boolean numpy array, got "
                         f"{type(mask).__name__}")
    if mask.dtype != np.bool_:
        raise LayerError(f"expected a boolean mask (True = attend), got dtype {mask.dtype}")
    if not 2 <= mask.ndim <= 4:
        raise LayerError(f"expected a mask of shape {forms}; got shape {tuple(mask.shape)}")
    m = mask.reshape(mask.shape[:1] + (1,) * (4 - mask.ndim) + mask.shape[1:])
    if any(a not in (1, b) for a, b in zip(m.shape, (n, heads, t, s))):
        raise LayerError(f"expected a mask of shape {forms}; got shape {tuple(mask.shape)}")
    return m


@builder
def multi_head_attention(num_heads: int, *, head_dim: Optional[int] = None, causal: bool = False,
                         cross: bool = False, masked: bool = False, dropout: float = 0.0,
                         use_bias: bool = True, w_init: Initializer = glorot_uniform,
                         b_init: Initializer = zeros, dtype: Any = np.float32,
                         name: str = "multi_head_attention") -> Layer:
    """Multi-head scaled dot-product attention (Vaswani et al., 2017).

    Inputs, by the builder flags (all forms compose with ``fl.parallel``/``fl.fan_out``):

    - default: ``x`` ``(batch, time, features)`` (self-attention);
    - ``cross=True``: ``(x, context)``, queries from ``x`` and keys/values from
      ``context`` ``(batch, k_time, c_features)`` (its own length and feature size);
    - ``masked=True``: ``(x, mask)``, or ``(x, context, mask)`` with ``cross=True``.

    The output ``y`` is ``(batch, time, features)`` (the shape of ``x``).
    With ``h = num_heads``, ``d = head_dim`` (default ``features // num_heads``;
    ``features`` must then be divisible by ``num_heads``), ``D = h * d`` and
    ``c = context`` (``c = x`` for self-attention)::

        q, k, v = x @ w_q + b_q, c @ w_k, c @ w_v + b_v         # split into h heads of d
        p       = softmax(q k^T / sqrt(d), masked)              # (batch, h, time, k_time)
        y       = concat_heads(dropout(p) v) @ w_o + b_o

    Masks.  ``causal=True``: query ``i`` attends only to keys ``j <= i``.  ``mask``
    is a boolean array, **True = attend**, with the batch on axis 0 (size 1 to
    share it across the batch) in one of three forms: ``(batch, k_time)`` (key
    padding), ``(batch, q_time, k_time)`` or ``(batch, heads, q_time, k_time)``
    (any axis may be 1 to broadcast; a mask shared by all examples is
    ``m[None]``).  Both masks combine (AND).  PyTorch's masks are the opposite
    (True = masked out): ``mask = ~key_padding_mask`` (``(N, S)``), or
    ``~attn_mask[None]`` for a boolean ``(L, S)`` ``attn_mask`` (an
    ``(N * h, L, S)`` one is ``~attn_mask.reshape(N, h, L, S)``).  A fully masked
    query row has all-zero attention weights: its attention output is zero (its
    ``y`` row is ``b_o``), never NaN, and no gradient flows through it (as
    PyTorch's autograd path; its inference fast path gives NaN there).  The mask
    gets no gradient (``None`` in its slot of ``dx``).

    Attention dropout (``dropout=rate``, the drop probability, as PyTorch's
    ``dropout``): in training (``vjp``, ``apply(train=True)``) each attention
    weight is dropped with probability ``rate`` and the rest scaled by
    ``1 / (1 - rate)``; the mask depends only on the key and the shapes (same
    key, same mask).  Training then needs a key; ``apply(train=False)`` does not.

    Params: ``w_q`` ``(features, D)``, ``w_k``, ``w_v`` ``(c_features, D)`` and
    ``w_o`` ``(D, features)`` initialised by ``w_init`` (Glorot-uniform); with
    ``use_bias``, ``b_q``, ``b_v`` ``(D,)`` and ``b_o`` ``(features,)`` by ``b_init``
    (zeros).  There is no key bias: it would add ``q_i . b_k`` to every score of
    row ``i``, which the softmax cancels exactly, so its gradient is always zero.

    PyTorch ``nn.MultiheadAttention(E, h, batch_first=True)`` (``D = E = features``):
    ``w_q, w_k, w_v = in_proj_weight.chunk(3)`` transposed (or ``q_proj_weight.T``,
    ``k_proj_weight.T``, ``v_proj_weight.T`` when ``kdim``/``vdim`` differ),
    ``b_q = in_proj_bias[:E]``, ``b_v = in_proj_bias[2E:]`` (its ``b_k`` part can be
    dropped, identical outputs), ``w_o = out_proj.weight.T``, ``b_o = out_proj.bias``;
    ``y`` is its first output, called as ``mha(x, c, c, key_padding_mask=~mask)``.
    """
    if int(num_heads) < 1:
        raise ValueError(f"multi_head_attention needs num_heads >= 1, got {num_heads}")
    if head_dim is not None and int(head_dim) < 1:
        raise ValueError(f"multi_head_attention needs head_dim >= 1, got {head_dim}")
    rate = float(dropout)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"multi_head_attention dropout is the probability of dropping and must "
                         f"be in [0, 1), got {dropout}")
    heads = int(num_heads)
    dtype = np.dtype(dtype)
    n_inputs = 1 + int(cross) + int(masked)
    forms = "(x, context, mask)" if cross and masked else (
        "(x, context)" if cross else "(x, mask)")

    # --- shapes and input checks ---------------------------------------------------

    def split_shapes(in_shape):
        if n_inputs == 1:
            return check_sequence_in_shape(in_shape), None, None
        if is_shape(in_shape) or not isinstance(in_shape, (tuple, list)) \
                or len(in_shape) != n_inputs:
            raise LayerError(f"expected a tuple of {n_inputs} input shapes {forms}, "
                             f"got {in_shape!r}")
        x_shape = check_sequence_in_shape(in_shape[0])
        c_shape = check_sequence_in_shape(in_shape[1]) if cross else x_shape
        m_shape = as_shape(in_shape[-1]) if masked else None
        return x_shape, c_shape, m_shape

    def init(key, in_shape):
        x_shape, c_shape, m_shape = split_shapes(in_shape)
        features = x_shape[1]
        c_features = c_shape[1] if cross else features
        if head_dim is None and features % heads:
            raise LayerError(f"features ({features}) must be divisible by num_heads ({heads}) "
                             f"when head_dim is not given; got input shape {x_shape}")
        if masked:
            if not 1 <= len(m_shape) <= 3:
                raise LayerError(f"expected a per-example mask shape (k_time,), "
                                 f"(q_time, k_time) or (heads, q_time, k_time), got {m_shape}")
            _mask4(np.ones((1,) + m_shape, bool), 1, heads, x_shape[0], c_shape[0])
        d = features // heads if head_dim is None else int(head_dim)
        width = heads * d
        ks = random.split(key, 7)
        params = {"w_q": w_init(ks[0], (features, width), dtype),
                  "w_k": w_init(ks[1], (c_features, width), dtype),
                  "w_v": w_init(ks[2], (c_features, width), dtype),
                  "w_o": w_init(ks[3], (width, features), dtype)}
        if use_bias:
            params.update(b_q=b_init(ks[4], (width,), dtype), b_v=b_init(ks[5], (width,), dtype),
                          b_o=b_init(ks[6], (features,), dtype))
        return params, x_shape

    def check_one(x, features, what):
        check_float_input(x, what)
        check_trailing_shape(x, (None, features), what)
        if x.shape[1] < 1:
            raise LayerError(f"expected at least one time step in the {what}, got shape "
                             f"{tuple(x.shape)}")

    def split_inputs(params, inp):
        """``(x, context or None, 4-D mask or None)``, checked."""
        if n_inputs == 1:
            x, ctx, mask = inp, None, None
        else:
            inp = check_input_tuple(inp, n_inputs, forms)
            x = inp[0]
            ctx = inp[1] if cross else None
            mask = inp[-1] if masked else None
        check_one(x, params["w_q"].shape[0], "input")
        check_param_dtype(x, params["w_q"])
        if cross:
            check_one(ctx, params["w_k"].shape[0], "context")
            if ctx.shape[0] != x.shape[0] or ctx.dtype != x.dtype:
                raise LayerError(f"expected a context with the input's batch size and dtype, "
                                 f"got input {tuple(x.shape)} {x.dtype} and context "
                                 f"{tuple(ctx.shape)} {ctx.dtype}")
        if masked:
            s = (ctx if cross else x).shape[1]
            mask = _mask4(mask, x.shape[0], heads, x.shape[1], s)
        return x, ctx, mask

    def dropout_mask(shape, dt, key):
        if key is None:
            raise LayerError("training mode (vjp or apply(train=True)) with attention dropout "
                             "needs a random key, e.g. key=fundl.random.key(0); use "
                             "apply(train=False) for inference")
        scale = 1.0 / (1.0 - rate)
        if not np.isfinite(np.dtype(dt).type(scale)):
            raise LayerError(f"attention dropout {rate} scales the kept weights by 1 / (1 - rate) "
                             f"= {scale:.4g}, which {np.dtype(dt)} cannot hold; use a lower rate "
                             f"or float32")
        if np.dtype(dt).itemsize >= 4:
            u = random.uniform(key, shape, dt)
            keep = np.greater_equal(u, rate, out=u)   # 1.0 where kept, 0.0 where dropped
        else:  # float16's uniform steps (2**-11) would bias the keep probability
            keep = np.greater_equal(random.uniform(key, shape, np.float32), rate).astype(dt)
        keep *= scale
        return keep

    # --- forward and backward --------------------------------------------------------

    def forward(params, x, ctx, mask, drop_key, train):
        """``y`` and the residuals ``(w_in, q, k, v, pT, drop, o)`` (``pT`` and ``drop``
        key-major, ``(N, h, S, T)``)."""
        n, t, f = x.shape
        width = params["w_q"].shape[1]
        d = width // heads
        scale = 1.0 / math.sqrt(d)
        if ctx is None:   # self-attention: one fused projection
            # the scale folded into w_q and b_q, and one bias add over all of qkv: two
            # strided bias adds and a scaling pass fewer (0.43 -> 0.2 ms on (32, 64, 384))
            w_in = np.concatenate([params["w_q"] * scale, params["w_k"], params["w_v"]], axis=1)
            qkv = x.reshape(n * t, f) @ w_in                      # (N*T, 3D)
            if use_bias:
                qkv += np.concatenate([params["b_q"] * scale, np.zeros_like(params["b_v"]),
                                       params["b_v"]])
            qkv = qkv.reshape(n, t, 3, heads, d)
            q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # (N, h, T, d)
        else:             # cross-attention: q from x, fused k/v from the context
            s, fc = ctx.shape[1:]
            qp = x.reshape(n * t, f) @ params["w_q"]
            if use_bias:
                qp += params["b_q"]
            qp *= scale
            w_in = np.concatenate([params["w_k"], params["w_v"]], axis=1)
            kv = ctx.reshape(n * s, fc) @ w_in                    # (N*S, 2D)
            if use_bias:
                kv[:, width:] += params["b_v"]
            kv = kv.reshape(n, s, 2, heads, d)
            q = qp.reshape(n, t, heads, d).transpose(0, 2, 1, 3)
            k, v = (kv[:, :, j].transpose(0, 2, 1, 3) for j in range(2))
        # The scores key-major, pT[., ., j, i] = q_i . k_j (N, h, S, T): the softmax over
        # the keys then reduces over axis -2, which numpy vectorises along the contiguous
        # queries (the row max of (32, 4, 64, 64) float32 0.21 against 0.84 ms over axis
        # -1), and pT^T @ v is faster than p @ v too: scores + softmax + p v 2.33 -> 1.70 ms.
        # q^T copied contiguous first: k @ q^T with q^T a transposed view ran at half the
        # speed (0.53 ms on (32, 4, 64, 32), against 0.24 + 0.08 for the copy)
        pT = k @ np.ascontiguousarray(q.transpose(0, 1, 3, 2))   # (N, h, S, T)
        if causal:
            pT += _causal_bias_key_major(pT.shape[2], pT.shape[3], pT.dtype)  # -inf, j > i
        if mask is not None:
            np.copyto(pT, -np.inf, where=~mask.transpose(0, 1, 3, 2))
            _masked_softmax_(pT, axis=-2)
        else:
            kernels.softmax(pT, axis=-2, out=pT)
        # the dropout mask drawn query-major (N, h, T, S), as the attention weights read
        drop = (dropout_mask((n, heads, t, pT.shape[2]), pT.dtype, drop_key).transpose(0, 1, 3, 2)
                if train and rate > 0.0 else None)
        pdT = pT if drop is None else pT * drop
        o = np.empty((n, t, heads, d), x.dtype)                   # heads concatenated
        np.matmul(pdT.transpose(0, 1, 3, 2), v, out=o.transpose(0, 2, 1, 3))
        o = o.reshape(n * t, width)
        y = o @ params["w_o"]
        if use_bias:
            y += params["b_o"]
        return y.reshape(n, t, f), (w_in, q, k, v, pT, drop, o)

    def backward(params: Dict[str, Array], x: Array, ctx: Optional[Array], res: Tuple[Any, ...],
                 dy: Array, need_dx: bool
                 ) -> Tuple[Dict[str, Array], Optional[Array], Optional[Array]]:
        w_in, q, k, v, pT, drop, o = res
        n, t, f = x.shape
        width = params["w_q"].shape[1]
        d = width // heads
        scale = 1.0 / math.sqrt(d)
        dy2 = dy.reshape(n * t, f)
        grads: Dict[str, Array] = {"w_o": o.T @ dy2}
        if use_bias:
            grads["b_o"] = dy2.sum(axis=0)
        do = (dy2 @ params["w_o"].T).reshape(n, t, heads, d).transpose(0, 2, 1, 3)
        pdT = pT if drop is None else pT * drop
        if ctx is None:
            # d(q), d(k), d(v) are written by their matmuls straight into the fused layout
            # (N, T, 3, h, d) of the input projection: no transposing copies (0.25 ms less
            # per call on the benchmark transformer)
            dqkv = np.empty((n, t, 3, heads, d), x.dtype)
            dq, dk, dv = (dqkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
        else:
            dv = np.empty((n, heads) + v.shape[2:], x.dtype)
        np.matmul(pdT, do, out=dv)                                # (N, h, S, d)
        dsT = v @ np.ascontiguousarray(do.transpose(0, 1, 3, 2))  # d(pd), key-major (as pT)
        if drop is not None:
            dsT *= drop                                           # d(p)
        # softmax; the dot over the keys by einsum (0.15 ms; (ds * p).sum was 0.38 ms)
        dsT -= np.einsum("...ji,...ji->...i", dsT, pT)[..., None, :]
        dsT *= pT
        ds = dsT.transpose(0, 1, 3, 2)                            # (N, h, T, S), a view
        if ctx is None:
            # q = x (w_q * scale) + b_q * scale: dq is d(scaled q), w_in holds w_q * scale
            np.matmul(ds, k, out=dq)
            np.matmul(dsT, q, out=dk)
            dqkv2 = dqkv.reshape(n * t, 3 * width)
            dw = x.reshape(n * t, f).T @ dqkv2
            for j, nm in enumerate(("w_q", "w_k", "w_v")):
                grads[nm] = np.ascontiguousarray(dw[:, j * width:(j + 1) * width])
            grads["w_q"] *= scale
            if use_bias:
                db = kernels.column_sums(dqkv2)
                grads.update(b_q=db[:width] * scale, b_v=db[2 * width:])
            dx = (dqkv2 @ w_in.T).reshape(n, t, f) if need_dx else None
            return {key: grads[key] for key in params}, dx, None
        dq = ds @ k                                               # d(scaled q)
        dq *= scale
        dk = dsT @ q
        s, fc = ctx.shape[1:]
        dq2 = dq.transpose(0, 2, 1, 3).reshape(n * t, width)
        dkv = np.empty((n, s, 2, heads, d), x.dtype)
        dkv[:, :, 0] = dk.transpose(0, 2, 1, 3)
        dkv[:, :, 1] = dv.transpose(0, 2, 1, 3)
        dkv2 = dkv.reshape(n * s, 2 * width)
        grads["w_q"] = x.reshape(n * t, f).T @ dq2
        dw = ctx.reshape(n * s, fc).T @ dkv2
        grads["w_k"] = np.ascontiguousarray(dw[:, :width])
        grads["w_v"] = np.ascontiguousarray(dw[:, width:])
        if use_bias:
            grads.update(b_q=dq2.sum(axis=0), b_v=dkv2[:, width:].sum(axis=0))
        dx = (dq2 @ params["w_q"].T).reshape(n, t, f) if need_dx else None
        dctx = (dkv2 @ w_in.T).reshape(n, s, fc) if need_dx else None
        return {key: grads[key] for key in params}, dx, dctx

    def input_grads(dx, dctx):
        """``dx`` in the structure of the input (the mask's slot is None)."""
        if n_inputs == 1 or dx is None:
            return dx
        return (dx,) + ((dctx,) if cross else ()) + ((None,) if masked else ())

    def run_apply(params, inp, key, train):
        x, ctx, mask = split_inputs(params, inp)
        return forward(params, x, ctx, mask, key, train)[0]

    def run_vjp(params, inp, key, train, need_dx=True):
        x, ctx, mask = split_inputs(params, inp)
        y, res = forward(params, x, ctx, mask, key, train)

        def pullback(dy):
            dparams, dx, dctx = backward(params, x, ctx, res, dy, need_dx)
            return dparams, input_grads(dx, dctx)

        return y, pullback

    if rate == 0.0:
        return stateless_layer(
            name, init, lambda params, x: run_apply(params, x, None, False),
            lambda params, x, need_dx=True: run_vjp(params, x, None, False, need_dx),
            takes=("need_dx",), fresh=("y", "dx", "dparams"))

    # Attention dropout uses the key (in training).
    return stateless_layer(
        name, init, lambda params, x, *, key, train: run_apply(params, x, key, train),
        lambda params, x, *, key, train, need_dx=True: run_vjp(params, x, key, train, need_dx),
        uses_key=True, takes=("need_dx",), fresh=("y", "dx", "dparams"))


# --- incremental decoding: a key/value cache ----------------------------------------------------

class KVCache(NamedTuple):
    """The keys and values of the positions a causal self-attention layer has seen:
    ``k`` and ``v``, each ``(batch, heads, time_so_far, head_dim)`` (the keys unscaled, the
    values with their bias), in the layer's params' dtype."""

    k: Array
    v: Array


def _decoding_layer(layer: Layer) -> Tuple[int, bool]:
    """``(heads, use_bias)`` of a causal self-attention layer; a TypeError otherwise."""
    if not isinstance(layer, Layer) or layer.kind != "multi_head_attention":
        got = layer.kind if isinstance(layer, Layer) else type(layer).__name__
        raise TypeError(f"incremental decoding takes a multi_head_attention layer, got a {got}")
    config = layer.config
    if not config["causal"] or config["cross"] or config["masked"]:
        raise ValueError("incremental decoding needs causal self-attention "
                         "(multi_head_attention(..., causal=True), without cross= or masked=): "
                         "a new position must not change the outputs at earlier ones; got "
                         f"causal={config['causal']}, cross={config['cross']}, "
                         f"masked={config['masked']}")
    return int(config["num_heads"]), bool(config["use_bias"])


def kv_cache(layer: Layer, params: Dict[str, Array], batch: int) -> KVCache:
    """The empty cache of the causal self-attention ``layer`` for ``batch`` sequences:
    ``k`` and ``v`` of shape ``(batch, heads, 0, head_dim)`` in the params' dtype."""
    heads, _ = _decoding_layer(layer)
    n = int(batch)
    d = params["w_q"].shape[1] // heads
    empty = np.zeros((n, heads, 0, d), params["w_q"].dtype)
    return KVCache(empty, empty)


def attend_cached(layer: Layer, params: Dict[str, Array], cache: KVCache, x: Array
                  ) -> Tuple[Array, KVCache]:
    """``(y, cache)``: the causal self-attention ``layer``'s output at new positions, and
    the cache grown by them.

    ``x`` ``(batch, new, features)`` is the input at positions ``t .. t + new - 1``
    after the ``t`` positions ``cache`` holds (:func:`kv_cache` for ``t = 0``); ``y``
    ``(batch, new, features)`` equals ``layer.apply`` on the whole sequence at those
    positions (to float rounding: the sums run in another order), in eval mode (no
    attention dropout).  One call on a prompt fills the cache; then one call per new
    token costs time proportional to ``t`` instead of recomputing all ``t`` positions.
    The cache is never written: the new one holds new arrays.
    """
    heads, use_bias = _decoding_layer(layer)
    check_float_input(x)
    w_q = params["w_q"]
    check_trailing_shape(x, (None, w_q.shape[0]))
    check_param_dtype(x, w_q)
    n, t_new, f = x.shape
    width = w_q.shape[1]
    d = width // heads
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache (attention.kv_cache), got {type(cache).__name__}")
    for name, a in zip(("k", "v"), cache):
        if not isinstance(a, np.ndarray) or a.ndim != 4 or a.shape[:2] != (n, heads) \
                or a.shape[3] != d or a.dtype != x.dtype or a.shape[2] != cache.k.shape[2]:
            got = f"shape {tuple(a.shape)} {a.dtype}" if isinstance(a, np.ndarray) else \
                type(a).__name__
            raise LayerError(f"expected the cache's {name} of shape ({n}, {heads}, t, {d}) and "
                             f"dtype {x.dtype} (batch {n}, {heads} heads), got {got}")
    t0 = cache.k.shape[2]
    scale = 1.0 / math.sqrt(d)
    w_in = np.concatenate([w_q * scale, params["w_k"], params["w_v"]], axis=1)
    qkv = x.reshape(n * t_new, f) @ w_in
    if use_bias:
        qkv += np.concatenate([params["b_q"] * scale, np.zeros_like(params["b_v"]),
                               params["b_v"]])
    qkv = qkv.reshape(n, t_new, 3, heads, d)
    q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))   # (N, h, new, d)
    keys = np.concatenate([cache.k, k], axis=2)                        # (N, h, t0 + new, d)
    values = np.concatenate([cache.v, v], axis=2)
    scores = q @ keys.transpose(0, 1, 3, 2)                            # (N, h, new, t0 + new)
    if t_new > 1:   # query i (position t0 + i) sees keys j <= t0 + i
        later = np.arange(t0 + t_new)[None, :] > (t0 + np.arange(t_new))[:, None]
        scores[..., later] = -np.inf
    kernels.softmax(scores, axis=-1, out=scores)
    o = (scores @ values).transpose(0, 2, 1, 3).reshape(n * t_new, width)
    y = o @ params["w_o"]
    if use_bias:
        y += params["b_o"]
    return y.reshape(n, t_new, f), KVCache(keys, values)
