"""Tests for fundl.layers.attention: multi_head_attention."""

import math

import numpy as np
import pytest

from fundl import random, tree
from fundl.combinators import serial
from fundl import LayerError
from fundl.layers.attention import multi_head_attention
from fundl.layers.dense import dense
from fundl.testing import check_layer
from readme_blocks import readme_block


def ref_attention(p, x, heads, causal):
    """Plain float64 reference: explicit loops over examples, heads and positions."""
    n_b, steps, feats = x.shape
    width = p["w_q"].shape[1]
    d = width // heads
    b = {k: p.get(k, np.zeros(width)) for k in ("b_q", "b_v")}
    out = np.zeros((n_b, steps, feats))
    for n in range(n_b):
        q = x[n] @ p["w_q"] + b["b_q"]
        k = x[n] @ p["w_k"]
        v = x[n] @ p["w_v"] + b["b_v"]
        concat = np.zeros((steps, width))
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            for i in range(steps):
                allowed = range(i + 1) if causal else range(steps)
                scores = [float(np.dot(q[i, cols], k[j, cols])) / math.sqrt(d) for j in allowed]
                m = max(scores)
                weights = [math.exp(s - m) for s in scores]
                total = sum(weights)
                for j, w in zip(allowed, weights):
                    concat[i, cols] += (w / total) * v[j, cols]
        out[n] = concat @ p["w_o"] + p.get("b_o", 0.0)
    return out


def _params64(layer, in_shape, seed=1):
    params, _, _ = layer.init(random.key(seed), in_shape)
    params = tree.cast(params, np.float64)
    keys = random.split(random.key(seed + 50), len(params))
    return {k: (v + 0.3 * random.normal(kk, v.shape, np.float64)) if k.startswith("b") else v
            for (k, v), kk in zip(params.items(), keys)}


# --- contract + float64 gradient checks --------------------------------------------

@pytest.mark.parametrize("heads,head_dim,shape", [
    (1, None, (1, 4)), (1, None, (5, 4)), (2, None, (5, 4)), (4, None, (3, 8)), (3, 2, (4, 5))])
@pytest.mark.parametrize("causal", [False, True])
def test_check_layer(heads, head_dim, shape, causal):
    layer = multi_head_attention(heads, head_dim=head_dim, causal=causal)
    assert check_layer(layer, shape).max_error < 1e-6


def test_check_layer_no_bias_and_in_model():
    assert check_layer(multi_head_attention(2, use_bias=False), (4, 6)).max_error < 1e-6
    model = serial(dense(4), multi_head_attention(2, causal=True), dense(3))
    assert check_layer(model, (5, 3)).max_error < 1e-6


# --- forward values -----------------------------------------------------------------

@pytest.mark.parametrize("heads,head_dim,causal,use_bias", [
    (1, None, False, True), (2, None, True, True), (4, None, False, True),
    (3, 5, True, False), (2, 3, False, True)])
def test_matches_reference(heads, head_dim, causal, use_bias):
    layer = multi_head_attention(heads, head_dim=head_dim, causal=causal, use_bias=use_bias)
    p = _params64(layer, (6, 8))
    x = random.normal(random.key(4), (3, 6, 8), np.float64)
    want = ref_attention(p, x, heads, causal)
    y = layer.apply(p, {}, x)
    assert y.dtype == np.float64 and y.shape == (3, 6, 8)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-10)
    y_t, _, _ = layer.vjp(p, {}, x)
    np.testing.assert_allclose(y_t, want, rtol=0, atol=1e-10)


def test_single_position_is_value_projection():
    # With one time step the softmax weight is exactly 1: y = (x w_v + b_v) w_o + b_o.
    layer = multi_head_attention(2)
    p = _params64(layer, (1, 4))
    x = random.normal(random.key(5), (3, 1, 4), np.float64)
    want = (x @ p["w_v"] + p["b_v"]) @ p["w_o"] + p["b_o"]
    np.testing.assert_allclose(layer.apply(p, {}, x), want, rtol=0, atol=1e-12)


