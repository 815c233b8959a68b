"""upsample2d: gradient checks, hand-computed values, torch forward+VJP, errors."""

import numpy as np
import pytest

from fundl import LayerError, random
from fundl.layers.upsample import upsample2d
from fundl.testing import check_layer

CASES = [((3, 4, 2), 2), ((2, 3, 1), (3, 2)), ((1, 5, 2), (2, 1)), ((4, 1, 3), 3), ((1, 1, 2), 2)]


@pytest.mark.parametrize("in_shape,scale", CASES)
@pytest.mark.parametrize("method,align", [("nearest", False), ("bilinear", False),
                                          ("bilinear", True)])
def test_check_layer(in_shape, scale, method, align):
    layer = upsample2d(scale, method, align_corners=align)
    assert check_layer(layer, in_shape, batch=2).max_error < 1e-6


def test_hand_computed():
    x = np.array([0.0, 4.0]).reshape(1, 1, 2, 1)
    near = upsample2d((1, 2)).apply({}, {}, x)
    np.testing.assert_array_equal(near[0, 0, :, 0], [0, 0, 4, 4])
    bil = upsample2d((1, 2), "bilinear").apply({}, {}, x)     # src -0.25->0, 0.25, 0.75, 1.25->1
    np.testing.assert_allclose(bil[0, 0, :, 0], [0, 1, 3, 4], atol=1e-15)
    ac = upsample2d((1, 2), "bilinear", align_corners=True).apply({}, {}, x)  # src 0,1/3,2/3,1
    np.testing.assert_allclose(ac[0, 0, :, 0], [0, 4 / 3, 8 / 3, 4], atol=1e-15)


@pytest.mark.parametrize("in_shape,scale", CASES)
@pytest.mark.parametrize("method,align", [("nearest", None), ("bilinear", False),
                                          ("bilinear", True)])
def test_matches_torch(in_shape, scale, method, align):
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    layer = upsample2d(scale, method, align_corners=bool(align))
    x = random.normal(random.key(1), (2,) + in_shape, np.float64)
    y, _, pb = layer.vjp({}, {}, x)
    dy = random.normal(random.key(2), y.shape, np.float64)
    _, dx = pb(dy)
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    ty = torch.nn.functional.interpolate(tx, size=y.shape[1:3], mode=method, align_corners=align)
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(ty.detach().numpy().transpose(0, 2, 3, 1), y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tx.grad.numpy().transpose(0, 2, 3, 1), dx, rtol=0, atol=1e-12)


def test_dtype_and_need_dx():
    layer = upsample2d(2, "bilinear")
    x = random.normal(random.key(1), (2, 3, 3, 2))
    y, _, pb = layer.vjp({}, {}, x)
    assert y.dtype == pb(np.ones_like(y))[1].dtype == np.float32
    assert layer.vjp({}, {}, x, need_dx=False)[2](np.ones_like(y))[1] is None


def test_errors():
    for bad in (0, (2, 2, 2)):
        with pytest.raises(LayerError, match="upsample2d.*scale"):
            upsample2d(bad)
    for bad in (1.5, 2.0, True, (2, 2.0)):      # never rounded
        with pytest.raises(TypeError, match="layer 'upsample2d': scale must be an int"):
            upsample2d(bad)
    with pytest.raises(LayerError, match="upsample2d.*method"):
        upsample2d(2, "bicubic")
    layer = upsample2d(2)
    with pytest.raises(LayerError, match=r"upsample2d.*\(batch, height, width, channels\).*\(2, 3, 4\)"):
        layer.apply({}, {}, np.zeros((2, 3, 4), np.float32))
    with pytest.raises(LayerError, match="upsample2d.*int32"):
        layer.apply({}, {}, np.zeros((2, 3, 4, 1), np.int32))
    with pytest.raises(LayerError, match=r"upsample2d.*\(3, 4\)"):
        layer.init(random.key(0), (3, 4))
