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