def test_large_scores_are_stable():
    layer = multi_head_attention(2, causal=True)
    p = _params64(layer, (5, 4))
    x = 1e3 * random.normal(random.key(6), (2, 5, 4), np.float64)
    y = layer.apply(p, {}, x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, ref_attention(p, x, 2, True), rtol=1e-9, atol=1e-6)


def test_causal_mask_ignores_the_future():
    layer = multi_head_attention(2, causal=True)
    params, _, _ = layer.init(random.key(0), (7, 4))
    x = random.normal(random.key(1), (3, 7, 4), np.float32)
    x2 = x.copy()
    x2[:, 4] += 5.0   # change step 4 only
    for run in (lambda a: layer.apply(params, {}, a), lambda a: layer.vjp(params, {}, a)[0]):
        y, y2 = run(x), run(x2)
        assert np.array_equal(y[:, :4], y2[:, :4])              # bit-identical past
        assert not np.allclose(y[:, 4:], y2[:, 4:])             # the rest does change
    # and without the mask, the past changes too
    full = multi_head_attention(2)
    assert not np.allclose(full.apply(params, {}, x)[:, :4], full.apply(params, {}, x2)[:, :4])


def test_causal_gradient_does_not_flow_backwards_in_time():
    layer = multi_head_attention(2, causal=True)
    params, _, _ = layer.init(random.key(0), (5, 4))
    x = random.normal(random.key(1), (2, 5, 4), np.float32)
    y, _, pb = layer.vjp(params, {}, x)
    dy = np.zeros_like(y)
    dy[:, 2] = 1.0       # a loss on step 2 only
    _, dx = pb(dy)
    assert np.all(dx[:, 3:] == 0) and np.any(dx[:, :3] != 0)


# --- params, dtype, need_dx ---------------------------------------------------------

def test_param_shapes():
    p, _, out = multi_head_attention(3, head_dim=5).init(random.key(0), (7, 4))
    assert out == (7, 4)
    assert {k: v.shape for k, v in p.items()} == {
        "w_q": (4, 15), "w_k": (4, 15), "w_v": (4, 15), "w_o": (15, 4),
        "b_q": (15,), "b_v": (15,), "b_o": (4,)}
    p, _, _ = multi_head_attention(2, use_bias=False).init(random.key(0), (7, 4))
    assert set(p) == {"w_q", "w_k", "w_v", "w_o"}
    assert all(v.dtype == np.float32 for v in p.values())


def test_need_dx_false():
    layer = multi_head_attention(2, causal=True)
    params, _, _ = layer.init(random.key(0), (4, 6))
    x = random.normal(random.key(1), (2, 4, 6), np.float32)
    dy = random.normal(random.key(2), (2, 4, 6), np.float32)
    g_full, dx = layer.vjp(params, {}, x)[2](dy)
    g_part, dx_none = layer.vjp(params, {}, x, need_dx=False)[2](dy)
    assert dx is not None and dx.dtype == np.float32 and dx_none is None
    assert tree.all_equal(g_full, g_part)


# --- errors -------------------------------------------------------------------------

def test_errors():
    layer = multi_head_attention(2)
    with pytest.raises(LayerError) as err:
        layer.init(random.key(0), (5, 7))
    msg = str(err.value)
    assert "multi_head_attention" in msg and "divisible" in msg and "(5, 7)" in msg
    params, _, _ = layer.init(random.key(0), (5, 4))
    with pytest.raises(LayerError) as err:
        layer.apply(params, {}, np.zeros((3, 4), np.float32))
    msg = str(err.value)
    assert "'multi_head_attention'" in msg and "(batch, ?, 4)" in msg and "(3, 4)" in msg
    with pytest.raises(LayerError) as err:
        layer.vjp(params, {}, np.zeros((3, 5, 6), np.float32))
    assert "(batch, ?, 4)" in str(err.value) and "(3, 5, 6)" in str(err.value)
    with pytest.raises(LayerError, match="floating-point"):
        layer.apply(params, {}, np.zeros((3, 5, 4), np.int32))
    with pytest.raises(ValueError):
        multi_head_attention(0)
    model = serial(dense(4), multi_head_attention(3))
    with pytest.raises(LayerError) as err:
        model.init(random.key(0), (5, 2))
    assert "multi_head_attention_1" in str(err.value)


