"""Tests for fundl.layers.recurrent: rnn, gru, lstm, bidirectional."""

import math

import numpy as np
import pytest

from fundl import random, tree
from fundl.combinators import serial
from fundl import LayerError
from fundl.layers.dense import dense
from fundl.layers.recurrent import bidirectional, gru, lstm, rnn
from fundl.testing import check_layer

SHAPES = [(1, 2, 3), (4, 3, 2), (6, 2, 4)]  # (time, features, hidden)


# --- independent float64 references: one example, one step at a time ---------------

def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def ref_rnn(p, x, activation="tanh"):
    """Per-example, per-step Elman RNN; returns (N, T, H)."""
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0.0))
    n_b, steps, _ = x.shape
    hid = p["w_h"].shape[0]
    out = np.zeros((n_b, steps, hid))
    for n in range(n_b):
        h = np.zeros(hid)
        for t in range(steps):
            h = act(np.dot(x[n, t], p["w_x"]) + np.dot(h, p["w_h"]) + p["b"])
            out[n, t] = h
    return out


def ref_gru(p, x):
    """Per-example, per-step GRU (Cho et al. / PyTorch form); returns (N, T, H)."""
    n_b, steps, _ = x.shape
    hid = p["w_h"].shape[0]
    wx = {g: p["w_x"][:, j * hid:(j + 1) * hid] for j, g in enumerate("rzn")}
    wh = {g: p["w_h"][:, j * hid:(j + 1) * hid] for j, g in enumerate("rzn")}
    b = {g: p["b"][j * hid:(j + 1) * hid] for j, g in enumerate("rzn")}
    out = np.zeros((n_b, steps, hid))
    for n in range(n_b):
        h = np.zeros(hid)
        for t in range(steps):
            xt = x[n, t]
            r = _sig(np.dot(xt, wx["r"]) + b["r"] + np.dot(h, wh["r"]))
            z = _sig(np.dot(xt, wx["z"]) + b["z"] + np.dot(h, wh["z"]))
            cand = np.tanh(np.dot(xt, wx["n"]) + b["n"] + r * (np.dot(h, wh["n"]) + p["b_hn"]))
            h = (1.0 - z) * cand + z * h
            out[n, t] = h
    return out


def ref_lstm(p, x):
    """Per-example, per-step LSTM (gate order i, f, g, o); returns (N, T, H)."""
    n_b, steps, _ = x.shape
    hid = p["w_h"].shape[0]
    out = np.zeros((n_b, steps, hid))
    for n in range(n_b):
        h = np.zeros(hid)
        c = np.zeros(hid)
        for t in range(steps):
            gates = {}
            for j, g in enumerate("ifgo"):
                cols = slice(j * hid, (j + 1) * hid)
                gates[g] = (np.dot(x[n, t], p["w_x"][:, cols]) + np.dot(h, p["w_h"][:, cols])
                            + p["b"][cols])
            c = _sig(gates["f"]) * c + _sig(gates["i"]) * np.tanh(gates["g"])
            h = _sig(gates["o"]) * np.tanh(c)
            out[n, t] = h
    return out


def _params64(layer, in_shape, seed=1):
    params, _, _ = layer.init(random.key(seed), in_shape)
    params = tree.cast(params, np.float64)
    # random biases, so every bias path is exercised by the value check
    keys = random.split(random.key(seed + 100), len(params))
    return {k: (v + 0.3 * random.normal(kk, v.shape, np.float64)) if k.startswith("b") else v
            for (k, v), kk in zip(params.items(), keys)}


def _x64(n, t, f, seed=2):
    return random.normal(random.key(seed), (n, t, f), np.float64)


# --- contract + float64 gradient checks --------------------------------------------

