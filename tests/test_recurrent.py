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


def ref_rnn(p, x, activation="tanh", h0=None):
    """Per-example, per-step Elman RNN; returns (N, T, H)."""
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0.0))
    n_b, steps, _ = x.shape
    hid = p["w_h"].shape[0]
    out = np.zeros((n_b, steps, hid))
    for n in range(n_b):
        h = np.zeros(hid) if h0 is None else h0[n]
        for t in range(steps):
            h = act(np.dot(x[n, t], p["w_x"]) + np.dot(h, p["w_h"]) + p["b"])
            out[n, t] = h
    return out


def ref_gru(p, x, h0=None):
    """Per-example, per-step GRU (Cho et al. / PyTorch form); returns (N, T, H)."""
    n_b, steps, _ = x.shape
    hid = p["w_h"].shape[0]
    wx = {g: p["w_x"][:, j * hid:(j + 1) * hid] for j, g in enumerate("rzn")}
    wh = {g: p["w_h"][:, j * hid:(j + 1) * hid] for j, g in enumerate("rzn")}
    b = {g: p["b"][j * hid:(j + 1) * hid] for j, g in enumerate("rzn")}
    out = np.zeros((n_b, steps, hid))
    for n in range(n_b):
        h = np.zeros(hid) if h0 is None else h0[n]
        for t in range(steps):
            xt = x[n, t]
            r = _sig(np.dot(xt, wx["r"]) + b["r"] + np.dot(h, wh["r"]))
            z = _sig(np.dot(xt, wx["z"]) + b["z"] + np.dot(h, wh["z"]))
            cand = np.tanh(np.dot(xt, wx["n"]) + b["n"] + r * (np.dot(h, wh["n"]) + p["b_hn"]))
            h = (1.0 - z) * cand + z * h
            out[n, t] = h
    return out


def ref_lstm(p, x, h0=None, c0=None, return_c=False):
    """Per-example, per-step LSTM (gate order i, f, g, o); returns (N, T, H)
    (and the final c when ``return_c``)."""
    n_b, steps, _ = x.shape
    hid = p["w_h"].shape[0]
    out = np.zeros((n_b, steps, hid))
    c_last = np.zeros((n_b, hid))
    for n in range(n_b):
        h = np.zeros(hid) if h0 is None else h0[n]
        c = np.zeros(hid) if c0 is None else c0[n]
        for t in range(steps):
            gates = {}
            for j, g in enumerate("ifgo"):
                cols = slice(j * hid, (j + 1) * hid)
                gates[g] = (np.dot(x[n, t], p["w_x"][:, cols]) + np.dot(h, p["w_h"][:, cols])
                            + p["b"][cols])
            c = _sig(gates["f"]) * c + _sig(gates["i"]) * np.tanh(gates["g"])
            h = _sig(gates["o"]) * np.tanh(c)
            out[n, t] = h
        c_last[n] = c
    return (out, c_last) if return_c else out


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


# --- variable lengths, initial state, final state -------------------------------------

CELLS = [(rnn, ref_rnn), (gru, ref_gru), (lstm, ref_lstm)]
CELL_IDS = ["rnn", "gru", "lstm"]
LENGTHS = np.array([5, 1, 3, 0, 5])        # full, length 1, partial, empty


def _state(make, n, hidden, seed=5, dtype=np.float32):
    h = random.normal(random.key(seed), (n, hidden), dtype)
    if make is lstm:
        return h, random.normal(random.key(seed + 1), (n, hidden), dtype)
    return h


def _form(make, hidden, x, lengths=None, state=None):
    """(input, in_shape) for the flags implied by which of lengths/state are given."""
    inp, shapes = [x], [x.shape[1:]]
    if lengths is not None:
        inp.append(lengths)
        shapes.append(())
    if state is not None:
        inp.append(state)
        shapes.append(((hidden,), (hidden,)) if make is lstm else (hidden,))
    if len(inp) == 1:
        return x, x.shape[1:]
    return tuple(inp), tuple(shapes)


def _ref(make, ref, p, x, state=None):
    """Reference hidden states (N, T, H) and, for the LSTM, the final c."""
    if make is lstm:
        h0, c0 = (None, None) if state is None else state
        return ref(p, x, h0, c0, return_c=True)
    return ref(p, x, h0=None if state is None else state), None


