import math

import numpy as np
import pytest

from fundl import random
from fundl import LayerError
from fundl.layers.activations import (elu, gelu, leaky_relu, log_softmax, relu,
                                      sigmoid, silu, softmax, softplus, tanh)
from fundl.testing import check_layer, every_float32

ELEMENTWISE = [
    ("relu", relu(), lambda x: max(x, 0.0)),
    ("leaky_relu", leaky_relu(), lambda x: x if x > 0 else 0.01 * x),
    ("leaky_relu_0.2", leaky_relu(0.2), lambda x: x if x > 0 else 0.2 * x),
    ("leaky_relu_neg", leaky_relu(-0.5), lambda x: x if x > 0 else -0.5 * x),
    ("leaky_relu_steep", leaky_relu(2.0), lambda x: x if x > 0 else 2.0 * x),
    ("elu", elu(), lambda x: x if x > 0 else math.expm1(x)),
    ("elu_2", elu(2.0), lambda x: x if x > 0 else 2.0 * math.expm1(x)),
    ("elu_neg", elu(-0.5), lambda x: x if x > 0 else -0.5 * math.expm1(x)),
    ("gelu", gelu(), lambda x: 0.5 * x * math.erfc(-x / math.sqrt(2))),
    ("gelu_tanh", gelu(approximate=True),
     lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    ("silu", silu(), lambda x: x / (1 + math.exp(-x))),
    ("softplus", softplus(), lambda x: math.log1p(math.exp(x))),
    ("sigmoid", sigmoid(), lambda x: 1 / (1 + math.exp(-x))),
    ("tanh", tanh(), math.tanh),
]
POINTS = np.array([-7.5, -3.0, -1.0, -0.25, 0.0, 1e-3, 0.5, 1.0, 2.5, 6.0])


def _run(layer, x):
    return layer.apply({}, {}, x)


def _grad(layer, x):
    y, _, pb = layer.vjp({}, {}, x)
    return pb(np.ones_like(y))[1]


@pytest.mark.parametrize("name,layer,ref", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_elementwise_values_and_gradients(name, layer, ref):
    x = POINTS.reshape(2, 5).copy()
    y = _run(layer, x)
    want = np.array([ref(v) for v in POINTS]).reshape(2, 5)
    # math.erfc(x / sqrt2) itself is off by ~7e-15 relative at x = -7.5 (rounding of x/sqrt2)
    np.testing.assert_allclose(y, want, rtol=1e-14 if name == "gelu" else 2e-15, atol=1e-300)
    # derivative against central differences of the scalar reference (away from kinks)
    g = _grad(layer, x).reshape(-1)
    for v, gv in zip(POINTS, g):
        if v == 0.0 and name.startswith(("relu", "leaky", "elu")):
            continue
        h = 1e-6
        num = (ref(v + h) - ref(v - h)) / (2 * h)
        assert abs(gv - num) <= 1e-8 * max(1.0, abs(num)), (v, gv, num)


@pytest.mark.parametrize("name,layer,ref", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4)])
def test_elementwise_check_layer(name, layer, ref, shape):
    result = check_layer(layer, shape)
    assert result.max_error < 1e-6


@pytest.mark.parametrize("name,layer,ref", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_float32_preserved_and_integer_rejected(name, layer, ref):
    x = np.linspace(-20, 20, 12, dtype=np.float32).reshape(3, 4)
    y, _, pb = layer.vjp({}, {}, x)
    assert y.dtype == np.float32 and _run(layer, x).dtype == np.float32
    assert pb(np.ones_like(y))[1].dtype == np.float32
    with pytest.raises(LayerError, match="floating-point"):
        _run(layer, np.arange(6).reshape(2, 3))


def test_relu_gradient_is_mask():
    x = np.array([[-1.0, 0.0, 2.0, 3.5]], np.float32)
    dy = np.array([[10.0, 20.0, 30.0, 40.0]], np.float32)
    y, _, pb = relu().vjp({}, {}, x)
    np.testing.assert_array_equal(y, [[0, 0, 2, 3.5]])
    np.testing.assert_array_equal(pb(dy)[1], [[0, 0, 30, 40]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_dtype_and_nan(dtype):
    x = np.array([[-1.0, 0.0, np.nan, 2.0, np.inf]], dtype)
    y, _, pb = relu().vjp({}, {}, x)
    dx = pb(np.array([[1.0, 2.0, 3.0, 4.0, 5.0]], dtype))[1]
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 0.0, 4.0, 5.0]])  # NaN input: no gradient


@pytest.mark.parametrize("layer,slope", [(relu(), 0.0), (leaky_relu(0.01), 0.01),
                                         (leaky_relu(0.3), 0.3), (leaky_relu(-0.5), -0.5)])