@pytest.mark.parametrize("make", [rnn, gru, lstm], ids=["rnn", "gru", "lstm"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_check_layer_cells(make, shape, return_sequences):
    steps, features, hidden = shape
    res = check_layer(make(hidden, return_sequences=return_sequences), (steps, features))
    assert res.max_error < 1e-6


@pytest.mark.parametrize("return_sequences", [True, False])
def test_check_layer_rnn_relu(return_sequences):
    res = check_layer(rnn(3, activation="relu", return_sequences=return_sequences), (5, 2))
    assert res.max_error < 1e-6


@pytest.mark.parametrize("merge", ["concat", "sum"])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("steps", [1, 4])
def test_check_layer_bidirectional(merge, return_sequences, steps):
    layer = bidirectional(gru(3, return_sequences=return_sequences), merge=merge)
    res = check_layer(layer, (steps, 2))
    assert res.max_error < 1e-6


def test_check_layer_bidirectional_two_kinds():
    layer = bidirectional(lstm(3), rnn(2), merge="concat")
    res = check_layer(layer, (4, 2))
    assert res.max_error < 1e-6
    _, _, out_shape = layer.init(random.key(0), (4, 2))
    assert out_shape == (4, 5)


def test_stacked_in_serial():
    model = serial(lstm(4), gru(3, return_sequences=False), dense(2))
    res = check_layer(model, (5, 3))
    assert res.max_error < 1e-6


# --- forward values against the plain references ------------------------------------

@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_rnn_matches_reference(activation):
    layer = rnn(4, activation=activation)
    p = _params64(layer, (5, 3))
    x = _x64(3, 5, 3)
    want = ref_rnn(p, x, activation)
    np.testing.assert_allclose(layer.apply(p, {}, x), want, rtol=0, atol=1e-10)
    y, _, _ = layer.vjp(p, {}, x)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-10)
    last = rnn(4, activation=activation, return_sequences=False)
    np.testing.assert_allclose(last.apply(p, {}, x), want[:, -1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("make,ref", [(gru, ref_gru), (lstm, ref_lstm)], ids=["gru", "lstm"])
@pytest.mark.parametrize("steps", [1, 6])
def test_gated_cells_match_reference(make, ref, steps):
    layer = make(5)
    p = _params64(layer, (steps, 3))
    x = _x64(4, steps, 3)
    want = ref(p, x)
    y = layer.apply(p, {}, x)
    assert y.dtype == np.float64 and y.shape == (4, steps, 5)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-10)
    y_t, _, _ = layer.vjp(p, {}, x)
    np.testing.assert_allclose(y_t, want, rtol=0, atol=1e-10)
    last = make(5, return_sequences=False)
    np.testing.assert_allclose(last.apply(p, {}, x), want[:, -1], rtol=0, atol=1e-10)
    y_last, _, _ = last.vjp(p, {}, x)
    np.testing.assert_allclose(y_last, want[:, -1], rtol=0, atol=1e-10)


def test_gru_hand_computed_one_step():
    # hidden = features = 1, one step, from h = 0: r and z do not matter except via z.
    layer = gru(1)
    p = {"w_x": np.array([[0.5, -1.0, 2.0]]), "w_h": np.array([[0.3, 0.7, -0.4]]),
         "b": np.array([0.1, 0.2, -0.3]), "b_hn": np.array([0.25])}
    x = np.array([[[0.8]]])
    r = 1 / (1 + math.exp(-(0.5 * 0.8 + 0.1)))
    z = 1 / (1 + math.exp(-(-1.0 * 0.8 + 0.2)))
    n = math.tanh(2.0 * 0.8 - 0.3 + r * 0.25)
    assert layer.apply(p, {}, x)[0, 0, 0] == pytest.approx((1 - z) * n, abs=1e-15)


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_matches_reference(merge):
    layer = bidirectional(gru(3), merge=merge)
    params, state, _ = layer.init(random.key(3), (5, 2))
    params = tree.cast(params, np.float64)
    x = _x64(2, 5, 2)
    fwd = ref_gru(params["forward"], x)
    bwd = ref_gru(params["backward"], x[:, ::-1])[:, ::-1]
    want = np.concatenate([fwd, bwd], -1) if merge == "concat" else fwd + bwd
    np.testing.assert_allclose(layer.apply(params, state, x), want, rtol=0, atol=1e-10)

    last = bidirectional(gru(3, return_sequences=False), merge=merge)
    # the backward direction's last output is its state after reading x[:, 0]
    bwd_last = ref_gru(params["backward"], x[:, ::-1])[:, -1]
    want_last = (np.concatenate([fwd[:, -1], bwd_last], -1) if merge == "concat"
                 else fwd[:, -1] + bwd_last)
    np.testing.assert_allclose(last.apply(params, state, x), want_last, rtol=0, atol=1e-10)


def test_bidirectional_params_are_separate():
    layer = bidirectional(lstm(2))
    params, state, out_shape = layer.init(random.key(0), (3, 4))
    assert set(params) == {"forward", "backward"} and state == {"forward": {}, "backward": {}}
    assert out_shape == (3, 4)
    assert not np.array_equal(params["forward"]["w_x"], params["backward"]["w_x"])


# --- params, init, dtype, need_dx ---------------------------------------------------

def test_param_shapes_and_init():
    p, _, out = lstm(3).init(random.key(0), (7, 2))
    assert out == (7, 3)
    assert p["w_x"].shape == (2, 12) and p["w_h"].shape == (3, 12) and p["b"].shape == (12,)
    np.testing.assert_array_equal(p["b"], np.r_[np.zeros(3), np.ones(3), np.zeros(6)])
    for j in range(4):  # each gate's recurrent block is orthogonal
        block = p["w_h"][:, 3 * j:3 * (j + 1)].astype(np.float64)
        np.testing.assert_allclose(block.T @ block, np.eye(3), atol=1e-6)
    p, _, out = gru(4, return_sequences=False).init(random.key(0), (7, 2))
    assert out == (4,)
    assert {k: v.shape for k, v in p.items()} == {
        "w_x": (2, 12), "w_h": (4, 12), "b": (12,), "b_hn": (4,)}
    p, _, _ = rnn(5).init(random.key(0), (7, 2))
    assert {k: v.shape for k, v in p.items()} == {"w_x": (2, 5), "w_h": (5, 5), "b": (5,)}
    assert all(v.dtype == np.float32 for v in p.values())


@pytest.mark.parametrize("make", [rnn, gru, lstm], ids=["rnn", "gru", "lstm"])
def test_need_dx_false(make):
    layer = make(3)
    params, _, _ = layer.init(random.key(0), (4, 2))
    x = random.normal(random.key(1), (2, 4, 2), np.float32)
    dy = random.normal(random.key(2), (2, 4, 3), np.float32)
    full, _, pb_full = layer.vjp(params, {}, x)
    part, _, pb_part = layer.vjp(params, {}, x, need_dx=False)
    g_full, dx = pb_full(dy)
    g_part, dx_none = pb_part(dy)
    assert dx is not None and dx_none is None
    assert tree.all_equal(g_full, g_part)


def test_float64_end_to_end():
    layer = bidirectional(lstm(3, dtype=np.float64))
    params, state, _ = layer.init(random.key(0), (4, 2))
    x = random.normal(random.key(1), (2, 4, 2), np.float64)
    y, _, pb = layer.vjp(params, state, x)
    grads, dx = pb(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float64
    assert {g.dtype for g in tree.leaves(grads)} == {np.dtype(np.float64)}


def test_bad_constructor_arguments():
    with pytest.raises(ValueError):
        rnn(3, activation="softsign")
    with pytest.raises(ValueError):
        gru(0)
    with pytest.raises(ValueError):
        bidirectional(gru(2), merge="mean")


# --- errors -------------------------------------------------------------------------

@pytest.mark.parametrize("make,kind", [(rnn, "rnn"), (gru, "gru"), (lstm, "lstm")])
def test_errors_name_layer_and_shapes(make, kind):
    layer = make(3)
    params, _, _ = layer.init(random.key(0), (5, 4))
    with pytest.raises(LayerError) as err:      # 2-D input
        layer.apply(params, {}, np.zeros((8, 4), np.float32))
    msg = str(err.value)
    assert f"'{kind}'" in msg and "(batch, ?, 4)" in msg and "(8, 4)" in msg
    with pytest.raises(LayerError) as err:      # features differ from the params
        layer.vjp(params, {}, np.zeros((8, 5, 3), np.float32))
    msg = str(err.value)
    assert f"'{kind}'" in msg and "(batch, ?, 4)" in msg and "(8, 5, 3)" in msg
    with pytest.raises(LayerError, match="floating-point"):
        layer.apply(params, {}, np.zeros((8, 5, 4), np.int64))
    with pytest.raises(LayerError, match="float64"):
        layer.apply(params, {}, np.zeros((8, 5, 4), np.float64))
    with pytest.raises(LayerError, match=r"\(time, features\)"):
        layer.init(random.key(0), (4,))
    with pytest.raises(LayerError, match="at least one time step"):
        layer.apply(params, {}, np.zeros((8, 0, 4), np.float32))


def test_errors_inside_models():
    model = serial(bidirectional(gru(3)), dense(2))
    params, state, _ = model.init(random.key(0), (5, 4))
    with pytest.raises(LayerError) as err:
        model.apply(params, state, np.zeros((2, 5, 6), np.float32))
    msg = str(err.value)
    assert "bidirectional_0/forward" in msg and "(2, 5, 6)" in msg and "(batch, ?, 4)" in msg
    with pytest.raises(LayerError) as err:
        model.apply(params, state, np.zeros((2, 5), np.float32))
    assert "bidirectional_0" in str(err.value) and "(2, 5)" in str(err.value)
    with pytest.raises(LayerError, match="merge='sum'"):
        bidirectional(gru(3), gru(2), merge="sum").init(random.key(0), (5, 4))
