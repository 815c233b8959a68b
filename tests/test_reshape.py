import numpy as np
import pytest

from fundl import random
from fundl import LayerError
from fundl.layers.reshape import flatten, reshape
from fundl.testing import check_layer


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (1, 1, 7)])
def test_flatten_check_layer(shape):
    assert check_layer(flatten(), shape).max_error < 1e-6


def test_flatten_values_shapes_and_views():
    layer = flatten()
    _, _, out_shape = layer.init(random.key(0), (2, 3, 4))
    assert out_shape == (24,)
    x = np.arange(2 * 24, dtype=np.float32).reshape(2, 2, 3, 4)
    y = layer.apply({}, {}, x)
    assert y.shape == (2, 24) and y.dtype == np.float32
    np.testing.assert_array_equal(y[1], np.arange(24, 48))
    assert np.shares_memory(y, x)            # a view, not a copy
    y2, _, pb = layer.vjp({}, {}, x)
    dparams, dx = pb(y2 * 2)
    assert dparams == {} and dx.shape == x.shape
    np.testing.assert_array_equal(dx, 2 * x)
    empty = layer.apply({}, {}, np.zeros((0, 3, 4), np.float32))
    assert empty.shape == (0, 12)


@pytest.mark.parametrize("in_shape,target,out", [
    ((2, 3, 4), (4, 6), (4, 6)),
    ((2, 3, 4), (-1,), (24,)),
    ((2, 3, 4), (4, -1, 2), (4, 3, 2)),
    ((12,), (3, 2, 2), (3, 2, 2)),
    ((6,), 6, (6,)),
])
def test_reshape_shapes(in_shape, target, out):
    layer = reshape(target)
    assert layer.init(random.key(0), in_shape)[2] == out
    assert check_layer(layer, in_shape).max_error < 1e-6


def test_reshape_values_match_numpy():
    x = np.arange(3 * 24, dtype=np.float64).reshape(3, 2, 3, 4)
    y = reshape((4, -1)).apply({}, {}, x)
    np.testing.assert_array_equal(y, x.reshape(3, 4, 6))
    assert np.shares_memory(y, x)
    _, _, pb = reshape((4, -1)).vjp({}, {}, x)
    dy = np.arange(72.0).reshape(3, 4, 6)
    np.testing.assert_array_equal(pb(dy)[1], dy.reshape(3, 2, 3, 4))


def test_reshape_errors_name_both_shapes():
    with pytest.raises(LayerError, match=r"\(2, 3, 4\).*\(5, 5\)"):
        reshape((5, 5)).init(random.key(0), (2, 3, 4))
    with pytest.raises(LayerError, match=r"\(2, 3, 4\).*\(5, -1\)"):
        reshape((5, -1)).init(random.key(0), (2, 3, 4))
    with pytest.raises(LayerError, match=r"layer 'reshape'.*\(7,\).*\(4, 6\)"):
        reshape((4, 6)).apply({}, {}, np.zeros((2, 7)))
    with pytest.raises(ValueError, match="one -1"):
        reshape((-1, -1))
    with pytest.raises(LayerError, match="numpy array"):
        flatten().apply({}, {}, [[1.0, 2.0]])


def test_flatten_refuses_a_rank_1_array_instead_of_treating_it_as_a_batch():
    with pytest.raises(LayerError, match=r"at least one axis after the batch, got shape \(6,\)"):
        flatten().apply({}, {}, np.zeros(6, np.float32))
