"""fundl.data: batching, splits, one-hot labels, standardisation."""

import numpy as np
import pytest

from fundl import random
from fundl.data import Standardizer, batches, num_batches, one_hot, standardize, train_test_split
from fundl.testing import read_only


def _data(n=10):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int64) * 10
    return read_only(x), read_only(y)


def test_batches_visit_every_example_once_and_keep_pairs():
    x, y = _data(10)
    got = list(batches(random.key(1), (x, y), batch_size=3))
    assert [len(b[0]) for b in got] == [3, 3, 3, 1]
    xs = np.concatenate([b[0] for b in got])
    ys = np.concatenate([b[1] for b in got])
    assert sorted(ys.tolist()) == y.tolist()           # every example exactly once
    np.testing.assert_array_equal(xs[:, 0] / 3 * 10, ys)  # rows stay paired with labels
    assert not np.array_equal(ys, y)                    # and they were shuffled


def test_batches_order_is_the_keys_permutation():
    x, y = _data(10)
    k = random.key(7)
    ys = np.concatenate([b[1] for b in batches(k, (x, y), 4)])
    np.testing.assert_array_equal(ys, y[random.permutation(k, 10)])
    again = np.concatenate([b[1] for b in batches(k, (x, y), 4)])
    np.testing.assert_array_equal(ys, again)
    other = np.concatenate([b[1] for b in batches(random.key(8), (x, y), 4)])
    assert not np.array_equal(ys, other)


def test_batches_drop_last_and_no_shuffle():
    x, y = _data(10)
    got = list(batches(None, (x, y), 4, shuffle=False, drop_last=True))
    assert len(got) == 2 == num_batches(10, 4, drop_last=True)
    np.testing.assert_array_equal(got[1][1], y[4:8])
    assert num_batches(10, 4) == 3 and num_batches(8, 4) == 2


def test_batches_single_array_yields_arrays():
    x, _ = _data(5)
    got = list(batches(None, x, 2, shuffle=False))
    assert isinstance(got[0], np.ndarray) and got[0].shape == (2, 3)
    assert len(got) == 3


def test_batches_errors_are_raised_eagerly():
    x, y = _data(10)
    with pytest.raises(ValueError, match=r"same length.*\(10, 3\), \(9,\)"):
        batches(random.key(0), (x, y[:9]), 2)
    with pytest.raises(ValueError, match="empty"):
        batches(random.key(0), (x[:0], y[:0]), 2)
    with pytest.raises(ValueError, match="batch_size"):
        batches(random.key(0), (x, y), 0)
    with pytest.raises(ValueError, match="needs a key"):
        batches(None, (x, y), 2)
    with pytest.raises(ValueError, match="empty sequence"):
        batches(random.key(0), (), 2)


def test_train_test_split_partitions_deterministically():
    x, y = _data(10)
    (xa, ya), (xb, yb) = train_test_split(random.key(3), (x, y), 0.3)
    assert len(ya) == 7 and len(yb) == 3
    assert sorted(np.concatenate([ya, yb]).tolist()) == y.tolist()
    np.testing.assert_array_equal(xa[:, 0] / 3 * 10, ya)
    (_, ya2), (_, yb2) = train_test_split(random.key(3), (x, y), 0.3)
    np.testing.assert_array_equal(ya, ya2)
    np.testing.assert_array_equal(yb, yb2)
    tr, te = train_test_split(random.key(3), x, 0.5)
    assert tr.shape == te.shape == (5, 3)
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(random.key(3), (x, y), 1.0)


