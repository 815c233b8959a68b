import numpy as np
import pytest

import fundl as fl
from fundl import initializers as init


def test_fans_follow_fundl_layouts():
    assert init.fans((784, 512)) == (784, 512)
    assert init.fans((3, 3, 16, 32)) == (9 * 16, 9 * 32)
    assert init.fans((5, 4, 8)) == (20, 40)


@pytest.mark.parametrize("fn,var", [
    (init.glorot_uniform, 2.0 / (400 + 600)), (init.glorot_normal, 2.0 / (400 + 600)),
    (init.he_uniform, 2.0 / 400), (init.he_normal, 2.0 / 400), (init.lecun_normal, 1.0 / 400)])
def test_variances(fn, var):
    w = fn(fl.random.key(0), (400, 600), np.float32)
    assert w.dtype == np.float32
    assert abs(w.var() / var - 1) < 0.02
    np.testing.assert_array_equal(w, fn(fl.random.key(0), (400, 600), np.float32))


def test_orthogonal_and_constants():
    q = init.orthogonal()(fl.random.key(0), (6, 4), np.float64)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-12)
    q = init.orthogonal()(fl.random.key(0), (4, 6), np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(4), atol=1e-12)
    assert (init.constant(0.5)(None, (2,), np.float32) == 0.5).all()
    assert init.zeros(None, (2, 2)).dtype == np.float32


def test_variance_scaling_special_cases():
    k = fl.random.key(1)
    w = init.torch_default(k, (300, 500), np.float32)
    assert np.abs(w).max() <= 1 / np.sqrt(300) and np.abs(w).max() > 0.99 / np.sqrt(300)
    w = init.lecun_uniform(k, (3, 3, 40, 8), np.float32)   # fan_in = 360
    assert abs(w.var() * 360 - 1) < 0.05
    w = init.variance_scaling(2.0, "fan_out", "normal")(k, (200, 400), np.float64)
    assert abs(w.var() * 400 / 2 - 1) < 0.02
    with pytest.raises(ValueError):
        init.variance_scaling(1.0, "fan_sum")
