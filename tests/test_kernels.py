"""fundl.kernels: the shared array kernels, against plain formulas, in place and not."""

import numpy as np
import pytest

from fundl import kernels

X = np.array([[-800.0, -3.0, -0.5, 0.0, 0.5, 3.0, 800.0]])


@pytest.mark.parametrize("fn, ref", [
    (kernels.relu, lambda x: np.where(x > 0, x, 0.0)),
    (kernels.tanh, np.tanh),
    (kernels.sigmoid, lambda x: 0.5 * (1 + np.tanh(x / 2))),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_kernels_match_their_formula_and_work_in_place(fn, ref, dtype):
    x = X.astype(dtype)
    x.flags.writeable = False
    y = fn(x)
    assert y.dtype == dtype and not np.shares_memory(y, x)
    np.testing.assert_allclose(y, ref(X).astype(dtype), rtol=1e-6, atol=1e-30)
    assert np.isfinite(y).all()
    buf = X.astype(dtype)
    out = fn(buf, out=buf)
    assert out is buf
    np.testing.assert_array_equal(out, y)          # the same bits in place


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax_are_stable_and_agree(axis):
    x = np.array([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]])
    p = kernels.softmax(x, axis)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=axis, keepdims=True), rtol=1e-14)
    np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.exp(kernels.log_softmax(x, axis)), p, rtol=1e-13)
    buf = x.copy()
    assert kernels.softmax(buf, axis, out=buf) is buf
    np.testing.assert_array_equal(buf, p)
    assert kernels.log_softmax(np.float32(x), axis).dtype == np.float32


@pytest.mark.parametrize("shape", [(7,), (3, kernels.BLOCK + 5), (2, 3, kernels.BLOCK // 2 + 1)])
def test_blockwise_gives_the_bits_of_one_pass_for_one_or_several_outputs(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x.flags.writeable = False

    def two(a):
        e = np.exp(-np.abs(a))
        return a * e, (None if a.size < 0 else e + 1.0)

    np.testing.assert_array_equal(kernels.blockwise(np.tanh, x), np.tanh(x))
    y, g = kernels.blockwise(two, x)
    want_y, want_g = two(x)
    assert y.shape == g.shape == x.shape
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(g, want_g)
    assert kernels.blockwise(lambda a: (a * 2.0, None), x)[1] is None
    strided = np.asarray(x)[..., ::2]
    np.testing.assert_array_equal(kernels.blockwise(np.sin, strided), np.sin(strided))


def test_column_sums_sum_over_every_leading_axis():
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    got = kernels.column_sums(a)
    assert got.dtype == np.float32 and got.shape == (4,)
    np.testing.assert_array_equal(got, [60.0, 66.0, 72.0, 78.0])
    np.testing.assert_array_equal(kernels.column_sums(np.zeros((0, 5), np.float64)), np.zeros(5))


def test_row_sums_sum_over_the_last_axis_each_row_on_its_own():
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    got = kernels.row_sums(a)
    assert got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_array_equal(got, [[6.0, 22.0, 38.0], [54.0, 70.0, 86.0]])
    np.testing.assert_array_equal(kernels.row_sums(a[:, :, ::2]), a[:, :, ::2].sum(-1))  # strided
    assert kernels.row_sums(np.zeros((3, 0))).shape == (3,)
    assert kernels.row_sums(np.zeros((0, 5), np.float64)).shape == (0,)
    # a row's sum does not depend on the other rows' values (exact zeros, e.g. masked
    # entries, included); it is the float64 sum up to float32 rounding
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((32, 64)).astype(np.float32)
    others = rng.standard_normal((32, 64)).astype(np.float32)
    others[3:5] = rows[3:5]
    others[:3] = 0.0
    np.testing.assert_array_equal(kernels.row_sums(others)[3:5], kernels.row_sums(rows)[3:5])
    np.testing.assert_allclose(kernels.row_sums(rows), rows.astype(np.float64).sum(-1),
                               rtol=0, atol=2e-5)