def test_one_hot():
    out = one_hot(np.array([2, 0, 1]), 3)
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert out.dtype == np.float32
    assert one_hot(np.array([[1], [0]]), 2, dtype=np.float64).shape == (2, 1, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        one_hot(np.array([3]), 3)
    with pytest.raises(ValueError, match="integers"):
        one_hot(np.array([1.0]), 3)


def test_standardize_fits_on_train_and_applies_to_test():
    x_train = read_only(np.array([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0]], dtype=np.float32))
    x_test = read_only(np.array([[2.0, 50.0, 7.0]], dtype=np.float32))
    z, stats = standardize(x_train)
    assert isinstance(stats, Standardizer)
    np.testing.assert_allclose(stats.mean, [2.0, 20.0, 5.0])
    np.testing.assert_allclose(stats.std, [1.0, 10.0, 1.0])  # constant feature: std 1
    np.testing.assert_allclose(z, [[-1, -1, 0], [1, 1, 0]])
    zt, same = standardize(x_test, stats)
    assert same is stats
    np.testing.assert_allclose(zt, [[0.0, 3.0, 2.0]])
    assert z.dtype == zt.dtype == np.float32
    np.testing.assert_allclose(stats.invert(zt), x_test)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        stats.apply(np.zeros((2, 4), np.float32))


def test_batches_shuffle_nested_tuples_and_dicts_together():
    x, y = _data(10)
    x2 = read_only(x[:, :1] * 2)
    k = random.key(4)
    order = random.permutation(k, 10)
    got = list(batches(k, ((x, x2), y), 4))
    assert [type(b[0]) for b in got] == [tuple] * 3 and [len(b[1]) for b in got] == [4, 4, 2]
    (xa, xb), yb = got[0]
    np.testing.assert_array_equal(yb, y[order[:4]])
    np.testing.assert_array_equal(xa, x[order[:4]])
    np.testing.assert_array_equal(xb, x2[order[:4]])
    d = list(batches(k, {"x": x, "pair": (x2, y)}, 4))
    assert list(d[1]) == ["x", "pair"]
    np.testing.assert_array_equal(d[1]["x"], x[order[4:8]])
    np.testing.assert_array_equal(d[1]["pair"][1], y[order[4:8]])
    np.testing.assert_array_equal(d[1]["pair"][0], x2[order[4:8]])
    with pytest.raises(ValueError, match=r"same length.*\['pair'\]\[1\] \(9,\)"):
        batches(k, {"x": x, "pair": (x2, y[:9])}, 4)
    with pytest.raises(ValueError, match=r"array \[1\]\['b'\] is a scalar"):
        batches(k, (x, {"b": np.float32(1.0)}), 4)


def test_train_test_split_takes_a_test_size():
    x, y = _data(10)
    (_, ya), (_, yb) = train_test_split(random.key(3), (x, y), test_size=0.3)
    (_, ya2), (_, yb2) = train_test_split(random.key(3), (x, y), 0.3)
    np.testing.assert_array_equal(yb, yb2)                       # the same split as a fraction
    (_, yc), (_, yd) = train_test_split(random.key(3), (x, y), test_size=4)
    assert len(yd) == 4 and len(yc) == 6
    np.testing.assert_array_equal(yd[:3], yb)                    # the same order, 4 instead of 3
    with pytest.raises(ValueError, match="exactly one of test_fraction or test_size"):
        train_test_split(random.key(3), (x, y), 0.3, test_size=0.3)
    with pytest.raises(ValueError, match="exactly one of test_fraction or test_size"):
        train_test_split(random.key(3), (x, y))
    with pytest.raises(ValueError, match=r"integer test_size counts examples.*\[1, 10\), got 10"):
        train_test_split(random.key(3), (x, y), test_size=10)
    with pytest.raises(ValueError, match="test_size must be a fraction in"):
        train_test_split(random.key(3), (x, y), test_size=1.5)


def test_batches_over_a_memmap_equal_the_array_and_release_pages(tmp_path):
    from fundl.data.mapped import PageRelease, mapping_of
    x, y = _data(10)
    np.save(tmp_path / "x.npy", x)
    mx = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert mapping_of(mx) is not None and mapping_of(np.asarray(mx)[2:]) is not None
    assert mapping_of(x) is None
    assert mapping_of(np.load(tmp_path / "x.npy", mmap_mode="c")) is None   # private changes
    a = list(batches(random.key(1), (mx, y), 3))
    b = list(batches(random.key(1), (x, y), 3))
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))
    release = PageRelease([mx], every=10)
    release.read(4)
    assert release.pending == 4
    release.read(8)
    assert release.pending == 0 and float(mx.sum()) == float(x.sum())      # data still there
