import numpy as np
import pytest

from fundl import random
from fundl import LayerError
from fundl.layers.embedding import embedding
from fundl.testing import check_layer


def _loop_grad(ids, dy, vocab, features):
    dw = np.zeros((vocab, features))
    flat_ids = ids.reshape(-1)
    flat_dy = dy.reshape(-1, features)
    for i, row in zip(flat_ids, flat_dy):
        dw[int(i)] += row
    return dw


# small vocabularies take the one-hot path, large ones the sort/scatter path
@pytest.mark.parametrize("vocab", [7, 300])
@pytest.mark.parametrize("ids_shape", [(5,), (4, 6), (2, 3, 4)])
def test_embedding_check_layer(vocab, ids_shape):
    ids = random.randint(random.key(1), ids_shape, 0, vocab)
    layer = embedding(vocab, 3)
    assert check_layer(layer, ids_shape[1:], x=ids).max_error < 1e-6


@pytest.mark.parametrize("vocab,dtype", [(5, np.int64), (200, np.int32), (1000, np.uint8)])
def test_embedding_lookup_and_repeated_id_gradient(vocab, dtype):
    features = 4
    layer = embedding(vocab, features)
    params, state, out_shape = layer.init(random.key(0), (6,))
    assert out_shape == (6, features) and params["w"].shape == (vocab, features)
    assert params["w"].dtype == np.float32 and state == {}
    high = min(vocab, 256)
    ids = random.randint(random.key(2), (5, 6), 0, high).astype(dtype)
    ids[0, :3] = 1                                  # make sure ids repeat
    y, _, pb = layer.vjp(params, state, ids)
    assert y.shape == (5, 6, features) and y.dtype == np.float32
    for b in range(5):
        for t in range(6):
            np.testing.assert_array_equal(y[b, t], params["w"][int(ids[b, t])])
    dy = random.normal(random.key(3), y.shape, np.float32)
    grads, dx = pb(dy)
    assert dx is None and grads["w"].dtype == np.float32
    np.testing.assert_allclose(grads["w"], _loop_grad(ids, dy, vocab, features),
                               rtol=1e-5, atol=1e-6)
    # an id seen three times gets the sum of its three cotangents
    rows = [dy[b, t] for b in range(5) for t in range(6) if ids[b, t] == 1]
    np.testing.assert_allclose(grads["w"][1], np.sum(rows, axis=0), rtol=1e-5, atol=1e-6)


def test_embedding_gradient_all_same_id_and_float64():
    layer = embedding(500, 2, dtype=np.float64)
    params, _, _ = layer.init(random.key(0), ())
    ids = np.full((9,), 42)
    _, _, pb = layer.vjp(params, {}, ids)
    dy = np.arange(18.0).reshape(9, 2)
    dw = pb(dy)[0]["w"]
    assert dw.dtype == np.float64
    np.testing.assert_array_equal(dw[42], [72.0, 81.0])
    assert np.count_nonzero(dw) == 2


def test_embedding_default_init_is_standard_normal():
    w = embedding(400, 50).init(random.key(0), (3,))[0]["w"]
    assert abs(float(w.mean())) < 0.02 and abs(float(w.std()) - 1.0) < 0.02


def test_embedding_errors():
    layer = embedding(10, 3)
    params, _, _ = layer.init(random.key(0), (4,))
    with pytest.raises(LayerError, match=r"layer 'embedding'.*\[0, 10\).*-2, 10, 12"):
        layer.apply(params, {}, np.array([[1, -2, 10, 12]]))
    with pytest.raises(LayerError, match=r"integer ids in \[0, 10\).*float32"):
        layer.apply(params, {}, np.array([[1.0, 2.0]], np.float32))
    with pytest.raises(LayerError, match="out-of-range"):
        layer.vjp(params, {}, np.array([[3, 10]]))
    with pytest.raises(ValueError):
        embedding(0, 3)
