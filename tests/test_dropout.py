import math

import numpy as np
import pytest

from fundl import random
from fundl import LayerError
from fundl.layers.dropout import dropout
from fundl.testing import check_layer


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(6,), (3, 4), (2, 3, 4)])
def test_dropout_check_layer(rate, shape):
    assert check_layer(dropout(rate), shape).max_error < 1e-6


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_dropout_keeps_about_one_minus_rate_and_scales(rate):
    layer = dropout(rate)
    x = np.ones((200, 50), np.float32)
    key = random.key(7)
    y, _, pb = layer.vjp({}, {}, x, key=key)
    kept = int(np.count_nonzero(y))
    # deterministic for a fixed key
    y_again = layer.apply({}, {}, x, key=key, train=True)
    assert int(np.count_nonzero(y_again)) == kept
    np.testing.assert_array_equal(y_again, y)
    # within 5 standard deviations of the binomial mean
    n, p = x.size, 1.0 - rate
    assert abs(kept - n * p) < 5 * math.sqrt(n * p * (1 - p)), (kept, n * p)
    # survivors scaled by exactly 1 / (1 - rate), in float32
    assert y.dtype == np.float32
    np.testing.assert_array_equal(np.unique(y), np.array([0.0, 1.0 / (1.0 - rate)], np.float32))
    # the pullback applies the same mask and scale
    dy = random.normal(random.key(8), x.shape, np.float32)
    dparams, dx = pb(dy)
    assert dparams == {} and dx.dtype == np.float32
    np.testing.assert_array_equal(dx, dy * y)


def test_dropout_mask_depends_on_key_only():
    layer = dropout(0.5)
    x = random.normal(random.key(0), (4, 10), np.float64)
    a = layer.apply({}, {}, x, key=random.key(1), train=True)
    b = layer.apply({}, {}, x * 2, key=random.key(1), train=True)
    c = layer.apply({}, {}, x, key=random.key(2), train=True)
    np.testing.assert_array_equal(a == 0, b == 0)
    assert not np.array_equal(a == 0, c == 0)
    np.testing.assert_allclose(a[a != 0], 2 * x[a != 0], rtol=1e-15)


def test_dropout_eval_is_identity_without_key():
    layer = dropout(0.7)
    x = random.normal(random.key(0), (3, 5), np.float32)
    np.testing.assert_array_equal(layer.apply({}, {}, x), x)
    np.testing.assert_array_equal(layer.apply({}, {}, x, key=random.key(1)), x)


def test_dropout_rate_zero_is_identity():
    layer = dropout(0.0)
    x = random.normal(random.key(0), (3, 5), np.float32)
    y, state, pb = layer.vjp({}, {}, x)         # no key needed: nothing is random
    np.testing.assert_array_equal(y, x)
    assert state == {}
    np.testing.assert_array_equal(pb(x * 3)[1], x * 3)


def test_dropout_training_without_key_raises():
    layer = dropout(0.5)
    x = np.ones((2, 3), np.float32)
    with pytest.raises(LayerError, match=r"layer 'dropout'.*needs a random key"):
        layer.vjp({}, {}, x)
    with pytest.raises(LayerError, match="needs a random key"):
        layer.apply({}, {}, x, train=True)
    with pytest.raises(LayerError, match="floating-point"):
        layer.apply({}, {}, np.ones((2, 3), np.int64))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_bad_rate(rate):
    with pytest.raises(ValueError, match="probability of dropping"):
        dropout(rate)
