"""conv_transpose1d / conv_transpose2d: gradient checks, naive-loop reference, torch, errors."""

import numpy as np
import pytest

from fundl import LayerError, random
from fundl.layers.conv_transpose import conv_transpose1d, conv_transpose2d
from fundl.testing import check_layer


def naive_conv_transpose2d(x, w, b, stride, pad, dilation, output_padding):
    """Scatter each input cell into the output by loops (torch's definition)."""
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    (sh, sw), (ph, pw), (dh, dw), (oph, opw) = stride, pad, dilation, output_padding
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    y = np.zeros((n, oh, ow, f))
    for b_ in range(n):
        for r in range(h):
            for q in range(wd):
                for i in range(kh):
                    for j in range(kw):
                        o, p = r * sh - ph + i * dh, q * sw - pw + j * dw
                        if 0 <= o < oh and 0 <= p < ow:
                            y[b_, o, p] += x[b_, r, q] @ w[i, j]
    if b is not None:
        y += b
    return y


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


CASES = [
    ((4, 5, 3), dict(features=2, kernel_size=3)),
    ((3, 4, 2), dict(features=3, kernel_size=3, stride=2, padding=1, output_padding=1)),
    ((5, 3, 2), dict(features=2, kernel_size=(2, 3), stride=(2, 3), padding=(0, 1),
                     dilation=(2, 1), output_padding=(1, 2))),
    ((4, 4, 5), dict(features=3, kernel_size=4, stride=2, padding="same")),  # -> padding 1
    ((3, 3, 2), dict(features=2, kernel_size=3, padding=2, use_bias=False)),  # 1x1 output
    ((2, 3, 1), dict(features=2, kernel_size=2, stride=3, dilation=2, output_padding=1)),
    ((3, 5, 2), dict(features=1, kernel_size=3, padding="same", dilation=2)),  # -> padding 2
]


def _torch_padding(kw):
    p = kw.get("padding", 0)
    if p == "same":
        k, s, d = (_pair(kw.get(a, dflt)) for a, dflt in
                   (("kernel_size", 1), ("stride", 1), ("dilation", 1)))
        return tuple((q * (kk - 1) + 1 - ss) // 2 for kk, ss, q in zip(k, s, d))
    return _pair(p)


def _init(layer, in_shape):
    params, state, out_shape = layer.init(random.key(0), in_shape)
    if "b" in params:
        params["b"] = random.normal(random.key(5), params["b"].shape, np.float64)
    return params, state, out_shape


@pytest.mark.parametrize("in_shape,kw", CASES)
def test_check_layer(in_shape, kw):
    assert check_layer(conv_transpose2d(**kw), in_shape).max_error < 1e-6


@pytest.mark.parametrize("in_shape,kw", CASES)
def test_matches_naive_loops_and_size_formula(in_shape, kw):
    layer = conv_transpose2d(dtype=np.float64, **kw)
    params, state, out_shape = _init(layer, in_shape)
    x = random.normal(random.key(1), (2,) + in_shape, np.float64)
    y = layer.apply(params, state, x)
    ref = naive_conv_transpose2d(x, params["w"], params.get("b"), _pair(kw.get("stride", 1)),
                                 _torch_padding(kw), _pair(kw.get("dilation", 1)),
                                 _pair(kw.get("output_padding", 0)))
    assert y.shape == ref.shape == (2,) + out_shape and y.dtype == np.float64
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)
    if kw.get("padding") == "same":
        assert out_shape[:2] == tuple(n * s for n, s in zip(in_shape, _pair(kw.get("stride", 1))))