@pytest.mark.parametrize("make", [rnn, gru, lstm], ids=CELL_IDS)
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("with_lengths,with_state,return_state", [
    (True, False, False), (False, True, False), (False, False, True), (True, True, True),
    (True, False, True), (False, True, True)])
def test_check_layer_lengths_and_states(make, return_sequences, with_lengths, with_state,
                                        return_state):
    hidden = 3
    x = random.normal(random.key(1), (5, 5, 2), np.float32)
    inp, shape = _form(make, hidden, x, LENGTHS if with_lengths else None,
                       _state(make, 5, hidden) if with_state else None)
    layer = make(hidden, return_sequences=return_sequences, with_lengths=with_lengths,
                 with_initial_state=with_state, return_state=return_state)
    res = check_layer(layer, shape, x=inp)
    assert res.max_error < 1e-6
    _, _, out_shape = layer.init(random.key(0), shape)
    y_shape = (5, hidden) if return_sequences else (hidden,)
    st = ((hidden,), (hidden,)) if make is lstm else (hidden,)
    assert out_shape == ((y_shape, st) if return_state else y_shape)


@pytest.mark.parametrize("make,ref", CELLS, ids=CELL_IDS)
def test_lengths_equal_truncated_sequences(make, ref):
    hidden, steps = 4, 5
    layer = make(hidden, with_lengths=True, with_initial_state=True, return_state=True)
    plain = make(hidden, with_initial_state=True, return_state=True)
    x = _x64(5, steps, 3)
    state = _state(make, 5, hidden, dtype=np.float64)
    shape = ((steps, 3), (), ((hidden,),) * 2 if make is lstm else (hidden,))
    p = _params64(layer, shape)
    (y, hn), _, pb = layer.vjp(p, {}, (x, LENGTHS, state))
    valid = np.arange(steps)[None, :] < LENGTHS[:, None]
    assert np.all(y[~valid] == 0)                     # zeros at padded steps
    # dy everywhere, also at padded steps (whose outputs are constant zeros)
    dy = random.normal(random.key(9), y.shape, np.float64)
    dhn = tree.map(lambda a: random.normal(random.key(10), a.shape, np.float64), hn)
    g, (dx, dlen, dstate) = pb((dy, dhn))
    assert dlen is None and np.all(dx[~valid] == 0) and np.all(dx[valid] != 0)
    g_sum = tree.map(np.zeros_like, g)
    for n, ln in enumerate(LENGTHS):
        st_n = tree.map(lambda a: a[n:n + 1], state)
        dst_n = tree.map(lambda a: a[n:n + 1], dhn)
        hn_n = tree.map(lambda a: a[n:n + 1], hn)
        if ln == 0:      # an empty sequence: the state passes through untouched
            assert tree.all_equal(hn_n, st_n)
            assert tree.all_equal(tree.map(lambda a: a[n:n + 1], dstate), dst_n)
            continue
        (yn, hnn), _, pbn = plain.vjp(p, {}, (x[n:n + 1, :ln], st_n))
        np.testing.assert_allclose(y[n:n + 1, :ln], yn, rtol=0, atol=1e-12)
        for a, b in zip(tree.leaves(hn_n), tree.leaves(hnn)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
        gn, (dxn, dstn) = pbn((dy[n:n + 1, :ln], dst_n))
        np.testing.assert_allclose(dx[n:n + 1, :ln], dxn, rtol=0, atol=1e-12)
        for a, b in zip(tree.leaves(tree.map(lambda a: a[n:n + 1], dstate)), tree.leaves(dstn)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
        g_sum = tree.map(np.add, g_sum, gn)
    for k in g:
        np.testing.assert_allclose(g[k], g_sum[k], rtol=0, atol=1e-12, err_msg=k)
    # the reference, per example and step, on the truncated sequences
    hs_ref, _ = _ref(make, ref, p, x, state)
    for n, ln in enumerate(LENGTHS):
        if ln:
            np.testing.assert_allclose(y[n, :ln], hs_ref[n, :ln], rtol=0, atol=1e-10)


@pytest.mark.parametrize("make,ref", CELLS, ids=CELL_IDS)
def test_full_lengths_equal_plain_layer(make, ref):
    layer = make(3, with_lengths=True)
    last = make(3, with_lengths=True, return_sequences=False)
    plain = make(3)
    p = _params64(plain, (4, 2))
    x = _x64(3, 4, 2)
    full = np.full(3, 4)
    np.testing.assert_array_equal(layer.apply(p, {}, (x, full)), plain.apply(p, {}, x))
    y, _, pb = layer.vjp(p, {}, (x, full))
    dy = random.normal(random.key(1), y.shape, np.float64)
    g, (dx, _) = pb(dy)
    g0, dx0 = plain.vjp(p, {}, x)[2](dy)
    assert tree.all_equal(g, g0) and np.array_equal(dx, dx0)
    # return_sequences=False with lengths: the state after each sequence's own last step
    lengths = np.array([4, 2, 1])
    want = ref(p, x)
    np.testing.assert_allclose(last.apply(p, {}, (x, lengths)),
                               want[np.arange(3), lengths - 1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("make,ref", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_initial_and_final_state_match_reference(make, ref, return_sequences):
    hidden = 4
    layer = make(hidden, return_sequences=return_sequences, with_initial_state=True,
                 return_state=True)
    shape = ((6, 3), ((hidden,),) * 2 if make is lstm else (hidden,))
    p = _params64(layer, shape)
    x = _x64(3, 6, 3)
    state = _state(make, 3, hidden, dtype=np.float64)
    hs, c_last = _ref(make, ref, p, x, state)
    for y, hn in (layer.apply(p, {}, (x, state)), layer.vjp(p, {}, (x, state))[0]):
        np.testing.assert_allclose(y, hs if return_sequences else hs[:, -1], rtol=0, atol=1e-10)
        if make is lstm:
            np.testing.assert_allclose(hn[0], hs[:, -1], rtol=0, atol=1e-10)
            np.testing.assert_allclose(hn[1], c_last, rtol=0, atol=1e-10)
        else:
            np.testing.assert_allclose(hn, hs[:, -1], rtol=0, atol=1e-10)
    # zero initial state = no initial state
    zeros = tree.map(np.zeros_like, state)
    y0 = layer.apply(p, {}, (x, zeros))[0]
    np.testing.assert_allclose(y0, make(hidden, return_sequences=return_sequences).apply(p, {}, x),
                               rtol=0, atol=1e-14)


@pytest.mark.parametrize("merge", ["concat", "sum"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_lengths(merge, return_sequences):
    make = lambda: gru(3, return_sequences=return_sequences, with_lengths=True)  # noqa: E731
    layer = bidirectional(make(), lstm(3, return_sequences=return_sequences, with_lengths=True),
                          merge=merge)
    x = random.normal(random.key(1), (5, 5, 2), np.float32)
    assert check_layer(layer, ((5, 2), ()), x=(x, LENGTHS)).max_error < 1e-6
    plain = bidirectional(gru(3, return_sequences=return_sequences),
                          lstm(3, return_sequences=return_sequences), merge=merge)
    params, state, _ = layer.init(random.key(3), ((5, 2), ()))
    params = tree.cast(params, np.float64)
    x64 = x.astype(np.float64)
    y, _, pb = layer.vjp(params, state, (x64, LENGTHS))
    dy = random.normal(random.key(2), y.shape, np.float64)
    _, (dx, dlen) = pb(dy)
    valid = np.arange(5)[None, :] < LENGTHS[:, None]
    assert dlen is None and np.all(dx[~valid] == 0)
    if return_sequences:
        assert np.all(y[~valid] == 0)
    for n, ln in enumerate(LENGTHS):
        if ln == 0:
            continue
        yn, _, pbn = plain.vjp(params, state, x64[n:n + 1, :ln])
        if return_sequences:
            np.testing.assert_allclose(y[n:n + 1, :ln], yn, rtol=0, atol=1e-12)
            dyn = dy[n:n + 1, :ln]
        else:
            np.testing.assert_allclose(y[n:n + 1], yn, rtol=0, atol=1e-12)
            dyn = dy[n:n + 1]
        np.testing.assert_allclose(dx[n:n + 1, :ln], pbn(dyn)[1], rtol=0, atol=1e-12)


def test_lengths_and_state_errors():
    layer = gru(3, with_lengths=True, with_initial_state=True)
    params, _, _ = layer.init(random.key(0), ((5, 4), (), (3,)))
    x = np.zeros((2, 5, 4), np.float32)
    h0 = np.zeros((2, 3), np.float32)
    with pytest.raises(LayerError) as err:
        layer.apply(params, {}, x)
    assert "'gru'" in str(err.value) and "(x, lengths, initial_state)" in str(err.value)
    with pytest.raises(LayerError, match="integer lengths"):
        layer.apply(params, {}, (x, np.array([5.0, 2.0]), h0))
    with pytest.raises(LayerError, match=r"lengths of shape \(2,\)"):
        layer.apply(params, {}, (x, np.array([5, 2, 1]), h0))
    with pytest.raises(LayerError, match=r"lengths in \[0, 5\]"):
        layer.apply(params, {}, (x, np.array([6, 2]), h0))
    with pytest.raises(LayerError, match=r"initial state of shape \(2, 3\)"):
        layer.apply(params, {}, (x, np.array([5, 2]), np.zeros((2, 4), np.float32)))
    with pytest.raises(LayerError, match="dtype float32"):
        layer.apply(params, {}, (x, np.array([5, 2]), h0.astype(np.float64)))
    with pytest.raises(LayerError, match="tuple of 3 input shapes"):
        layer.init(random.key(0), (5, 4))
    with pytest.raises(LayerError, match=r"initial state shape \(3,\)"):
        layer.init(random.key(0), ((5, 4), (), (4,)))
    with pytest.raises(LayerError, match="lengths shape"):
        layer.init(random.key(0), ((5, 4), (2,), (3,)))
    cell = lstm(3, with_initial_state=True)
    params, _, _ = cell.init(random.key(0), ((5, 4), ((3,), (3,))))
    with pytest.raises(LayerError, match=r"tuple \(h0, c0\)"):
        cell.apply(params, {}, (x, h0))
    with pytest.raises(LayerError, match="no return_state"):
        bidirectional(gru(3, return_state=True)).init(random.key(0), (5, 4))
    bi = bidirectional(gru(3, with_lengths=True))
    params, state, _ = bi.init(random.key(0), ((5, 4), ()))
    with pytest.raises(LayerError) as err:
        bi.apply(params, state, (x, np.array([1, 9])))
    assert "'bidirectional'" in str(err.value) and "[0, 5]" in str(err.value)


# --- PyTorch equivalence with packed sequences (float64) -------------------------------

def _torch_weights(torch, mod, p, make, suffix=""):
    hid = p["w_h"].shape[0]
    t = lambda a: torch.tensor(np.ascontiguousarray(a))   # noqa: E731
    b_hh = 0.3 * random.normal(random.key(77), (p["b"].shape[0],), np.float64)
    if make is gru:
        b_hh[2 * hid:] = p["b_hn"]
    b_ih = p["b"] - b_hh
    if make is gru:
        b_ih[2 * hid:] = p["b"][2 * hid:]
    with torch.no_grad():
        getattr(mod, "weight_ih_l0" + suffix).copy_(t(p["w_x"].T))
        getattr(mod, "weight_hh_l0" + suffix).copy_(t(p["w_h"].T))
        getattr(mod, "bias_ih_l0" + suffix).copy_(t(b_ih))
        getattr(mod, "bias_hh_l0" + suffix).copy_(t(b_hh))


def _torch_grads(mod, make, hid, suffix=""):
    g = lambda n: getattr(mod, n + "_l0" + suffix).grad.numpy()   # noqa: E731
    out = {"w_x": g("weight_ih").T, "w_h": g("weight_hh").T}
    b_ih, b_hh = g("bias_ih"), g("bias_hh")
    if make is gru:
        out["b"] = b_ih
        out["b_hn"] = b_hh[2 * hid:]
        np.testing.assert_allclose(b_hh[:2 * hid], b_ih[:2 * hid], atol=1e-12)
    else:
        out["b"] = b_ih
        np.testing.assert_allclose(b_hh, b_ih, atol=1e-12)
    return out


@pytest.mark.parametrize("make", [gru, lstm, rnn], ids=["gru", "lstm", "rnn"])
def test_matches_torch_packed_sequences(make):
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    hid, steps, feats = 4, 6, 3
    lengths = np.array([6, 1, 4, 3])
    layer = make(hid, with_lengths=True, with_initial_state=True, return_state=True)
    shape = ((steps, feats), (), ((hid,),) * 2 if make is lstm else (hid,))
    p = _params64(layer, shape)
    x = _x64(4, steps, feats)
    state = _state(make, 4, hid, dtype=np.float64)
    (y, hn), _, pb = layer.vjp(p, {}, (x, lengths, state))
    dy = random.normal(random.key(3), y.shape, np.float64)
    dhn = tree.map(lambda a: random.normal(random.key(4), a.shape, np.float64), hn)
    grads, (dx, _, dstate) = pb((dy, dhn))

    cls = {gru: torch.nn.GRU, lstm: torch.nn.LSTM, rnn: torch.nn.RNN}[make]
    mod = cls(feats, hid, batch_first=True, dtype=torch.float64)
    _torch_weights(torch, mod, p, make)
    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(a[None], requires_grad=True) for a in tree.leaves(state)]
    packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=True,
                                  enforce_sorted=False)
    out, hn_t = mod(packed, tuple(st) if make is lstm else st[0])
    yt, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
    hn_t = list(hn_t) if make is lstm else [hn_t]
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-6)
    for a, b in zip(tree.leaves(hn), hn_t):
        np.testing.assert_allclose(a, b[0].detach().numpy(), rtol=0, atol=1e-6)
    loss = (yt * torch.tensor(dy)).sum() + sum(
        (b[0] * torch.tensor(a)).sum() for a, b in zip(tree.leaves(dhn), hn_t))
    loss.backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-6)
    for a, b in zip(tree.leaves(dstate), st):
        np.testing.assert_allclose(a, b.grad[0].numpy(), rtol=0, atol=1e-6)
    want = _torch_grads(mod, make, hid)
    for k in grads:
        np.testing.assert_allclose(grads[k], want[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("make", [gru, lstm], ids=["gru", "lstm"])
def test_matches_torch_bidirectional_packed(make):
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    hid, steps, feats = 3, 5, 2
    lengths = np.array([2, 5, 1])
    layer = bidirectional(make(hid, with_lengths=True))
    _, state, _ = layer.init(random.key(0), ((steps, feats), ()))
    params = {k: _params64(make(hid), (steps, feats), seed=s)
              for k, s in (("forward", 1), ("backward", 2))}
    x = _x64(3, steps, feats)
    y, _, pb = layer.vjp(params, state, (x, lengths))
    dy = random.normal(random.key(3), y.shape, np.float64)
    grads, (dx, _) = pb(dy)

    cls = torch.nn.GRU if make is gru else torch.nn.LSTM
    mod = cls(feats, hid, batch_first=True, bidirectional=True, dtype=torch.float64)
    _torch_weights(torch, mod, params["forward"], make)
    _torch_weights(torch, mod, params["backward"], make, "_reverse")
    xt = torch.tensor(x, requires_grad=True)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=True,
                                  enforce_sorted=False)
    yt, _ = pad_packed_sequence(mod(packed)[0], batch_first=True, total_length=steps)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-6)
    (yt * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-6)
    for k, suffix in (("forward", ""), ("backward", "_reverse")):
        want = _torch_grads(mod, make, hid, suffix)
        for name in grads[k]:
            np.testing.assert_allclose(grads[k][name], want[name], rtol=0, atol=1e-6,
                                       err_msg=f"{k}/{name}")


# --- the fast scan/BPTT against a straightforward batched forward + BPTT --------------

def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def ref_bptt(kind, p, x, dy, return_sequences):
    """Batch-first, one step at a time, no buffers: ``y`` and ``pullback(dy)`` of a cell
    (zero initial state), in the dtype of ``x``."""
    n_b, steps, _ = x.shape
    hid = p["w_h"].shape[0]
    one = x.dtype.type(1)
    blk = [slice(j * hid, (j + 1) * hid) for j in range(4)]
    h = np.zeros((n_b, hid), x.dtype)
    c = np.zeros_like(h)
    hs, cache = [], []
    for t in range(steps):
        xw = x[:, t] @ p["w_x"] + p["b"]
        hw = h @ p["w_h"]
        if kind == "rnn":
            h_new = np.tanh(xw + hw)
            cache.append((h, h_new))
        elif kind == "gru":
            r = _sigmoid(xw[:, blk[0]] + hw[:, blk[0]])
            z = _sigmoid(xw[:, blk[1]] + hw[:, blk[1]])
            hn = hw[:, blk[2]] + p["b_hn"]
            n = np.tanh(xw[:, blk[2]] + r * hn)
            h_new = (one - z) * n + z * h
            cache.append((h, r, z, hn, n))
        else:
            a = xw + hw
            i, f, o = (_sigmoid(a[:, blk[j]]) for j in (0, 1, 3))
            g = np.tanh(a[:, blk[2]])
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            cache.append((h, c, i, f, g, o, c_new))
            c = c_new
        h = h_new
        hs.append(h)
    y = np.stack(hs, axis=1) if return_sequences else hs[-1]

    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dx = np.zeros_like(x)
    dh = np.zeros((n_b, hid), x.dtype)
    dc = np.zeros_like(dh)
    for t in reversed(range(steps)):
        gh = dh + (dy[:, t] if return_sequences else (dy if t == steps - 1 else 0.0))
        if kind == "rnn":
            h_prev, h_t = cache[t]
            da_x = da_h = gh * (one - h_t * h_t)
        elif kind == "gru":
            h_prev, r, z, hn, n = cache[t]
            da_n = gh * (one - z) * (one - n * n)
            da_r = da_n * hn * r * (one - r)
            da_z = gh * (h_prev - n) * z * (one - z)
            da_x = np.concatenate([da_r, da_z, da_n], axis=1)
            da_h = np.concatenate([da_r, da_z, da_n * r], axis=1)
            grads["b_hn"] += (da_n * r).sum(axis=0)
        else:
            h_prev, c_prev, i, f, g, o, c_t = cache[t]
            tc = np.tanh(c_t)
            d_c = dc + gh * o * (one - tc * tc)
            da_x = da_h = np.concatenate([d_c * g * i * (one - i), d_c * c_prev * f * (one - f),
                                          d_c * i * (one - g * g), gh * tc * o * (one - o)],
                                         axis=1)
            dc = d_c * f
        grads["w_x"] += x[:, t].T @ da_x
        grads["b"] += da_x.sum(axis=0)
        grads["w_h"] += h_prev.T @ da_h
        dx[:, t] = da_x @ p["w_x"].T
        dh = da_h @ p["w_h"].T
        if kind == "gru":
            dh += gh * z
    return y, grads, dx


def _max_rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("chunk", [None, 10], ids=["one_chunk", "chunks_of_2"])
@pytest.mark.parametrize("feats", [3, 1])    # one feature: the projection's outer-product path
def test_fast_bptt_matches_straightforward_reference(kind, return_sequences, dtype, tol,
                                                     chunk, feats, monkeypatch):
    import fundl.layers.recurrent as rec
    if chunk is not None:   # 10 columns: folds of 2 steps of 5 examples, the last one short
        monkeypatch.setattr(rec, "_CHUNK_COLUMNS", chunk)
    make = {"rnn": rnn, "gru": gru, "lstm": lstm}[kind]
    n_b, steps, hid = 5, 7, 6
    layer = make(hid, return_sequences=return_sequences, dtype=dtype)
    params = tree.cast(_params64(layer, (steps, feats), seed=3), dtype)
    x = _x64(n_b, steps, feats, seed=4).astype(dtype)
    y_shape = (n_b, steps, hid) if return_sequences else (n_b, hid)
    dy = random.normal(random.key(5), y_shape, np.float64).astype(dtype)
    y, _, pb = layer.vjp(params, {}, x)
    grads, dx = pb(dy)
    y_ref, grads_ref, dx_ref = ref_bptt(kind, params, x, dy, return_sequences)
    assert y.dtype == dx.dtype == dtype and y.shape == y_shape and dx.shape == x.shape
    assert _max_rel(y, y_ref) < tol
    assert _max_rel(dx, dx_ref) < tol
    assert sorted(grads) == sorted(grads_ref)
    for k in grads:
        assert grads[k].dtype == dtype and grads[k].shape == params[k].shape
        assert _max_rel(grads[k], grads_ref[k]) < tol, k
    assert np.array_equal(layer.apply(params, {}, x), y)   # inference takes the same path


@pytest.mark.parametrize("make", [rnn, gru, lstm], ids=["rnn", "gru", "lstm"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_check_layer_one_feature(make, return_sequences):
    res = check_layer(make(3, return_sequences=return_sequences), (5, 1))
    assert res.max_error < 1e-6


@pytest.mark.parametrize("make", [lambda: rnn(3), lambda: gru(3), lambda: lstm(3),
                                  lambda: lstm(3, return_sequences=False),
                                  lambda: bidirectional(gru(3))])
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(make):
    """0 examples (a rank with no share of a global batch): empty outputs, zero param grads."""
    layer = make()
    params, state, out_shape = layer.init(random.key(0), (4, 2))
    x = np.zeros((0, 4, 2), np.float32)
    y, _, pullback = layer.vjp(params, state, x)
    assert y.shape == (0,) + tuple(out_shape)
    grads, dx = pullback(np.zeros_like(y))
    assert dx.shape == x.shape
    assert all(not np.any(g) for g in tree.leaves(grads))
    assert layer.apply(params, state, x).shape == y.shape


def _layouts(a):
    """``a`` (N, T, H) or (N, H) in other memory layouts, each read-only, equal in value."""
    out = {"C": a.copy(), "fortran": np.asfortranarray(a),
           "reversed": np.ascontiguousarray(a[::-1])[::-1],
           "sliced": np.repeat(a, 2, axis=-1)[..., ::2]}
    if a.ndim == 3:   # time-major (T, N, H) and feature-major (T, H, N) storage, as views
        out["time_major"] = np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)
        out["feature_major"] = np.ascontiguousarray(a.transpose(1, 2, 0)).transpose(2, 0, 1)
    else:             # a final state (N, H): stored transposed under both names
        out["time_major"] = out["feature_major"] = np.ascontiguousarray(a.T).T
    for v in out.values():
        v.flags.writeable = False
    return out


@pytest.mark.parametrize("make", [rnn, gru, lstm], ids=CELL_IDS)
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("return_state", [False, True])
def test_pullback_never_writes_dy_in_any_layout(make, return_sequences, return_state):
    # On 76c14af, with_lengths=True and a dy stored feature-major ((T, H, N) memory seen as
    # (N, T, H)) had its padded steps zeroed in the caller's array, and raised "output
    # array is read-only" when that dy was read-only.
    hidden = 3
    x = random.normal(random.key(1), (5, 4, 2), np.float32)
    lengths = np.array([4, 1, 3, 0, 2])
    layer = make(hidden, return_sequences=return_sequences, with_lengths=True,
                 return_state=return_state)
    params, state, _ = layer.init(random.key(0), ((4, 2), ()))
    y, _, pullback = layer.vjp(params, state, (x, lengths))
    dy = tree.map(lambda a: random.normal(random.key(7), a.shape, np.float32), y)
    want = pullback(dy)
    leaves = tree.leaves(dy)
    for name in _layouts(leaves[0]):
        other = tree.unflatten(tree.flatten(dy)[1], [_layouts(a)[name] for a in leaves])
        before = tree.map(np.copy, other)
        got = pullback(other)
        assert tree.all_equal(other, before), name
        assert tree.all_equal(got[0], want[0]), name
        np.testing.assert_array_equal(got[1][0], want[1][0], err_msg=name)


@pytest.mark.parametrize("make", [rnn, gru, lstm], ids=CELL_IDS)
@pytest.mark.parametrize("n,steps,features", [(3, 4, 2), (5, 2, 1), (2, 6, 3)])
def test_lengths_path_float64_gradients_across_shapes(make, n, steps, features):
    # the with_lengths pullback (padded steps of dy zeroed in a new array) and the compact
    # params of every cell, in float64 finite differences
    lengths = np.arange(n) % (steps + 1)
    x = random.normal(random.key(2), (n, steps, features), np.float64)
    layer = make(3, with_lengths=True)
    from fundl.gradcheck import check_vjp
    result = check_vjp(layer, ((steps, features), ()), x=(x, lengths))
    assert result.max_error < 1e-7, result


# --- cell: one step at a time, with the layer's params ---------------------------------------

from fundl import check_vjp  # noqa: E402
from fundl.layers.recurrent import cell, zero_carry  # noqa: E402

STEPPED = [("rnn", lambda h: rnn(h)), ("rnn(relu)", lambda h: rnn(h, activation="relu")),
           ("gru", lambda h: gru(h)), ("lstm", lambda h: lstm(h, forget_bias=0.5)),
           ("gru(lengths, last)", lambda h: gru(h, with_lengths=True, return_sequences=False))]


def _run_cell(layer, params, x, dtype):
    c = cell(layer)
    carry = zero_carry(layer, x.shape[0], dtype)
    hs = []
    for t in range(x.shape[1]):
        carry = c.apply(params, {}, (x[:, t], carry))
        hs.append(carry[0] if layer.kind == "lstm" else carry)
    return np.stack(hs, axis=1)


@pytest.mark.parametrize("name,build", STEPPED, ids=[s[0] for s in STEPPED])
@pytest.mark.parametrize("steps,features,hidden", [(1, 2, 3), (7, 3, 5), (12, 1, 4)])
def test_cell_steps_through_the_layers_outputs(name, build, steps, features, hidden):
    layer = build(hidden)
    plain = build(hidden) if "lengths" not in name else gru(hidden)
    in_shape = ((steps, features), ()) if "lengths" in name else (steps, features)
    params, _, _ = layer.init(random.key(3), in_shape)
    x = random.normal(random.key(4), (5, steps, features), np.float32)
    want = plain.apply(params, {}, x)
    got = _run_cell(layer, params, x, np.float32)
    assert got.dtype == np.float32 and got.shape == want.shape
    # the same matmuls step by step: bit-identical here (max difference 0 with OpenBLAS,
    # float32 and float64, up to (T, F, H) = (50, 16, 64)); the tolerance allows a BLAS
    # that sums the batched input projection in another order than one step's
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    got64 = _run_cell(layer, tree.cast(params, np.float64), x.astype(np.float64), np.float64)
    want64 = plain.apply(tree.cast(params, np.float64), {}, x.astype(np.float64))
    np.testing.assert_allclose(got64, want64, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name,build", STEPPED[:4], ids=[s[0] for s in STEPPED[:4]])
@pytest.mark.parametrize("features,hidden", [(1, 2), (3, 4), (2, 5)])
def test_cell_gradient_float64(name, build, features, hidden):
    layer = build(hidden)
    c = cell(layer)
    state_shape = ((hidden,), (hidden,)) if layer.kind == "lstm" else (hidden,)
    check_vjp(c, ((features,), state_shape), batch=3, key=random.key(5))
    check_layer(c, ((features,), state_shape))


def test_cell_params_are_the_layers_and_bad_inputs_are_named():
    layer = lstm(3)
    params, _, _ = layer.init(random.key(0), (4, 2))
    c = cell(layer)
    p2, s2, out = c.init(random.key(0), ((2,), ((3,), (3,))))
    assert tree.shapes(p2) == tree.shapes(params) and s2 == {} and out == ((3,), (3,))
    assert c.kind == "lstm_cell"
    carry = zero_carry(layer, 2)
    with pytest.raises(LayerError, match=r"one time step x_t of shape \(batch, features\), got "
                                         r"shape \(2, 1, 2\)"):
        c.apply(params, {}, (np.zeros((2, 1, 2), np.float32), carry))
    with pytest.raises(LayerError, match=r"expected a tuple of 2 inputs \(x_t, \(h, c\)\)"):
        c.apply(params, {}, np.zeros((2, 2), np.float32))
    with pytest.raises(LayerError, match=r"initial state h0 of shape \(2, 3\)"):
        c.apply(params, {}, (np.zeros((2, 2), np.float32), (carry[0][:, :2], carry[1])))
    with pytest.raises(TypeError, match="cell takes an rnn, gru or lstm layer, got a dense"):
        cell(dense(3))
    assert zero_carry(gru(4), 3, np.float64).dtype == np.float64