# --- masks, cross-attention, dropout --------------------------------------------------

from fundl.combinators import fan_out, identity, parallel  # noqa: E402


def ref_mha(p, x, ctx, allow, heads, drop=None):
    """Float64 reference with loops over examples, heads and queries: ``allow`` is a
    boolean ``(N, h, T, S)`` (True = attend), ``drop`` the scaled dropout mask."""
    n_b, steps, feats = x.shape
    width = p["w_q"].shape[1]
    d = width // heads
    b = {k: p.get(k, np.zeros(width)) for k in ("b_q", "b_v")}
    out = np.zeros((n_b, steps, feats))
    for n in range(n_b):
        q = x[n] @ p["w_q"] + b["b_q"]
        k = ctx[n] @ p["w_k"]
        v = ctx[n] @ p["w_v"] + b["b_v"]
        concat = np.zeros((steps, width))
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            for i in range(steps):
                js = np.flatnonzero(allow[n, h, i])
                if js.size == 0:
                    continue                       # fully masked: zero attention output
                sc = np.array([q[i, cols] @ k[j, cols] for j in js]) / math.sqrt(d)
                w = np.exp(sc - sc.max())
                w /= w.sum()
                if drop is not None:
                    w = w * drop[n, h, i, js]
                concat[i, cols] = w @ v[js, cols]
        out[n] = concat @ p["w_o"] + p.get("b_o", 0.0)
    return out


def _lengths_mask(lengths, steps):
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]   # (batch, steps)


def _mask_forms(n, heads, t, s):
    """Boolean masks of each accepted form and their (N, h, T, S) expansions."""
    kp = _lengths_mask([s, 1, max(s - 2, 1)][:n], s)
    shared = random.bernoulli(random.key(11), 0.6, (1, t, s))
    shared[:, :, 0] = True
    per = random.bernoulli(random.key(12), 0.6, (n, 1, t, s))
    per[0, 0, min(1, t - 1)] = False                                    # a fully masked row
    full = random.bernoulli(random.key(13), 0.7, (n, heads, t, s))
    return {"key_padding": (kp, np.broadcast_to(kp[:, None, None, :], (n, heads, t, s))),
            "shared": (shared, np.broadcast_to(shared[:, None], (n, heads, t, s))),
            "per_example": (per, np.broadcast_to(per, (n, heads, t, s))),
            "per_head": (full, full)}


@pytest.mark.parametrize("form", ["key_padding", "shared", "per_example", "per_head"])
@pytest.mark.parametrize("causal", [False, True])
def test_masked_check_layer(form, causal):
    heads, t, f = 2, 4, 6
    mask, _ = _mask_forms(3, heads, t, t)[form]
    x = random.normal(random.key(1), (3, t, f), np.float32)
    layer = multi_head_attention(heads, masked=True, causal=causal)
    res = check_layer(layer, ((t, f), mask.shape[1:]), x=(x, mask))
    assert res.max_error < 1e-6


