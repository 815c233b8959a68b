"""Tests for fundl.layers.positional: positional_embedding, sinusoidal_positions."""

import math

import numpy as np
import pytest

from fundl import random
from fundl.combinators import serial
from fundl.core import LayerError
from fundl.layers.attention import multi_head_attention
from fundl.layers.dense import dense
from fundl.layers.positional import positional_embedding, sinusoidal_positions
from fundl.testing import check_layer


@pytest.mark.parametrize("max_len,shape", [(1, (1, 3)), (6, (4, 2)), (6, (6, 5))])
def test_positional_embedding_check_layer(max_len, shape):
    assert check_layer(positional_embedding(max_len), shape).max_error < 1e-6


@pytest.mark.parametrize("shape", [(1, 4), (5, 3), (7, 6)])
def test_sinusoidal_check_layer(shape):
    assert check_layer(sinusoidal_positions(), shape).max_error < 1e-6


def test_in_a_model():
    model = serial(dense(4), sinusoidal_positions(), positional_embedding(8),
                   multi_head_attention(2, causal=True))
    assert check_layer(model, (5, 3)).max_error < 1e-6


def test_positional_embedding_values_and_grads():
    layer = positional_embedding(6)
    params, _, out = layer.init(random.key(0), (4, 3))
    assert out == (4, 3) and params["pos"].shape == (6, 3) and params["pos"].dtype == np.float32
    assert 0.01 < params["pos"].std() < 0.04
    x = random.normal(random.key(1), (2, 4, 3), np.float32)
    np.testing.assert_array_equal(layer.apply(params, {}, x), x + params["pos"][:4])
    # a shorter sequence uses the first rows; the gradient of the unused rows is zero
    x2 = random.normal(random.key(2), (3, 2, 3), np.float64)
    p64 = {"pos": params["pos"].astype(np.float64)}
    y, _, pb = layer.vjp(p64, {}, x2)
    np.testing.assert_array_equal(y, x2 + p64["pos"][:2])
    dy = random.normal(random.key(3), y.shape, np.float64)
    dp, dx = pb(dy)
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_allclose(dp["pos"][:2], dy.sum(axis=0), rtol=1e-15)
    assert np.all(dp["pos"][2:] == 0)


def test_positional_embedding_errors():
    layer = positional_embedding(4)
    with pytest.raises(LayerError) as err:
        layer.init(random.key(0), (5, 3))
    assert "positional_embedding" in str(err.value) and "max_len=4" in str(err.value)
    params, _, _ = layer.init(random.key(0), (4, 3))
    with pytest.raises(LayerError) as err:
        layer.apply(params, {}, np.zeros((2, 5, 3), np.float32))
    msg = str(err.value)
    assert "'positional_embedding'" in msg and "max_len=4" in msg and "(2, 5, 3)" in msg
    with pytest.raises(LayerError, match=r"\(batch, \?, 3\)"):
        layer.vjp(params, {}, np.zeros((2, 4, 2), np.float32))
    with pytest.raises(LayerError, match="float64 does not match"):
        layer.apply(params, {}, np.zeros((2, 4, 3), np.float64))
    with pytest.raises(ValueError):
        positional_embedding(0)


def test_sinusoidal_values():
    layer = sinusoidal_positions()
    x = np.zeros((2, 50, 7), np.float64)
    y = layer.apply({}, {}, x)
    for t in (0, 1, 17, 49):
        for i in range(7):
            angle = t / 10000.0 ** ((i - i % 2) / 7)
            want = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(y[1, t, i] - want) < 1e-12
    # any length, dtype preserved, identity pullback
    x32 = random.normal(random.key(0), (3, 123, 4), np.float32)
    y32, _, pb = layer.vjp({}, {}, x32)
    assert y32.dtype == np.float32 and y32.shape == x32.shape
    dy = random.normal(random.key(1), y32.shape, np.float32)
    assert pb(dy)[1] is dy
    np.testing.assert_array_equal(layer.apply({}, {}, x32[:, :10]), y32[:, :10])


def test_sinusoidal_errors():
    layer = sinusoidal_positions()
    with pytest.raises(LayerError) as err:
        layer.apply({}, {}, np.zeros((2, 3), np.float32))
    assert "sinusoidal_positions" in str(err.value) and "(2, 3)" in str(err.value)
    with pytest.raises(LayerError, match="floating-point"):
        layer.apply({}, {}, np.zeros((2, 3, 4), np.int64))
    with pytest.raises(LayerError):
        layer.init(random.key(0), (3,))