def test_piecewise_linear_gradients_are_exact(layer, slope):
    x = np.array([[-3.0, -1e-3, 0.0, 1e-3, 7.0]], np.float32)
    g = _grad(layer, x)
    want = np.array([[slope, slope, slope if slope else 0.0, 1.0, 1.0]], np.float32)
    np.testing.assert_array_equal(g, want)


def test_elu_gradient_formula():
    x = np.array([[-2.0, -0.5, 0.5, 3.0]])
    np.testing.assert_allclose(_grad(elu(1.5), x), [[1.5 * math.exp(-2.0), 1.5 * math.exp(-0.5),
                                                     1.0, 1.0]], rtol=1e-15)


def test_gelu_exact_points():
    # gelu(1) = Phi(1) = 0.5 (1 + erf(1/sqrt 2)) = 0.8413447460685429...
    x = np.array([[1.0, -1.0, -10.0, 40.0, -40.0]])
    y = _run(gelu(), x)
    assert y[0, 0] == pytest.approx(0.8413447460685429, rel=1e-15)
    assert y[0, 1] == pytest.approx(-0.15865525393145707, rel=1e-14)
    # deep negative tail keeps relative accuracy: -10 * Phi(-10) (30-digit mpmath value)
    assert y[0, 2] == pytest.approx(-7.619853024160526066e-23, rel=1e-15)
    y75 = _run(gelu(), np.array([[-7.5]]))[0, 0]
    assert y75 == pytest.approx(-2.3931687546831721708e-13, rel=1e-15)
    assert y[0, 3] == 40.0 and y[0, 4] == 0.0
    g = _grad(gelu(), x[:, :2])
    phi = math.exp(-0.5) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(g[0], [0.8413447460685429 + phi, 0.15865525393145707 - phi],
                               rtol=1e-14)


