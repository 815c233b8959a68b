"""Pooling: contract + gradient checks, naive-loop references, the tie rule, errors."""

import math

import numpy as np
import pytest

from fundl import random
from fundl.combinators import serial
from fundl import LayerError
from fundl.layers.pool import avg_pool1d, avg_pool2d, global_avg_pool, max_pool1d, max_pool2d
from fundl.testing import check_layer


# --- independent references: loops over output positions ---------------------------

def _pads(size, window, stride, padding):
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        total = max((math.ceil(size / stride) - 1) * stride + window - size, 0)
        return total // 2, total - total // 2
    if isinstance(padding, int):
        return (padding, padding)
    return tuple(padding)


def naive_pool2d(x, window, stride, pads, is_max):
    """Returns (y, dx_of(dy)); the max gradient goes to the first max in row-major order."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = window, stride, pads
    oh = (h + pt + pb - kh) // sh + 1
    ow = (w + pl + pr - kw) // sw + 1
    y = np.zeros((n, oh, ow, c))
    picks = {}  # (n, r, q, ch) -> list of ((ih, iw), weight)
    for b in range(n):
        for r in range(oh):
            for q in range(ow):
                for ch in range(c):
                    cells = [(r * sh - pt + i, q * sw - pl + j)
                             for i in range(kh) for j in range(kw)]
                    real = [(a, e) for a, e in cells if 0 <= a < h and 0 <= e < w]
                    vals = [x[b, a, e, ch] for a, e in real]
                    if is_max:
                        best = 0
                        for t, v in enumerate(vals):
                            if v > vals[best]:
                                best = t
                        y[b, r, q, ch] = vals[best]
                        picks[b, r, q, ch] = [(real[best], 1.0)]
                    else:
                        y[b, r, q, ch] = sum(vals) / len(vals)
                        picks[b, r, q, ch] = [(cell, 1.0 / len(vals)) for cell in real]

    def dx_of(dy):
        dx = np.zeros(x.shape)
        for (b, r, q, ch), lst in picks.items():
            for (a, e), wgt in lst:
                dx[b, a, e, ch] += wgt * dy[b, r, q, ch]
        return dx

    return y, dx_of


POOL2D_CASES = [
    # in_shape, window, stride, padding
    ((4, 6, 3), 2, None, "valid"),        # fast path: window == stride, divisible
    ((5, 7, 2), 2, None, "valid"),        # window == stride, cropped remainder
    ((6, 6, 2), (2, 3), None, "valid"),
    ((7, 6, 2), 3, 2, "same"),            # overlapping, padded
    ((5, 5, 1), 3, 1, "same"),
    ((6, 7, 2), (3, 2), (1, 2), [(1, 1), (0, 1)]),
    ((7, 7, 2), 2, 3, "valid"),           # stride > window: gaps
    ((5, 6, 2), 2, None, "same"),         # window == stride with a pad at the end
    ((4, 5, 2), 3, 2, 1),
]


@pytest.mark.parametrize("is_max", [True, False])
@pytest.mark.parametrize("in_shape,window,stride,padding", POOL2D_CASES)
def test_pool2d_check_layer_and_naive(in_shape, window, stride, padding, is_max):
    make = max_pool2d if is_max else avg_pool2d
    layer = make(window, stride, padding)
    res = check_layer(layer, in_shape)
    assert res.max_error < 1e-6
    x = random.normal(random.key(3), (2,) + in_shape, np.float64)
    y, _, pb = layer.vjp({}, {}, x)
    win = (window, window) if isinstance(window, int) else window
    st = win if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    pads = tuple(_pads(in_shape[a], win[a], st[a],
                       padding if isinstance(padding, (str, int)) else padding[a])
                 for a in range(2))
    ref_y, ref_dx_of = naive_pool2d(x, win, st, pads, is_max)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(layer.apply({}, {}, x), y)
    dy = random.normal(random.key(4), y.shape, np.float64)
    _, dx = pb(dy)
    np.testing.assert_allclose(dx, ref_dx_of(dy), rtol=0, atol=1e-12)


@pytest.mark.parametrize("is_max", [True, False])
@pytest.mark.parametrize("in_shape,window,stride,padding", [
    ((8, 3), 2, None, "valid"), ((7, 2), 3, 2, "same"), ((9, 2), 4, 3, [(1, 2)]),
    ((6, 1), 2, 1, (1, 0))])
def test_pool1d_matches_2d_reference(in_shape, window, stride, padding, is_max):
    layer = (max_pool1d if is_max else avg_pool1d)(window, stride, padding)
    assert check_layer(layer, in_shape).max_error < 1e-6
    x = random.normal(random.key(3), (2,) + in_shape, np.float64)
    y, _, pb = layer.vjp({}, {}, x)
    st = window if stride is None else stride
    pad = _pads(in_shape[0], window, st, padding if isinstance(padding, str)
                else (padding[0] if isinstance(padding, list) else padding))
    ref_y, ref_dx_of = naive_pool2d(x[:, None], (1, window), (1, st), ((0, 0), pad), is_max)
    np.testing.assert_allclose(y, ref_y[:, 0], rtol=0, atol=1e-12)
    dy = random.normal(random.key(4), y.shape, np.float64)
    np.testing.assert_allclose(pb(dy)[1], ref_dx_of(dy[:, None])[:, 0], rtol=0, atol=1e-12)


def test_avg_pool_counts_only_real_cells():
    # 3x3 window, stride 1, 'same' on a 3x3 of ones: every output is exactly 1.
    x = np.ones((1, 3, 3, 1))
    y = avg_pool2d(3, 1, "same").apply({}, {}, x)
    np.testing.assert_array_equal(y, np.ones((1, 3, 3, 1)))
    # corner of arange(9): mean of the four real cells {0, 1, 3, 4} = 2.
    y = avg_pool2d(3, 1, "same").apply({}, {}, np.arange(9.0).reshape(1, 3, 3, 1))
    assert y[0, 0, 0, 0] == 2.0 and y[0, 1, 1, 0] == 4.0


@pytest.mark.parametrize("window,stride,padding", [
    (2, None, "valid"), (3, 1, "same"), (2, 1, "valid"), (3, 2, [(1, 0), (1, 1)])])
def test_max_pool_tie_sends_gradient_to_exactly_one_cell(window, stride, padding):
    layer = max_pool2d(window, stride, padding)
    x = np.zeros((2, 4, 4, 3), np.float32)  # every window is a tie (e.g. after a relu)
    y, _, pb = layer.vjp({}, {}, x)
    dy = np.ones(y.shape, np.float32)
    _, dx = pb(dy)
    # total gradient is conserved: exactly one winner per window
    np.testing.assert_allclose(dx.sum(), dy.sum())
    # and it is the first cell of each window in row-major order
    k = (window, window)
    s = k if stride is None else (stride, stride)
    pads = tuple(_pads(4, k[a], s[a], padding if isinstance(padding, str) else padding[a])
                 for a in range(2))
    _, ref_dx_of = naive_pool2d(x.astype(np.float64), k, s, pads, True)
    np.testing.assert_array_equal(dx, ref_dx_of(dy.astype(np.float64)))


def test_max_pool_tie_2x2_exact():
    x = np.array([[1.0, 5.0], [5.0, 5.0]]).reshape(1, 2, 2, 1)
    _, _, pb = max_pool2d(2).vjp({}, {}, x)
    _, dx = pb(np.array([7.0]).reshape(1, 1, 1, 1))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0.0, 7.0], [0.0, 0.0]])


@pytest.mark.parametrize("in_shape,window,stride,padding", [
    ((6, 8, 3), 2, None, "valid"),        # tiled: one broadcast compare
    ((6, 6, 2), (2, 3), None, "valid"),   # tiled, non-square window
    ((5, 7, 2), 2, None, "valid"),        # cropped remainder: per-offset path
    ((7, 6, 2), 3, 2, "same"),            # overlapping, padded
    ((6, 6, 2), 3, 1, "valid"),           # heavily overlapping
])
def test_max_pool_many_partial_ties_match_first_max_rule(in_shape, window, stride, padding):
    # small integers: most windows have 2-4 tied maxima, in every position
    x = np.floor(random.uniform(random.key(7), (3,) + in_shape, np.float64) * 3.0)
    layer = max_pool2d(window, stride, padding)
    y, _, pb = layer.vjp({}, {}, x)
    dy = random.normal(random.key(8), y.shape, np.float64)
    win = (window, window) if isinstance(window, int) else window
    st = win if stride is None else (stride, stride)
    pads = tuple(_pads(in_shape[a], win[a], st[a], padding) for a in range(2))
    ref_y, ref_dx_of = naive_pool2d(x, win, st, pads, True)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_allclose(pb(dy)[1], ref_dx_of(dy), rtol=0, atol=1e-12)  # sum order


def test_max_pool_signed_zero_tie_goes_to_the_first_cell():
    x = np.array([[-0.0, 0.0], [0.0, -0.0]], np.float32).reshape(1, 2, 2, 1)
    for first in (x, -x):
        _, _, pb = max_pool2d(2).vjp({}, {}, first)
        _, dx = pb(np.full((1, 1, 1, 1), 3.0, np.float32))
        np.testing.assert_array_equal(dx[0, :, :, 0], [[3.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("window,stride,padding", [(2, None, "valid"), (3, 1, "same")])
def test_max_pool_nan_window_sends_gradient_to_its_first_nan(window, stride, padding):
    # argmax semantics: NaN is the maximum of its window (np.maximum propagates it)
    x = np.array([[1.0, 7.0, 2.0, 0.0],
                  [np.nan, np.nan, 3.0, 9.0],
                  [4.0, 5.0, 6.0, 8.0],
                  [0.0, 1.0, 2.0, 3.0]], np.float32).reshape(1, 4, 4, 1)
    layer = max_pool2d(window, stride, padding)
    y, _, pb = layer.vjp({}, {}, x)
    dy = random.normal(random.key(9), y.shape, np.float32)
    _, dx = pb(dy)
    s = (window, window) if stride is None else (stride, stride)
    pads = tuple(_pads(4, window, s[a], padding) for a in range(2))
    with np.errstate(invalid="ignore"):
        ref_y, _ = naive_pool2d(x.astype(np.float64), (window, window), s, pads, True)
    # the naive loop's ``v > best`` never picks a NaN; build the reference by argmax
    (pt, _), (pl, _) = pads
    xp = np.pad(x[0, :, :, 0].astype(np.float64), ((pt, pt + 2), (pl, pl + 2)),
                constant_values=-np.inf)
    ref_dx = np.zeros((4 + 2 * pt + 2, 4 + 2 * pl + 2))
    for r in range(y.shape[1]):
        for q in range(y.shape[2]):
            cells = xp[r * s[0]:r * s[0] + window, q * s[1]:q * s[1] + window]
            a = np.argmax(cells)  # first NaN if any, else first maximum
            ref_dx[r * s[0] + a // window, q * s[1] + a % window] += dy[0, r, q, 0]
            assert np.isnan(y[0, r, q, 0]) == np.isnan(cells).any()
            if not np.isnan(cells).any():
                assert y[0, r, q, 0] == cells.max()
    np.testing.assert_allclose(dx[0, :, :, 0], ref_dx[pt:pt + 4, pl:pl + 4], rtol=1e-6)
    assert np.isnan(y).any() and not np.isnan(dx).any()


def test_max_pool_padding_is_minus_inf():
    x = -np.ones((1, 3, 3, 1))
    y = max_pool2d(3, 1, "same").apply({}, {}, x)
    np.testing.assert_array_equal(y, -np.ones((1, 3, 3, 1)))  # padding never wins


def test_pool_float32_and_shapes():
    layer = max_pool2d(2)
    _, _, out = layer.init(random.key(0), (28, 28, 32))
    assert out == (14, 14, 32)
    assert avg_pool2d(3, 2, "same").init(random.key(0), (7, 8, 1))[2] == (4, 4, 1)
    x = random.normal(random.key(0), (2, 28, 28, 32))
    y, _, pb = layer.vjp({}, {}, x)
    assert y.dtype == np.float32 and pb(y)[1].dtype == np.float32
    assert pb(y)[1].shape == x.shape
    assert layer.vjp({}, {}, x, need_dx=False)[2](y) == ({}, None)


# --- global average pool -----------------------------------------------------------

@pytest.mark.parametrize("in_shape", [(5, 3), (4, 6, 2), (2, 3, 2, 2)])
def test_global_avg_pool(in_shape):
    layer = global_avg_pool()
    assert check_layer(layer, in_shape).max_error < 1e-6
    assert layer.init(random.key(0), in_shape)[2] == in_shape[-1:]
    x = random.normal(random.key(1), (2,) + in_shape, np.float64)
    y, _, pb = layer.vjp({}, {}, x)
    count = int(np.prod(in_shape[:-1]))
    ref = np.array([[sum(x[b].reshape(-1, in_shape[-1])[i, c] for i in range(count)) / count
                     for c in range(in_shape[-1])] for b in range(2)])
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)
    dy = random.normal(random.key(2), y.shape, np.float64)
    _, dx = pb(dy)
    assert dx.shape == x.shape and dx.flags.writeable
    np.testing.assert_allclose(dx, np.broadcast_to((dy / count)[:, None, :],
                                                   (2, count, in_shape[-1])).reshape(x.shape),
                               rtol=0, atol=1e-15)


# --- errors ------------------------------------------------------------------------

def _raises(fn, *needles):
    with pytest.raises(LayerError) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_errors():
    x = np.zeros((8, 6, 6, 3), np.float32)
    # wrong rank, with the path from serial
    model = serial(max_pool2d(2))
    _raises(lambda: model.apply({"max_pool2d_0": {}}, {"max_pool2d_0": {}}, x[:, 0]),
            "layer 'max_pool2d_0' (max_pool2d)", "(batch, ?, ?, ?)", "(8, 6, 3)")
    _raises(lambda: avg_pool1d(2).apply({}, {}, x), "avg_pool1d", "(batch, ?, ?)",
            "(8, 6, 6, 3)")
    _raises(lambda: max_pool2d(2).init(random.key(0), (6, 3)), "max_pool2d", "(6, 3)")
    # window larger than the (padded) input
    _raises(lambda: max_pool2d(7).apply({}, {}, x), "max_pool2d", "(7, 7)", "(6, 6)")
    _raises(lambda: avg_pool2d((2, 8)).init(random.key(0), (6, 6, 3)), "avg_pool2d",
            "(2, 8)", "(6, 6)")
    # non-float input
    _raises(lambda: max_pool2d(2).vjp({}, {}, x.astype(np.int64)), "max_pool2d", "int64")
    _raises(lambda: global_avg_pool().apply({}, {}, x.astype(np.uint8)), "global_avg_pool",
            "uint8")
    _raises(lambda: global_avg_pool().apply({}, {}, x[:, 0, 0]), "global_avg_pool", "(8, 3)")
    # bad padding / window specs, at construction
    for bad in ("full", -2, [(1, 1)], [(0, 0), (0, -1)]):
        _raises(lambda: max_pool2d(2, padding=bad), "max_pool2d", "padding")
    _raises(lambda: avg_pool2d(2, padding=2), "avg_pool2d", "padding", "smaller than the window")
    _raises(lambda: max_pool1d(0), "max_pool1d", "window")
    _raises(lambda: avg_pool2d(2, stride=(1, 0)), "avg_pool2d", "stride")


@pytest.mark.parametrize("window, stride, padding",
                         [(3, 1, "same"), (2, 2, 1), (3, 2, ((1, 0), (0, 1)))])
def test_max_pool_all_minus_inf_window_sends_its_gradient_to_a_real_cell(window, stride, padding):
    x = np.full((1, 4, 4, 2), -np.inf)
    x[0, 0, 0, 0] = 1.0  # one finite cell: other windows are all -inf (ties with the padding)
    layer = max_pool2d(window, stride, padding)
    y, _, pullback = layer.vjp({}, {}, x)
    dy = np.arange(1, y.size + 1, dtype=np.float64).reshape(y.shape)
    _, dx = pullback(dy)
    # every window's gradient lands inside the input: nothing is lost to the padding
    assert dx.sum() == pytest.approx(dy.sum())
    assert dx[..., 1].sum() == pytest.approx(dy[..., 1].sum())   # the all -inf channel