@pytest.mark.parametrize("in_shape,kw", CASES)
def test_matches_torch(in_shape, kw):
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    layer = conv_transpose2d(dtype=np.float64, **kw)
    params, state, _ = _init(layer, in_shape)
    x = random.normal(random.key(1), (2,) + in_shape, np.float64)
    y, _, pb = layer.vjp(params, state, x)
    dy = random.normal(random.key(2), y.shape, np.float64)
    g, dx = pb(dy)
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    tw = torch.tensor(params["w"].transpose(2, 3, 0, 1).copy(), requires_grad=True)
    tb = torch.tensor(params["b"], requires_grad=True) if "b" in params else None
    ty = torch.nn.functional.conv_transpose2d(
        tx, tw, tb, stride=kw.get("stride", 1), padding=_torch_padding(kw),
        output_padding=kw.get("output_padding", 0), dilation=kw.get("dilation", 1))
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(ty.detach().numpy().transpose(0, 2, 3, 1), y, rtol=0, atol=1e-10)
    np.testing.assert_allclose(tx.grad.numpy().transpose(0, 2, 3, 1), dx, rtol=0, atol=1e-10)
    np.testing.assert_allclose(tw.grad.numpy().transpose(2, 3, 0, 1), g["w"], rtol=0, atol=1e-10)
    if tb is not None:
        np.testing.assert_allclose(tb.grad.numpy(), g["b"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("in_shape,kw", [
    ((7, 3), dict(features=4, kernel_size=3, stride=2, padding=1, output_padding=1)),
    ((5, 2), dict(features=2, kernel_size=2, dilation=3, use_bias=False)),
    ((6, 1), dict(features=3, kernel_size=4, stride=2, padding="same")),
])
def test_conv_transpose1d_check_layer_and_torch(in_shape, kw):
    assert check_layer(conv_transpose1d(**kw), in_shape).max_error < 1e-6
    layer = conv_transpose1d(dtype=np.float64, **kw)
    params, state, out_shape = _init(layer, in_shape)
    x = random.normal(random.key(1), (2,) + in_shape, np.float64)
    y = layer.apply(params, state, x)
    assert y.shape == (2,) + out_shape
    ref = naive_conv_transpose2d(x[:, None], params["w"][None], params.get("b"),
                                 (1, kw.get("stride", 1)), (0, _torch_padding(kw)[0]),
                                 (1, kw.get("dilation", 1)), (0, kw.get("output_padding", 0)))
    np.testing.assert_allclose(y, ref[:, 0], rtol=0, atol=1e-12)
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    ty = torch.nn.functional.conv_transpose1d(
        torch.tensor(x.transpose(0, 2, 1).copy()),
        torch.tensor(params["w"].transpose(1, 2, 0).copy()),
        torch.tensor(params["b"]) if "b" in params else None, stride=kw.get("stride", 1),
        padding=_torch_padding(kw)[0], output_padding=kw.get("output_padding", 0),
        dilation=kw.get("dilation", 1))
    np.testing.assert_allclose(ty.numpy().transpose(0, 2, 1), y, rtol=0, atol=1e-10)


def test_need_dx_false_and_float32_default():
    layer = conv_transpose2d(4, 3, stride=2)
    params, state, out = layer.init(random.key(0), (5, 5, 2))
    assert out == (11, 11, 4) and params["w"].shape == (3, 3, 2, 4)
    assert params["w"].dtype == np.float32
    x = random.normal(random.key(1), (2, 5, 5, 2))
    dy = random.normal(random.key(2), (2, 11, 11, 4))
    g1, dx1 = layer.vjp(params, state, x)[2](dy)
    g2, dx2 = layer.vjp(params, state, x, need_dx=False)[2](dy)
    assert dx1.shape == x.shape and dx1.dtype == np.float32 and dx2 is None
    np.testing.assert_array_equal(g1["w"], g2["w"])


def _raises(fn, *needles):
    with pytest.raises(LayerError) as info:
        fn()
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_errors():
    _raises(lambda: conv_transpose2d(2, 3, padding="same", stride=2), "conv_transpose2d", "same")
    _raises(lambda: conv_transpose2d(2, 3, padding=1, output_padding=1), "output_padding")
    _raises(lambda: conv_transpose2d(2, 3, stride=2, output_padding=2), "output_padding")
    _raises(lambda: conv_transpose2d(2, 3, padding=-1), "padding")
    _raises(lambda: conv_transpose2d(2, 3, padding="full"), "padding")
    _raises(lambda: conv_transpose2d(2, 3, padding=[(1, 1), (1, 1)]), "padding")
    _raises(lambda: conv_transpose2d(0, 3), "features")
    _raises(lambda: conv_transpose2d(2, (3, 3, 3)), "kernel_size")
    _raises(lambda: conv_transpose1d(2, 3, padding=(1, 1)), "conv_transpose1d", "padding")
    _raises(lambda: conv_transpose2d(2, 3, padding=3).init(random.key(0), (2, 2, 1)),
            "conv_transpose2d", "output size")
    layer = conv_transpose2d(2, 3)
    params, state, _ = layer.init(random.key(0), (4, 4, 3))
    _raises(lambda: layer.apply(params, state, np.zeros((2, 4, 4, 1), np.float32)),
            "conv_transpose2d", "(batch, ?, ?, 3)", "(2, 4, 4, 1)")
    _raises(lambda: layer.apply(params, state, np.zeros((2, 4, 4, 3), np.float64)), "float64")
    _raises(lambda: layer.apply(params, state, np.zeros((2, 4, 4, 3), np.int32)), "int32")
    _raises(lambda: conv_transpose1d(2, 3).init(random.key(0), (4, 4, 3)), "conv_transpose1d")
