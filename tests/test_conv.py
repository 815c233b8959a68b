"""conv1d / conv2d: contract + gradient checks, naive-loop references, errors."""

import math

import numpy as np
import pytest

from fundl import random
from fundl.combinators import serial
from fundl import LayerError
from fundl.layers.activations import relu
from fundl.layers.conv import conv1d, conv2d
from fundl.testing import check_layer


# --- independent references: explicit loops over output positions ----------------

def _same_pads(size, k_eff, stride):
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


def naive_conv2d(x, w, b, stride, pads, dilation):
    """Cross-correlation by loops; padding handled by bounds checks (no np.pad)."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, pads, dilation
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((n, oh, ow, o))
    for b_ in range(n):
        for r in range(oh):
            for s in range(ow):
                acc = np.zeros(o) if b is None else b.astype(np.float64).copy()
                for i in range(kh):
                    for j in range(kw):
                        ih, iw = r * sh - pt + i * dh, s * sw - pl + j * dw
                        if 0 <= ih < h and 0 <= iw < wd:
                            for ci in range(c):
                                acc += x[b_, ih, iw, ci] * w[i, j, ci]
                y[b_, r, s] = acc
    return y


def _init64(layer, in_shape, seed=0):
    params, state, out_shape = layer.init(random.key(seed), in_shape)
    return params, state, out_shape


CONV2D_CASES = [
    # in_shape, kwargs
    ((5, 5, 1), dict(features=2, kernel_size=3)),
    ((6, 7, 3), dict(features=4, kernel_size=3, padding="same")),
    ((7, 6, 2), dict(features=3, kernel_size=(3, 2), stride=2, padding="same")),
    ((8, 9, 2), dict(features=2, kernel_size=3, dilation=2, padding="same")),
    ((8, 7, 2), dict(features=2, kernel_size=(2, 3), stride=(2, 1), dilation=(1, 2))),
    ((6, 5, 3), dict(features=2, kernel_size=2, padding=[(1, 0), (2, 1)], use_bias=False)),
    ((5, 6, 1), dict(features=3, kernel_size=(1, 4), padding=1, stride=(1, 3))),
    ((4, 4, 2), dict(features=1, kernel_size=4, padding="same", stride=3)),
    ((5, 4, 2), dict(features=2, kernel_size=(2, 4), padding="same")),  # even kernel, same
    ((4, 5, 2), dict(features=2, kernel_size=3, padding=2)),  # output larger than input
    ((9, 5, 2), dict(features=2, kernel_size=3, stride=2, dilation=2, padding="same",
                     use_bias=False)),
    # more than FEW_CHANNELS input channels: im2col in the other layout
    ((6, 5, 5), dict(features=3, kernel_size=3, stride=2, dilation=(1, 2), padding="same")),
    ((5, 5, 6), dict(features=2, kernel_size=2, use_bias=False)),
]


def _pads2d(in_shape, kw):
    k = kw["kernel_size"]
    k = (k, k) if isinstance(k, int) else k
    s = kw.get("stride", 1)
    s = (s, s) if isinstance(s, int) else s
    d = kw.get("dilation", 1)
    d = (d, d) if isinstance(d, int) else d
    p = kw.get("padding", "valid")
    if p == "valid":
        pads = ((0, 0), (0, 0))
    elif p == "same":
        pads = tuple(_same_pads(in_shape[a], (k[a] - 1) * d[a] + 1, s[a]) for a in range(2))
    elif isinstance(p, int):
        pads = ((p, p), (p, p))
    else:
        pads = tuple(tuple(q) for q in p)
    return s, pads, d


@pytest.mark.parametrize("in_shape,kw", CONV2D_CASES)
def test_conv2d_check_layer(in_shape, kw):
    res = check_layer(conv2d(**kw), in_shape)
    assert res.max_error < 1e-6


@pytest.mark.parametrize("in_shape,kw", CONV2D_CASES)
def test_conv2d_matches_naive_loops(in_shape, kw):
    layer = conv2d(dtype=np.float64, **kw)
    params, state, out_shape = _init64(layer, in_shape)
    if "b" in params:  # non-zero bias, so it is tested too
        params["b"] = random.normal(random.key(5), params["b"].shape, np.float64)
    x = random.normal(random.key(1), (2,) + in_shape, np.float64)
    y = layer.apply(params, state, x)
    assert y.dtype == np.float64 and y.shape == (2,) + out_shape
    s, pads, d = _pads2d(in_shape, kw)
    ref = naive_conv2d(x, params["w"], params.get("b"), s, pads, d)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)
    y_t, _, _ = layer.vjp(params, state, x)
    np.testing.assert_array_equal(y_t, y)


def test_same_padding_puts_the_extra_cell_at_the_end():
    # width 4, kernel 2: total pad 1 -> (0, 1).  A kernel [1, 10] shows which side.
    layer = conv1d(1, 2, padding="same", use_bias=False, dtype=np.float64)
    params = {"w": np.array([1.0, 10.0]).reshape(2, 1, 1)}
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1)
    y = layer.apply(params, {}, x)
    np.testing.assert_array_equal(y[0, :, 0], [21.0, 32.0, 43.0, 4.0])
    # stride 2 on width 5: ceil(5/2) = 3 outputs.
    _, _, out = conv2d(1, 3, stride=2, padding="same").init(random.key(0), (5, 6, 1))
    assert out == (3, 3, 1)


def test_conv1d_hand_computed():
    # y[t] = sum_j w[j] x[t + 2j] (dilation 2), plus bias.
    layer = conv1d(1, 2, dilation=2, dtype=np.float64)
    params = {"w": np.array([2.0, -1.0]).reshape(2, 1, 1), "b": np.array([0.5])}
    x = np.arange(6.0).reshape(1, 6, 1)
    y = layer.apply(params, {}, x)
    np.testing.assert_array_equal(y[0, :, 0], [2 * t - (t + 2) + 0.5 for t in range(4)])


CONV1D_CASES = [
    ((7, 1), dict(features=2, kernel_size=3)),
    ((8, 3), dict(features=4, kernel_size=3, padding="same", stride=2)),
    ((9, 2), dict(features=3, kernel_size=2, dilation=3, padding=[(2, 1)])),
    ((6, 2), dict(features=2, kernel_size=4, padding=(0, 2), use_bias=False)),
    ((10, 2), dict(features=2, kernel_size=3, dilation=2, stride=3, padding="same")),
]


@pytest.mark.parametrize("in_shape,kw", CONV1D_CASES)
def test_conv1d_check_layer_and_matches_conv2d(in_shape, kw):
    assert check_layer(conv1d(**kw), in_shape).max_error < 1e-6
    layer = conv1d(dtype=np.float64, **kw)
    params, state, out_shape = _init64(layer, in_shape)
    x = random.normal(random.key(1), (3,) + in_shape, np.float64)
    y = layer.apply(params, state, x)
    assert y.shape == (3,) + out_shape
    # Reference: the 2-D naive loop on a unit height.
    k = kw["kernel_size"]
    p = kw.get("padding", "valid")
    if p == "same":
        pad = _same_pads(in_shape[0], (k - 1) * kw.get("dilation", 1) + 1, kw.get("stride", 1))
    elif p == "valid":
        pad = (0, 0)
    else:
        pad = tuple(p[0]) if isinstance(p[0], tuple) else tuple(p)
    ref = naive_conv2d(x[:, None], params["w"][None], params.get("b"),
                       (1, kw.get("stride", 1)), ((0, 0), pad), (1, kw.get("dilation", 1)))
    np.testing.assert_allclose(y, ref[:, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("in_shape,kw", [
    ((5, 6, 2), dict(features=3, kernel_size=(3, 2), stride=(2, 1), padding="same",
                     dilation=(1, 2))),
    # 3x3 "same", stride 1: the centre offset is multiplied straight into dx
    ((5, 6, 2), dict(features=3, kernel_size=3, padding="same")),
    # output larger than the input: no offset maps outputs one-to-one onto inputs
    ((4, 5, 2), dict(features=3, kernel_size=3, padding=2)),
    ((6, 5, 3), dict(features=2, kernel_size=2, padding=[(1, 0), (2, 1)], use_bias=False)),
])
def test_naive_input_gradient_reference(in_shape, kw):
    """dx, dW and db against the adjoint computed by loops (independent of check_vjp)."""
    layer = conv2d(dtype=np.float64, **kw)
    params, state, out_shape = _init64(layer, in_shape)
    if "b" in params:
        params["b"] = random.normal(random.key(5), params["b"].shape, np.float64)
    h, w, _ = in_shape
    x = random.normal(random.key(1), (2,) + in_shape, np.float64)
    _, _, pb = layer.vjp(params, state, x)
    dy = random.normal(random.key(2), (2,) + out_shape, np.float64)
    dparams, dx = pb(dy)
    s, pads, d = _pads2d(in_shape, kw)
    kh, kw_ = params["w"].shape[:2]
    # dx[n, ih, iw, c] = sum over (r, s, i, j) with r*sh - pt + i*dh = ih ... of dy * w
    ref_dx = np.zeros_like(x)
    ref_dw = np.zeros_like(params["w"])
    for n in range(2):
        for r in range(out_shape[0]):
            for q in range(out_shape[1]):
                for i in range(kh):
                    for j in range(kw_):
                        ih, iw = r * s[0] - pads[0][0] + i * d[0], q * s[1] - pads[1][0] + j * d[1]
                        if 0 <= ih < h and 0 <= iw < w:
                            ref_dx[n, ih, iw] += params["w"][i, j] @ dy[n, r, q]
                            ref_dw[i, j] += np.outer(x[n, ih, iw], dy[n, r, q])
    np.testing.assert_allclose(dx, ref_dx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dparams["w"], ref_dw, rtol=0, atol=1e-12)
    assert dparams["w"].shape == params["w"].shape
    if "b" in params:  # db comes out of the dW matmul (the ones column of cols)
        np.testing.assert_allclose(dparams["b"], dy.sum(axis=(0, 1, 2)), rtol=0, atol=1e-12)
        assert dparams["b"].shape == params["b"].shape
        assert not np.shares_memory(dparams["b"], dparams["w"])
    else:
        assert set(dparams) == {"w"}


def test_need_dx_false_skips_dx_only():
    layer = conv2d(4, 3, padding="same")
    params, state, _ = layer.init(random.key(0), (6, 6, 2))
    x = random.normal(random.key(1), (2, 6, 6, 2))
    dy = random.normal(random.key(2), (2, 6, 6, 4))
    g1, dx1 = layer.vjp(params, state, x)[2](dy)
    g2, dx2 = layer.vjp(params, state, x, need_dx=False)[2](dy)
    assert dx1 is not None and dx1.shape == x.shape and dx2 is None
    np.testing.assert_array_equal(g1["w"], g2["w"])
    np.testing.assert_array_equal(g1["b"], g2["b"])


def test_default_init_is_he_normal_and_float32():
    params, _, out = conv2d(64, 3).init(random.key(0), (10, 10, 16))
    assert out == (8, 8, 64)
    assert params["w"].shape == (3, 3, 16, 64) and params["w"].dtype == np.float32
    assert params["b"].shape == (64,) and not params["b"].any()
    assert abs(params["w"].std() / math.sqrt(2 / (9 * 16)) - 1) < 0.05
    assert "b" not in conv1d(3, 2, use_bias=False).init(random.key(0), (5, 2))[0]


def test_float64_end_to_end():
    layer = conv2d(2, 3, padding="same", dtype=np.float64)
    params, state, _ = layer.init(random.key(0), (4, 4, 1))
    assert params["w"].dtype == np.float64
    x = random.normal(random.key(1), (2, 4, 4, 1), np.float64)
    y, _, pb = layer.vjp(params, state, x)
    g, dx = pb(np.ones_like(y))
    assert y.dtype == dx.dtype == g["w"].dtype == g["b"].dtype == np.float64


# --- errors ------------------------------------------------------------------------

def _raises(fn, *needles):
    with pytest.raises(LayerError) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def test_errors():
    layer = conv2d(4, 3)
    params, state, _ = layer.init(random.key(0), (28, 28, 3))
    x = np.zeros((8, 28, 28, 3), np.float32)
    # wrong channel count (at apply), named like the contract's example
    model = serial(conv2d(4, 3), relu())
    mp, ms, _ = model.init(random.key(0), (28, 28, 3))
    _raises(lambda: model.apply(mp, ms, np.zeros((8, 28, 28, 1), np.float32)),
            "layer 'conv2d_0' (conv2d)", "(batch, ?, ?, 3)", "(8, 28, 28, 1)")
    # wrong rank
    _raises(lambda: layer.apply(params, state, np.zeros((8, 28, 3), np.float32)),
            "conv2d", "(batch, ?, ?, 3)", "(8, 28, 3)")
    _raises(lambda: conv1d(2, 3).init(random.key(0), (5, 5, 2)), "conv1d", "(5, 5, 2)")
    # kernel larger than the (padded) input, at init and at apply
    _raises(lambda: conv2d(2, 5).init(random.key(0), (4, 6, 1)), "conv2d", "(5, 5)", "(4, 6)")
    _raises(lambda: layer.vjp(params, state, np.zeros((2, 2, 9, 3), np.float32)),
            "conv2d", "(3, 3)", "(2, 9)")
    _raises(lambda: conv1d(2, 3, dilation=3).init(random.key(0), (6, 1)), "conv1d", "(7,)",
            "(6,)")
    # non-float input, dtype mismatch
    _raises(lambda: layer.apply(params, state, x.astype(np.int32)), "conv2d", "int32")
    _raises(lambda: layer.vjp(params, state, x.astype(np.float64)), "conv2d", "float64",
            "float32")
    # bad padding / kernel specs, at construction
    for bad in ("full", -1, [(1, 1)], [(1, 1), (1, -1)], [(1, 2, 3), (0, 0)], ["same"]):
        _raises(lambda: conv2d(2, 3, padding=bad), "conv2d", "padding")
    _raises(lambda: conv1d(2, 3, padding=[(1, 1), (1, 1)]), "conv1d", "padding")
    _raises(lambda: conv2d(2, (3, 3, 3)), "conv2d", "kernel_size")
    _raises(lambda: conv2d(2, 3, stride=0), "conv2d", "stride")
    with pytest.raises(TypeError, match="layer 'conv2d': kernel_size must be an int"):
        conv2d(2, 2.5)
    _raises(lambda: conv1d(2, "3"), "conv1d", "kernel_size")
    _raises(lambda: conv2d(0, 3), "conv2d", "features")


@pytest.mark.parametrize("c", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("kernel, dilation, strides, out_hw", [
    ((3, 3), (1, 1), (1, 1), (4, 5)),
    ((2, 3), (2, 1), (1, 2), (3, 2)),
    ((1, 4), (1, 1), (2, 1), (2, 2)),
])
def test_im2col_layouts_give_the_same_columns(monkeypatch, c, kernel, dilation, strides, out_hw):
    import fundl.layers.conv as conv
    xp = random.normal(random.key(2), (2, 7, 8, c), np.float32)
    for ones in (False, True):
        monkeypatch.setattr(conv, "FEW_CHANNELS", 0)
        rows = conv._im2col(xp, kernel, dilation, out_hw, strides, ones_column=ones)
        monkeypatch.setattr(conv, "FEW_CHANNELS", 1000)
        transposed = conv._im2col(xp, kernel, dilation, out_hw, strides, ones_column=ones)
        assert rows.flags.c_contiguous and transposed.flags.f_contiguous
        width = kernel[0] * kernel[1] * c + ones
        assert rows.shape == transposed.shape == (2 * out_hw[0] * out_hw[1], width)
        np.testing.assert_array_equal(rows, transposed)
        # one cell by hand: example 1, output (1, 1), kernel offset (last row, col 0), channel 0
        i, j = kernel[0] - 1, 0
        row = out_hw[0] * out_hw[1] + out_hw[1] + 1
        want = xp[1, strides[0] + i * dilation[0], strides[1] + j * dilation[1], 0]
        assert rows[row, (i * kernel[1] + j) * c] == want


# --- groups (grouped and depthwise convolution) -----------------------------------

def naive_grouped_conv2d(x, w, b, groups, stride, pads, dilation):
    """Each group is an ungrouped naive conv on its channel slice."""
    c_g, f_g = x.shape[-1] // groups, w.shape[-1] // groups
    outs = [naive_conv2d(x[..., g * c_g:(g + 1) * c_g], w[..., g * f_g:(g + 1) * f_g],
                         None if b is None else b[g * f_g:(g + 1) * f_g], stride, pads, dilation)
            for g in range(groups)]
    return np.concatenate(outs, axis=-1)


GROUPED_CASES = [
    ((6, 7, 4), dict(features=6, kernel_size=3, groups=2, padding=1, stride=2)),
    ((5, 5, 3), dict(features=6, kernel_size=(2, 3), groups=3, dilation=(2, 1))),
    ((8, 7, 8), dict(features=8, kernel_size=3, groups=8, padding="same", use_bias=False)),
    ((5, 6, 4), dict(features=8, kernel_size=3, groups=4, stride=(1, 2), padding=[(0, 1), (2, 0)])),
    ((4, 5, 6), dict(features=3, kernel_size=2, groups=3)),
]


@pytest.mark.parametrize("in_shape,kw", GROUPED_CASES)
def test_grouped_conv2d_check_layer_and_naive(in_shape, kw):
    assert check_layer(conv2d(**kw), in_shape).max_error < 1e-6
    layer = conv2d(dtype=np.float64, **kw)
    params, state, out_shape = _init64(layer, in_shape)
    assert params["w"].shape == (*_pads2d_kernel(kw), in_shape[-1] // kw["groups"], kw["features"])
    if "b" in params:
        params["b"] = random.normal(random.key(5), params["b"].shape, np.float64)
    x = random.normal(random.key(1), (2,) + in_shape, np.float64)
    y = layer.apply(params, state, x)
    assert y.shape == (2,) + out_shape
    s, pads, d = _pads2d(in_shape, kw)
    ref = naive_grouped_conv2d(x, params["w"], params.get("b"), kw["groups"], s, pads, d)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)


def _pads2d_kernel(kw):
    k = kw["kernel_size"]
    return (k, k) if isinstance(k, int) else k


def test_grouped_conv1d_check_layer():
    assert check_layer(conv1d(4, 3, groups=2, padding="same"), (7, 4)).max_error < 1e-6
    assert check_layer(conv1d(6, 2, groups=3, stride=2, dilation=2), (9, 3)).max_error < 1e-6


def test_groups_1_is_the_plain_path():
    a, b = conv2d(3, 3, padding="same"), conv2d(3, 3, padding="same", groups=1)
    params, state, _ = a.init(random.key(0), (5, 5, 2))
    x = random.normal(random.key(1), (2, 5, 5, 2))
    np.testing.assert_array_equal(a.apply(params, state, x), b.apply(params, state, x))


@pytest.mark.parametrize("in_shape,kw", GROUPED_CASES + [
    ((9, 3), dict(features=6, kernel_size=3, groups=3, stride=2, padding=1, dilation=2))])
def test_grouped_conv_matches_torch(in_shape, kw):
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    d = len(in_shape) - 1
    layer = (conv2d if d == 2 else conv1d)(dtype=np.float64, **kw)
    params, state, out_shape = _init64(layer, in_shape)
    if "b" in params:
        params["b"] = random.normal(random.key(5), params["b"].shape, np.float64)
    x = random.normal(random.key(1), (2,) + in_shape, np.float64)
    y, _, pb = layer.vjp(params, state, x)
    dy = random.normal(random.key(2), y.shape, np.float64)
    g, dx = pb(dy)
    to_first = (0, d + 1) + tuple(range(1, d + 1))
    to_last = (0,) + tuple(range(2, d + 2)) + (1,)
    tx = torch.tensor(x.transpose(to_first).copy(), requires_grad=True)
    w_perm = (3, 2, 0, 1) if d == 2 else (2, 1, 0)
    tw = torch.tensor(params["w"].transpose(w_perm).copy(), requires_grad=True)
    tb = torch.tensor(params["b"], requires_grad=True) if "b" in params else None
    s, pads, dil = _pads2d(in_shape + ((1,) if d == 1 else ()), kw) if d == 2 else (
        kw.get("stride", 1), None, kw.get("dilation", 1))
    # explicit (lo, hi) pads applied to the input, torch's own padding 0
    if d == 2:
        (pt, pb_), (pl, pr) = pads
        txp = torch.nn.functional.pad(tx, (pl, pr, pt, pb_))
        ty = torch.nn.functional.conv2d(txp, tw, tb, stride=s, dilation=dil, groups=kw["groups"])
    else:
        p = kw["padding"]
        ty = torch.nn.functional.conv1d(tx, tw, tb, stride=s, padding=p, dilation=dil,
                                        groups=kw["groups"])
    ty.backward(torch.tensor(dy.transpose(to_first).copy()))
    np.testing.assert_allclose(ty.detach().numpy().transpose(to_last), y, rtol=0, atol=1e-10)
    np.testing.assert_allclose(tx.grad.numpy().transpose(to_last), dx, rtol=0, atol=1e-10)
    np.testing.assert_allclose(tw.grad.numpy().transpose(np.argsort(w_perm)), g["w"], atol=1e-10)
    if tb is not None:
        np.testing.assert_allclose(tb.grad.numpy(), g["b"], rtol=0, atol=1e-10)


def test_groups_errors():
    _raises(lambda: conv2d(4, 3, groups=0), "conv2d", "groups")
    with pytest.raises(TypeError, match="layer 'conv2d': groups must be an int"):
        conv2d(4, 3, groups=1.5)
    _raises(lambda: conv2d(5, 3, groups=2), "conv2d", "features (5)", "groups (2)")
    _raises(lambda: conv2d(4, 3, groups=2).init(random.key(0), (5, 5, 3)), "conv2d",
            "input channels (3)", "groups (2)")
    layer = conv2d(4, 3, groups=2)
    params, state, _ = layer.init(random.key(0), (5, 5, 4))
    _raises(lambda: layer.apply(params, state, np.zeros((2, 5, 5, 2), np.float32)),
            "conv2d", "(batch, ?, ?, 4)", "(2, 5, 5, 2)")
    _raises(lambda: conv1d(4, 3, groups=4).init(random.key(0), (5, 2)), "conv1d", "groups")