def test_softplus_and_sigmoid_extremes_are_exact():
    x = np.array([[-1e4, -800.0, 0.0, 800.0, 1e4]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        sp = _run(softplus(), x)
        sg = _run(sigmoid(), x)
        gsp = _grad(softplus(), x)
    np.testing.assert_array_equal(sp, np.array([[0.0, 0.0, math.log(2), 800.0, 1e4]], np.float32))
    np.testing.assert_array_equal(sg, [[0.0, 0.0, 0.5, 1.0, 1.0]])
    np.testing.assert_array_equal(gsp, [[0.0, 0.0, 0.5, 1.0, 1.0]])
    assert sp.dtype == sg.dtype == gsp.dtype == np.float32
    # softplus'(x) = sigmoid(x) recovered from y alone stays accurate for small y
    g = _grad(softplus(), np.array([[-30.0, -5.0, 3.0]]))
    np.testing.assert_allclose(g, [[1 / (1 + math.exp(30)), 1 / (1 + math.exp(5)),
                                    1 / (1 + math.exp(-3))]], rtol=1e-14)


def _softmax_ref(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_softmax_values_and_stability():
    x = random.normal(random.key(3), (4, 6), np.float64)
    y = _run(softmax(), x)
    direct = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(y, direct, rtol=1e-14)
    np.testing.assert_allclose(_run(log_softmax(), x), np.log(direct), rtol=1e-13, atol=1e-15)
    big = np.array([[1e4, -1e4, 0.0], [1e4, 1e4, -1e4]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ys = _run(softmax(), big)
        ls = _run(log_softmax(), big)
    assert ys.dtype == ls.dtype == np.float32
    np.testing.assert_allclose(ys.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(ys, [[1, 0, 0], [0.5, 0.5, 0]])
    np.testing.assert_allclose(ls, [[0, -2e4, -1e4], [-math.log(2), -math.log(2), -2e4 - math.log(2)]],
                               rtol=1e-6)


def test_softmax_jacobian_against_explicit_matrix():
    x = random.normal(random.key(4), (2, 5), np.float64)
    dy = random.normal(random.key(5), (2, 5), np.float64)
    y, _, pb = softmax().vjp({}, {}, x)
    _, _, lpb = log_softmax().vjp({}, {}, x)
    dx, ldx = pb(dy)[1], lpb(dy)[1]
    for i in range(2):
        s = y[i]
        jac = np.diag(s) - np.outer(s, s)           # d softmax_j / d x_k
        np.testing.assert_allclose(dx[i], jac.T @ dy[i], rtol=1e-12, atol=1e-15)
        ljac = np.eye(5) - s[None, :]               # d log_softmax_j / d x_k
        np.testing.assert_allclose(ldx[i], ljac.T @ dy[i], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("layer_fn", [softmax, log_softmax])
@pytest.mark.parametrize("shape,axis", [((6,), -1), ((3, 4), -1), ((3, 4), 1), ((2, 3, 4), -2)])
def test_softmax_check_layer(layer_fn, shape, axis):
    assert check_layer(layer_fn(axis), shape).max_error < 1e-6


def test_softmax_other_axis_and_bad_axis():
    x = random.normal(random.key(6), (2, 3, 4), np.float64)
    y = _run(softmax(axis=1), x)
    np.testing.assert_allclose(y, np.moveaxis(_softmax_ref(np.moveaxis(x, 1, -1)), -1, 1),
                               rtol=1e-14)
    with pytest.raises(LayerError, match="batch"):
        softmax(axis=0).init(random.key(0), (4,))
    with pytest.raises(LayerError, match="axis 2"):
        _run(softmax(axis=2), np.zeros((3, 4)))


def test_gelu_float32_accuracy_against_float64():
    # float32 has its own path (fundl.special.normal_cdf_f32's parts); the float64 one is
    # the reference.  A dense grid of [-14, 8] plus every float32 near the error peaks:
    # |x| ~ 0.0047, the last normal y (x ~ -13.1) and g (x ~ -13.33, where exp(-x^2/2)
    # is already subnormal).  The array is large enough to run in blocks.
    near0 = every_float32(0.0047, 0.00472)
    x = np.concatenate([np.linspace(-14, 8, 1_000_001, dtype=np.float32), near0, -near0,
                        -every_float32(13.08, 13.1), -every_float32(13.32, 13.34)])
    layer = gelu()
    y, _, pb = layer.vjp({}, {}, x)
    g = pb(np.ones_like(y))[1]
    assert y.dtype == g.dtype == np.float32
    np.testing.assert_array_equal(_run(layer, x), y)
    x64 = x.astype(np.float64)
    y64, _, pb64 = layer.vjp({}, {}, x64)
    g64 = pb64(np.ones_like(y64))[1]
    tiny = np.finfo(np.float32).tiny
    m = np.abs(y64) >= tiny
    rel_y = np.abs(y[m] - y64[m]) / np.abs(y64[m])
    assert rel_y.max() < 4.2e-7, (rel_y.max(), x[m][rel_y.argmax()])  # 3.7e-7; all float32: 4.0e-7
    assert np.all(np.abs(y[~m]) <= tiny)
    # g = Phi + x phi cancels near its zero (x = -0.75): its error is measured against
    # |Phi| + |x phi|, the size of the terms; away from the zero that is its relative error
    phi_cdf = np.where(x64 != 0, y64 / np.where(x64 != 0, x64, 1), 0.5)
    x_phi = x64 * np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
    m = np.abs(g64) >= tiny
    err_g = np.abs(g[m] - g64[m]) / (phi_cdf[m] + np.abs(x_phi[m]))
    assert err_g.max() < 5e-7, (err_g.max(), x[m][err_g.argmax()])           # 4.7e-7
    far = m & ((x64 > -0.2) | (x64 < -1.6))
    assert (np.abs(g[far] - g64[far]) / np.abs(g64[far])).max() < 5e-7


def test_gelu_float32_limits_and_special_values():
    x = np.array([[0.0, -0.0, np.inf, -np.inf, 6.0, 40.0, 1e30, -40.0, -1e30, 3e38]],
                 np.float32)
    layer = gelu()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, _, pb = layer.vjp({}, {}, x)
        g = pb(np.ones_like(y))[1]
    want_y = np.array([[0.0, 0.0, np.inf, 0.0, 6.0, 40.0, 1e30, 0.0, 0.0, 3e38]], np.float32)
    np.testing.assert_array_equal(y, want_y)                            # y == x from x = 6 on
    np.testing.assert_array_equal(g[0, 2:], [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(g[0, :2], [0.5, 0.5])                 # Phi(0), no x phi
    y_nan, _, pb_nan = layer.vjp({}, {}, np.array([[np.nan, 1.0]], np.float32))
    assert np.isnan(y_nan[0, 0]) and np.isnan(pb_nan(np.ones((1, 2), np.float32))[1][0, 0])
    # the negative tail keeps its relative accuracy: -10 * Phi(-10) = -7.6198530241605e-23
    tail = _run(layer, np.array([[-10.0, -5.0]], np.float32))
    np.testing.assert_allclose(tail, [[-7.619853024160526e-23, -1.4332578593959695e-06]], rtol=4e-7)


def test_gelu_float16_goes_through_float32():
    x16 = np.linspace(-12, 8, 4001).astype(np.float16)
    y, _, pb = gelu().vjp({}, {}, x16)
    g = pb(np.ones_like(y))[1]
    assert y.dtype == g.dtype == np.float16
    y32, _, pb32 = gelu().vjp({}, {}, x16.astype(np.float32))
    np.testing.assert_array_equal(y, y32.astype(np.float16))
    np.testing.assert_array_equal(g, pb32(np.ones_like(y32))[1].astype(np.float16))