@pytest.mark.parametrize("form", ["key_padding", "shared", "per_example", "per_head"])
@pytest.mark.parametrize("s,fc", [(1, 3), (4, 6), (7, 2)])
def test_cross_masked_check_layer_and_reference(form, s, fc):
    heads, t, f = 2, 3, 4
    mask, allow = _mask_forms(3, heads, t, s)[form]
    layer = multi_head_attention(heads, cross=True, masked=True)
    x = random.normal(random.key(1), (3, t, f), np.float32)
    ctx = random.normal(random.key(2), (3, s, fc), np.float32)
    res = check_layer(layer, ((t, f), (s, fc), mask.shape[1:]), x=(x, ctx, mask))
    assert res.max_error < 1e-6
    p = _params64(layer, ((t, f), (s, fc), mask.shape[1:]))
    x64, c64 = x.astype(np.float64), ctx.astype(np.float64)
    want = ref_mha(p, x64, c64, allow, heads)
    np.testing.assert_allclose(layer.apply(p, {}, (x64, c64, mask)), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("s,fc,heads,head_dim", [(1, 4, 1, None), (5, 3, 2, None), (2, 7, 3, 2)])
def test_cross_check_layer_and_reference(s, fc, heads, head_dim):
    layer = multi_head_attention(heads, head_dim=head_dim, cross=True)
    assert check_layer(layer, ((4, 6), (s, fc))).max_error < 1e-6
    p = _params64(layer, ((4, 6), (s, fc)))
    assert p["w_k"].shape[0] == fc and p["w_q"].shape[0] == 6 and p["w_o"].shape[1] == 6
    x = random.normal(random.key(3), (2, 4, 6), np.float64)
    c = random.normal(random.key(4), (2, s, fc), np.float64)
    width = p["w_q"].shape[1]
    allow = np.ones((2, heads, 4, s), bool)
    y = layer.apply(p, {}, (x, c))
    assert y.shape == (2, 4, 6)
    np.testing.assert_allclose(y, ref_mha(p, x, c, allow, heads), rtol=0, atol=1e-10)
    assert width == heads * (6 // heads if head_dim is None else head_dim)


def test_cross_causal_and_composition():
    # causal cross-attention masks keys j > i, also when k_time differs from q_time
    layer = multi_head_attention(2, cross=True, causal=True)
    assert check_layer(layer, ((3, 4), (5, 2))).max_error < 1e-6
    p = _params64(layer, ((3, 4), (5, 2)))
    x = random.normal(random.key(3), (2, 3, 4), np.float64)
    c = random.normal(random.key(4), (2, 5, 2), np.float64)
    allow = np.broadcast_to(np.tril(np.ones((3, 5), bool)), (2, 2, 3, 5))
    np.testing.assert_allclose(layer.apply(p, {}, (x, c)), ref_mha(p, x, c, allow, 2),
                               rtol=0, atol=1e-10)
    # composes: queries from x, keys/values from a dense projection of the same x
    model = serial(fan_out(2), parallel(identity(), dense(3)),
                   multi_head_attention(2, cross=True), dense(2))
    assert check_layer(model, (5, 4)).max_error < 1e-6
    # cross-attention on (x, x) is self-attention with the same params
    self_attn, cross_attn = multi_head_attention(2, causal=True), multi_head_attention(
        2, causal=True, cross=True)
    ps = _params64(self_attn, (5, 4))
    x = random.normal(random.key(5), (2, 5, 4), np.float64)
    np.testing.assert_allclose(cross_attn.apply(ps, {}, (x, x)), self_attn.apply(ps, {}, x),
                               rtol=0, atol=1e-13)
    dy = random.normal(random.key(6), (2, 5, 4), np.float64)
    g_s, dx_s = self_attn.vjp(ps, {}, x)[2](dy)
    g_c, (dx_c, dc_c) = cross_attn.vjp(ps, {}, (x, x))[2](dy)
    np.testing.assert_allclose(dx_c + dc_c, dx_s, rtol=0, atol=1e-12)
    for k in g_s:
        np.testing.assert_allclose(g_c[k], g_s[k], rtol=0, atol=1e-12)


def test_key_padding_equals_truncated_sequences():
    heads, t, f = 2, 6, 4
    lengths = [6, 1, 3, 4]
    mask = _lengths_mask(lengths, t)
    masked = multi_head_attention(heads, masked=True)
    plain = multi_head_attention(heads)
    p = _params64(plain, (t, f))
    x = random.normal(random.key(7), (4, t, f), np.float64)
    y, _, pb = masked.vjp(p, {}, (x, mask))
    for n, ln in enumerate(lengths):
        np.testing.assert_allclose(y[n:n + 1, :ln], plain.apply(p, {}, x[n:n + 1, :ln]),
                                   rtol=0, atol=1e-12)
    # padded steps get exactly zero input gradient when their outputs are not used
    dy = random.normal(random.key(8), y.shape, np.float64) * mask[:, :, None]
    _, (dx, dmask) = pb(dy)
    assert dmask is None
    assert np.all(dx[~mask] == 0) and np.all(dx[mask] != 0)
    g_ref = plain.vjp(p, {}, x[1:2, :1])[2](dy[1:2, :1])
    # with one valid example of length 1 the gradient matches the truncated run
    _, _, pb1 = masked.vjp(p, {}, (x[1:2], mask[1:2]))
    g1, (dx1, _) = pb1(dy[1:2])
    np.testing.assert_allclose(dx1[:, :1], g_ref[1], rtol=0, atol=1e-12)
    for k in g1:
        np.testing.assert_allclose(g1[k], g_ref[0][k], rtol=0, atol=1e-12)


def test_cross_padding_equals_truncated_context():
    heads, t, s = 2, 3, 5
    lengths = [5, 2, 1]
    masked = multi_head_attention(heads, cross=True, masked=True)
    plain = multi_head_attention(heads, cross=True)
    p = _params64(plain, ((t, 4), (s, 3)))
    x = random.normal(random.key(1), (3, t, 4), np.float64)
    c = random.normal(random.key(2), (3, s, 3), np.float64)
    mask = _lengths_mask(lengths, s)
    y, _, pb = masked.vjp(p, {}, (x, c, mask))
    dy = random.normal(random.key(3), y.shape, np.float64)
    _, (dx, dc, dm) = pb(dy)
    assert dm is None and np.all(dc[~mask] == 0) and np.all(dc[mask] != 0)
    for n, ln in enumerate(lengths):
        yn, _, pbn = plain.vjp(p, {}, (x[n:n + 1], c[n:n + 1, :ln]))
        np.testing.assert_allclose(y[n:n + 1], yn, rtol=0, atol=1e-12)
        _, (dxn, dcn) = pbn(dy[n:n + 1])
        np.testing.assert_allclose(dx[n:n + 1], dxn, rtol=0, atol=1e-12)
        np.testing.assert_allclose(dc[n:n + 1, :ln], dcn, rtol=0, atol=1e-12)


def test_fully_masked_row_is_zero_not_nan():
    layer = multi_head_attention(2, cross=True, masked=True, dropout=0.3)
    p = _params64(layer, ((3, 4), (4, 2), (3, 4)))
    x = random.normal(random.key(1), (2, 3, 4), np.float64)
    c = random.normal(random.key(2), (2, 4, 2), np.float64)
    mask = np.ones((2, 3, 4), bool)
    mask[0, 1] = False            # query 1 of example 0 sees nothing
    mask[1] = False               # example 1 sees nothing at all
    ys = (layer.apply(p, {}, (x, c, mask)), layer.vjp(p, {}, (x, c, mask), key=random.key(3))[0])
    for y in ys:
        assert np.all(np.isfinite(y))
        np.testing.assert_array_equal(y[0, 1], p["b_o"])      # zero attention output: y = b_o
        np.testing.assert_array_equal(y[1], np.broadcast_to(p["b_o"], (3, 4)))
    _, _, pb = layer.vjp(p, {}, (x, c, mask), key=random.key(3))
    g, (dx, dc, _) = pb(random.normal(random.key(4), (2, 3, 4), np.float64))
    assert all(np.all(np.isfinite(v)) for v in g.values())
    assert np.all(dx[0, 1] == 0) and np.all(dx[1] == 0) and np.all(dc[1] == 0)
    assert np.any(dx[0, 0] != 0)
    # gradient-checked with the fully masked rows in place
    res = check_layer(multi_head_attention(2, masked=True, causal=True), ((3, 4), (3, 3)),
                      x=(x.astype(np.float32), mask[:, :, :3]))
    assert res.max_error < 1e-6


@pytest.mark.parametrize("rate", [0.1, 0.5])
@pytest.mark.parametrize("cross,masked", [(False, False), (True, True)])
def test_dropout_check_layer(rate, cross, masked):
    layer = multi_head_attention(2, dropout=rate, cross=cross, masked=masked, causal=True)
    x = random.normal(random.key(1), (3, 4, 4), np.float32)
    inp, shape = x, (4, 4)
    if cross:
        c = random.normal(random.key(2), (3, 5, 3), np.float32)
        m = _lengths_mask([5, 2, 1], 5)
        inp, shape = (x, c, m), ((4, 4), (5, 3), (5,))
    for seed in (0, 1):
        assert check_layer(layer, shape, x=inp, key=random.key(seed)).max_error < 1e-6


def test_dropout_values_keys_and_eval():
    rate, heads = 0.4, 2
    layer = multi_head_attention(heads, dropout=rate)
    plain = multi_head_attention(heads)
    p = _params64(layer, (5, 4))
    x = random.normal(random.key(1), (3, 5, 4), np.float64)
    key = random.key(9)
    y, _, _ = layer.vjp(p, {}, x, key=key)
    keep = (random.uniform(key, (3, heads, 5, 5), np.float64) >= rate) / (1 - rate)
    allow = np.ones((3, heads, 5, 5), bool)
    np.testing.assert_allclose(y, ref_mha(p, x, x, allow, heads, drop=keep), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(layer.apply(p, {}, x, key=key, train=True), y)
    np.testing.assert_array_equal(layer.vjp(p, {}, x, key=key)[0], y)
    assert not np.allclose(layer.vjp(p, {}, x, key=random.key(10))[0], y)
    # inference: no key needed, the same as the layer without dropout
    np.testing.assert_array_equal(layer.apply(p, {}, x), plain.apply(p, {}, x))
    np.testing.assert_array_equal(layer.apply(p, {}, x, key=key), plain.apply(p, {}, x))
    with pytest.raises(LayerError) as err:
        layer.vjp(p, {}, x)
    assert "'multi_head_attention'" in str(err.value) and "key" in str(err.value)
    with pytest.raises(LayerError, match="needs a random key"):
        layer.apply(p, {}, x, train=True)
    # about `rate` of the attention weights are dropped
    frac = 1.0 - np.mean(random.uniform(random.key(2), (40, heads, 8, 8), np.float32) >= rate)
    assert abs(frac - rate) < 0.03
    with pytest.raises(ValueError):
        multi_head_attention(2, dropout=1.0)


def test_mask_and_tuple_errors():
    layer = multi_head_attention(2, masked=True)
    params, _, out = layer.init(random.key(0), ((5, 4), (5,)))
    assert out == (5, 4)
    x = np.zeros((3, 5, 4), np.float32)
    with pytest.raises(LayerError) as err:
        layer.apply(params, {}, x)
    assert "'multi_head_attention'" in str(err.value) and "(x, mask)" in str(err.value)
    with pytest.raises(LayerError, match="boolean mask"):
        layer.apply(params, {}, (x, np.ones((3, 5), np.float32)))
    with pytest.raises(LayerError) as err:
        layer.apply(params, {}, (x, np.ones((3, 4), bool)))
    assert "(3, 4)" in str(err.value) and "k_time=5" in str(err.value)
    with pytest.raises(LayerError, match=r"got shape \(5, 5\)"):
        layer.apply(params, {}, (x, np.ones((5, 5), bool)))   # a shared mask needs m[None]
    with pytest.raises(LayerError, match="per-example mask shape"):
        layer.init(random.key(0), ((5, 4), (1, 1, 5, 5)))
    with pytest.raises(LayerError, match="tuple of 2 input shapes"):
        layer.init(random.key(0), (5, 4))
    cross = multi_head_attention(2, cross=True)
    params, _, _ = cross.init(random.key(0), ((5, 4), (3, 2)))
    with pytest.raises(LayerError) as err:
        cross.apply(params, {}, (x, np.zeros((3, 3, 5), np.float32)))
    assert "context" in str(err.value) and "(batch, ?, 2)" in str(err.value)
    with pytest.raises(LayerError, match="batch size"):
        cross.apply(params, {}, (x, np.zeros((2, 3, 2), np.float32)))


# --- PyTorch equivalence (float64) -----------------------------------------------------

def _torch_mha(torch, p, heads, e, kdim=None):
    mha = torch.nn.MultiheadAttention(e, heads, batch_first=True, kdim=kdim, vdim=kdim,
                                      dtype=torch.float64)
    t = lambda a: torch.tensor(np.ascontiguousarray(a))   # noqa: E731
    with torch.no_grad():
        if kdim is None:
            mha.in_proj_weight.copy_(t(np.concatenate([p["w_q"], p["w_k"], p["w_v"]], 1).T))
        else:
            mha.q_proj_weight.copy_(t(p["w_q"].T))
            mha.k_proj_weight.copy_(t(p["w_k"].T))
            mha.v_proj_weight.copy_(t(p["w_v"].T))
        b_k = np.full(e, 0.37)            # a torch key bias changes nothing
        mha.in_proj_bias.copy_(t(np.concatenate([p["b_q"], b_k, p["b_v"]])))
        mha.out_proj.weight.copy_(t(p["w_o"].T))
        mha.out_proj.bias.copy_(t(p["b_o"]))
    return mha


@pytest.mark.parametrize("cross", [False, True])
def test_matches_torch_key_padding_mask(cross):
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    heads, t, e, s, fc = 2, 5, 4, (6 if cross else 5), (3 if cross else 4)
    layer = multi_head_attention(heads, cross=cross, masked=True)
    shapes = ((t, e), (s, fc), (s,)) if cross else ((t, e), (t,))
    p = _params64(layer, shapes)
    x = random.normal(random.key(1), (3, t, e), np.float64)
    c = random.normal(random.key(2), (3, s, fc), np.float64) if cross else x
    mask = _lengths_mask([s, 2, 0], s)   # example 2 fully masked: zeros in torch's grad mode too
    inp = (x, c, mask) if cross else (x, mask)
    y, _, pb = layer.vjp(p, {}, inp)
    dy = random.normal(random.key(3), y.shape, np.float64)
    grads, dxs = pb(dy)

    mha = _torch_mha(torch, p, heads, e, kdim=fc if cross else None)
    xt = torch.tensor(x, requires_grad=True)
    ct = torch.tensor(c, requires_grad=True) if cross else xt
    yt, _ = mha(xt, ct, ct, key_padding_mask=torch.tensor(~mask), need_weights=False)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-6)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(dxs[0], xt.grad.numpy(), rtol=0, atol=1e-6)
    if cross:
        np.testing.assert_allclose(dxs[1], ct.grad.numpy(), rtol=0, atol=1e-6)
        w = {"w_q": mha.q_proj_weight.grad, "w_k": mha.k_proj_weight.grad,
             "w_v": mha.v_proj_weight.grad}
        w = {k: v.numpy().T for k, v in w.items()}
    else:
        w = dict(zip(("w_q", "w_k", "w_v"), mha.in_proj_weight.grad.numpy().reshape(3, e, e)))
        w = {k: v.T for k, v in w.items()}
    b = mha.in_proj_bias.grad.numpy()
    want = dict(w, b_q=b[:e], b_v=b[2 * e:], w_o=mha.out_proj.weight.grad.numpy().T,
                b_o=mha.out_proj.bias.grad.numpy())
    np.testing.assert_allclose(b[e:2 * e], 0.0, atol=1e-12)   # torch's key bias: zero gradient
    for k in grads:
        np.testing.assert_allclose(grads[k], want[k], rtol=0, atol=1e-6, err_msg=k)


# --- incremental decoding with a key/value cache ----------------------------------------------

from fundl.layers.attention import KVCache, attend_cached, kv_cache  # noqa: E402
from fundl.testing import read_only  # noqa: E402


def _decode(layer, params, x, chunks):
    """``layer`` over ``x`` through the cache, ``chunks`` positions per call."""
    cache = kv_cache(layer, params, x.shape[0])
    out, t = [], 0
    for size in chunks:
        y, cache = attend_cached(layer, params, cache, x[:, t:t + size])
        out.append(y)
        t += size
    assert t == x.shape[1] and cache.k.shape[2] == t
    return np.concatenate(out, axis=1), cache


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("heads,head_dim,use_bias", [(1, None, True), (2, None, True),
                                                     (4, 3, False)])
@pytest.mark.parametrize("chunks", [[1] * 7, [7], [3, 1, 1, 2], [2, 5]])
def test_cached_decoding_equals_the_full_layer(dtype, tol, heads, head_dim, use_bias, chunks):
    layer = multi_head_attention(heads, head_dim=head_dim, causal=True, use_bias=use_bias,
                                 dropout=0.2)
    params, _, _ = layer.init(random.key(2), (7, 8))
    params = read_only(tree.cast(params, dtype))
    if use_bias:   # non-zero biases, so that they are exercised
        params = read_only({k: (v + 0.1 if k.startswith("b_") else v) for k, v in params.items()})
    x = read_only(random.normal(random.key(3), (3, 7, 8), dtype))
    want = layer.apply(params, {}, x)
    got, cache = _decode(layer, params, x, chunks)
    assert got.dtype == dtype and isinstance(cache, KVCache)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= tol * scale, np.abs(got - want).max()


def test_cached_decoding_leaves_its_inputs_alone_and_names_bad_ones():
    layer = multi_head_attention(2, causal=True)
    params, _, _ = layer.init(random.key(0), (5, 4))
    params = read_only(params)
    x = read_only(random.normal(random.key(1), (2, 3, 4), np.float32))
    cache = kv_cache(layer, params, 2)
    y, grown = attend_cached(layer, params, cache, x)
    assert cache.k.shape == (2, 2, 0, 2) and grown.k.shape == (2, 2, 3, 2)
    y2, grown2 = attend_cached(layer, params, grown, x[:, :1])
    assert grown.k.shape == (2, 2, 3, 2) and grown2.v.shape == (2, 2, 4, 2)
    with pytest.raises(ValueError, match="needs causal self-attention"):
        attend_cached(multi_head_attention(2), params, cache, x)
    with pytest.raises(ValueError, match="masked=True"):
        kv_cache(multi_head_attention(2, causal=True, masked=True), params, 2)
    with pytest.raises(TypeError, match="takes a multi_head_attention layer, got a dense"):
        kv_cache(dense(3), params, 2)
    with pytest.raises(LayerError, match=r"expected the cache's k of shape \(3, 2, t, 2\)"):
        attend_cached(layer, params, cache, random.normal(random.key(1), (3, 1, 4), np.float32))
    with pytest.raises(LayerError, match=r"input dtype float64 does not match"):
        attend_cached(layer, params, cache, x.astype(np.float64))
    with pytest.raises(LayerError, match=r"expected input of shape \(batch, \?, 4\)"):
        attend_cached(layer, params, cache, x[..., :3])


def test_readme_generation_block_runs():
    block = readme_block("attend_cached")
    namespace = {}
    exec(compile("import numpy as np\nimport fundl as fl\n" + block, "README.md", "exec"),
         namespace)
    assert namespace["cache"].k.shape == (4, 2, 7, 4)
