"""fundl.datasets: synthetic tasks, the IDX reader, MNIST-1D (if the extra is installed)."""

import gzip
import os
import random as py_random
import struct
import sys

import numpy as np
import pytest

from fundl import random
from fundl.datasets import IdxError, linear_regression, load_idx, spirals
from fundl.datasets import mnist_1d as mnist1d_module


def test_linear_regression_matches_its_definition():
    x, y, w, b = linear_regression(random.key(0), 50, in_features=4, out_features=3)
    assert x.shape == (50, 4) and y.shape == (50, 3) and w.shape == (4, 3) and b.shape == (3,)
    assert all(a.dtype == np.float32 for a in (x, y, w, b))
    for a in (x, w, b):
        assert a.min() >= 0.0 and a.max() < 1.0
    ref = np.einsum("ni,io->no", x.astype(np.float64), w.astype(np.float64)) + b
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    x2, *_ = linear_regression(random.key(0), 50, in_features=4, out_features=3)
    np.testing.assert_array_equal(x, x2)


def test_spirals():
    x, y = spirals(random.key(1), 100, classes=4, noise=0.0)
    assert x.shape == (400, 2) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [100] * 4
    r = np.hypot(x[:, 0], x[:, 1])
    assert r.max() <= 1.0 + 1e-6
    # without noise each point lies on its arm: angle = 4 * label + 4 * r
    theta = np.arctan2(x[:, 0], x[:, 1])
    expect = 4.0 * y + 4.0 * r
    diff = np.angle(np.exp(1j * (theta - expect)))
    assert np.abs(diff[r > 1e-3]).max() < 1e-4
    x2, y2 = spirals(random.key(1), 100, classes=4, noise=0.0)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def _write_idx(path, array, code, compress=False):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    blob = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return blob


def test_load_idx_round_trips_every_dtype(tmp_path):
    cases = [(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08),
             (np.array([-3, 4], dtype=np.int8), 0x09),
             (np.array([[-300, 2], [7, 8]], dtype=np.int16), 0x0B),
             (np.array([1 << 20, -5], dtype=np.int32), 0x0C),
             (np.array([[1.5, -2.25]], dtype=np.float32), 0x0D),
             (np.array([np.pi], dtype=np.float64), 0x0E)]
    for i, (a, code) in enumerate(cases):
        for compress in (False, True):
            p = tmp_path / f"f{i}{'.gz' if compress else ''}"
            _write_idx(p, a, code, compress)
            got = load_idx(p)
            assert got.dtype == a.dtype and got.dtype.isnative and got.shape == a.shape
            np.testing.assert_array_equal(got, a)


def test_load_idx_mnist_labels_layout(tmp_path):
    # the labels file of MNIST: magic 0x00000801, count, then bytes
    p = tmp_path / "labels-idx1-ubyte"
    p.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([7, 2, 1]))
    np.testing.assert_array_equal(load_idx(str(p)), [7, 2, 1])


def test_load_idx_errors(tmp_path):
    blob = _write_idx(tmp_path / "ok", np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08)
    (tmp_path / "short").write_bytes(blob[:-1])
    with pytest.raises(IdxError, match=r"short: truncated: shape \(3, 4\)"):
        load_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(blob + b"\x00")
    with pytest.raises(IdxError, match="trailing bytes"):
        load_idx(tmp_path / "long")
    (tmp_path / "head").write_bytes(blob[:6])
    with pytest.raises(IdxError, match="truncated header"):
        load_idx(tmp_path / "head")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(IdxError, match=r"text: not an IDX file"):
        load_idx(tmp_path / "text")
    (tmp_path / "code").write_bytes(b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(IdxError, match="unknown IDX data type code 0x07"):
        load_idx(tmp_path / "code")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(blob)[:20])
    with pytest.raises(IdxError, match="gzip"):
        load_idx(tmp_path / "bad.gz")


def test_mnist1d_missing_package_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # makes `import mnist1d` fail
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ImportError, match="pip install mnist1d"):
        mnist1d_module.mnist1d(root=tmp_path)


def test_mnist1d_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FUNDL_CACHE", str(tmp_path))
    assert mnist1d_module.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("FUNDL_CACHE")
    assert mnist1d_module.default_cache_dir().endswith(os.path.join(".cache", "fundl"))


def test_mnist1d_builds_caches_and_restores_global_rng(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d", reason="the optional mnist1d package is not installed")
    np_state = np.random.get_state()[1].copy()
    py_state = py_random.getstate()
    (x_tr, y_tr), (x_te, y_te) = mnist1d_module.mnist1d(root=tmp_path)
    assert x_tr.shape == (4000, 40) and x_te.shape == (1000, 40)
    assert x_tr.dtype == x_te.dtype == np.float32 and y_tr.dtype == y_te.dtype == np.int64
    assert sorted(np.unique(y_tr).tolist()) == list(range(10))
    assert np.array_equal(np.random.get_state()[1], np_state) and py_random.getstate() == py_state
    assert os.listdir(tmp_path) == ["mnist1d_default_v1.npz"]

    def no_build():
        raise AssertionError("the cache should have been used")
    monkeypatch.setattr(mnist1d_module, "_build", no_build)
    (x2, y2), (x3, y3) = mnist1d_module.mnist1d(root=tmp_path)
    for a, b in ((x_tr, x2), (y_tr, y2), (x_te, x3), (y_te, y3)):
        np.testing.assert_array_equal(a, b)
