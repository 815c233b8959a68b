"""Smoke tests of the benchmark suite: the numpy references agree with fundl and with
naive loops, and the harness produces rows.  No timing is asserted."""

import argparse

import numpy as np
import pytest

from benchmarks import reference as ref
from benchmarks import run
from benchmarks.workloads import (LR, cnn_flops, cnn_missing_reason, mlp_flops,
                                  workloads)

CNN_SKIP = cnn_missing_reason()


def _one_step(wl):
    impls = wl.implementations(("fundl", "numpy"))
    losses = {k: v.step() for k, v in impls.items()}
    return impls, losses


def _assert_same_after_one_step(impls, losses):
    assert np.isfinite(losses["numpy"])
    assert losses["fundl"] == pytest.approx(losses["numpy"], rel=1e-5)
    from fundl import tree
    mine = tree.leaves(impls["fundl"].ts.params)
    theirs = impls["numpy"].ref.params_list()
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        assert a.dtype == np.float32 and b.dtype == np.float32
        np.testing.assert_allclose(a, b.reshape(a.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [4, 32])
def test_mlp_reference_matches_fundl_first_step(batch):
    wl = [w for w in workloads(batches=(batch,), cnn_batch=2) if w.name == "mlp"][0]
    impls, losses = _one_step(wl)
    _assert_same_after_one_step(impls, losses)
    # and the initial loss is near log(10) for Glorot-initialised logits of [0, 1) inputs
    assert 1.0 < losses["numpy"] < 5.0


def test_mlp_reference_matches_a_naive_float64_step():
    wl = [w for w in workloads(batches=(6,)) if w.name == "mlp"][0]
    params = wl.initial_params()
    x, y = wl.data()
    r = ref.MLPReference(params)
    loss = r.step(x, y, LR)
    # independent: float64, explicit softmax, explicit per-example one-hot, no in-place tricks
    ws = [params[k]["w"].astype(np.float64) for k in params if "w" in params[k]]
    bs = [params[k]["b"].astype(np.float64) for k in params if "w" in params[k]]
    hs, h = [], x.astype(np.float64)
    for i, (w, b) in enumerate(zip(ws, bs)):
        hs.append(h)
        h = h @ w + b
        if i < 2:
            h = np.maximum(h, 0)
    p = np.exp(h - h.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(10)[y]
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(6), y])), rel=1e-5)
    d = (p - onehot) / 6
    for i in (2, 1, 0):
        gw, gb = hs[i].T @ d, d.sum(0)
        d = (d @ ws[i].T) * (hs[i] > 0)
        np.testing.assert_allclose(r.ws[i], ws[i] - LR * gw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.bs[i], bs[i] - LR * gb, rtol=1e-5, atol=1e-6)


def _naive_conv3x3_same(x, k, b):
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, k.shape[-1]))
    for i in range(h):
        for j in range(w):
            out[:, i, j, :] = np.einsum("nabc,abcf->nf", xp[:, i:i + 3, j:j + 3, :], k)
    return out + b


@pytest.mark.parametrize("c", [1, 3, 6])   # im2col transposed up to 4 channels, row-major above
def test_im2col_conv_matches_a_naive_loop_and_col2im_is_its_adjoint(c):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4, c))
    k = rng.standard_normal((3, 3, c, 4))
    b = rng.standard_normal(4)
    cols = ref._im2col3x3(x)
    y = (cols @ k.reshape(-1, 4) + b).reshape(2, 5, 4, 4)
    np.testing.assert_allclose(y, _naive_conv3x3_same(x, k, b), rtol=1e-12, atol=1e-12)
    with_ones = ref._im2col3x3(x, ones_column=True)
    np.testing.assert_array_equal(with_ones[:, :-1], cols)
    np.testing.assert_array_equal(with_ones[:, -1], 1.0)
    c = rng.standard_normal(cols.shape)
    lhs = np.vdot(cols, c)
    rhs = np.vdot(x, ref._col2im3x3(c, x.shape))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # the input gradient by one matmul per kernel offset equals col2im of dy @ W.T
    dy2 = rng.standard_normal((2 * 5 * 4, 4))
    want = ref._col2im3x3(dy2 @ k.reshape(-1, 4).T, x.shape)
    np.testing.assert_allclose(ref._conv3x3_input_grad(dy2, k, x.shape), want,
                               rtol=1e-12, atol=1e-12)


def test_maxpool_reference_matches_a_loop():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 6, 3))
    y = ref._maxpool2(x)
    dy = rng.standard_normal(y.shape)
    dx = ref._maxpool2_backward(x, y, dy)
    want_y = np.zeros_like(y)
    want_dx = np.zeros_like(x)
    for n in range(2):
        for i in range(2):
            for j in range(3):
                for c in range(3):
                    win = x[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
                    want_y[n, i, j, c] = win.max()
                    a, bb = np.unravel_index(np.argmax(win), (2, 2))
                    want_dx[n, 2 * i + a, 2 * j + bb, c] = dy[n, i, j, c]
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(dx, want_dx)


@pytest.mark.skipif(CNN_SKIP is not None, reason=f"fundl CNN row skipped: {CNN_SKIP}")
def test_cnn_reference_matches_fundl_first_step():
    wl = [w for w in workloads(batches=(), cnn_batch=3) if w.name == "cnn"][0]
    assert wl.fundl_skip is None
    impls, losses = _one_step(wl)
    _assert_same_after_one_step(impls, losses)


def test_cnn_reference_runs_even_without_fundl_conv():
    # The numpy reference is always there (initialised from fundl's or a stand-in tree).
    wl = [w for w in workloads(batches=(), cnn_batch=2) if w.name == "cnn"][0]
    impls = wl.implementations(("numpy",))
    loss = impls["numpy"].step()
    assert np.isfinite(loss) and 1.0 < loss < 5.0
    assert impls["numpy"].infer().shape == (2, 10)


def test_flop_counts():
    # 784-512-512-10 at batch 1: forward 2*(784*512 + 512*512 + 512*10), backward dW all
    # three layers, dX only the last two.
    fwd = 2 * (784 * 512 + 512 * 512 + 512 * 10)
    assert mlp_flops(1) == 2 * fwd + 2 * (512 * 512 + 512 * 10)
    assert cnn_flops(2) == 2 * cnn_flops(1)


def test_harness_produces_rows_and_a_table():
    args = argparse.Namespace(allocator="default", frameworks=["fundl", "numpy"], only=["mlp", "cnn"],
                              mlp_batches=[8], cnn_batch=2, repeats=2, target_ms=1.0,
                              gemm_n=64, clock="wall")
    res = run.worker(args)
    assert res["blas"]["threads"] is not None
    assert res["sgemm_gflops"]["median"] > 0
    names = [(w["name"], w["batch"]) for w in res["workloads"]]
    assert names == [("mlp", 8), ("cnn", 2)]
    for w in res["workloads"]:
        rows = w["rows"]
        assert "numpy" in rows
        assert ("fundl" in rows) == (w["fundl_skip"] is None)
        for r in rows.values():
            assert r["step_s"] > 0 and r["samples"] == 2
        assert rows["numpy"]["peak_step_bytes"] > 0
        if "fundl" in rows:
            assert w["check"]["loss"]["fundl"] == pytest.approx(w["check"]["loss"]["numpy"], rel=1e-5)
            assert w["check"]["param_max_abs_diff"] < 1e-5
    table = run.format_table([res])
    assert "mlp" in table and "numpy" in table and "vs numpy" in table


def test_plain_cnn_reference_matches_fundl_first_step():
    from benchmarks import plain_cnn
    fundl_step, ts, P, x, y = plain_cnn.setup(batch=4)
    ts1, metrics = fundl_step(ts, (x, y), 0.01)
    P1, loss = plain_cnn.step(P, x, y, 0.01)
    assert abs(metrics["loss"] - loss) < 1e-5
    assert np.abs(ts1.params["conv2d_3"]["w"] - P1["c2w"]).max() < 1e-6


def test_gap_variants_train_the_same_network_as_the_reference():
    # benchmarks.gap swaps the reference's shortcuts into fundl's models; on this data
    # (no positive ties) they must give the reference's loss and params after one step.
    from benchmarks import gap
    for label, variants in gap.cases(mlp_batches=[4]):
        variants.batch = 3
        impls = variants.implementations()
        assert "fundl" in impls and "numpy" in impls and len(impls) >= 2
        losses = {k: v.step() for k, v in impls.items()}
        variants_only = [name for name in impls if name != "numpy"]
        for name in variants_only:
            pair = {"fundl": impls[name], "numpy": impls["numpy"]}
            _assert_same_after_one_step(pair, {"fundl": losses[name], "numpy": losses["numpy"]})
        # a second step from the trained state, to catch a variant that corrupts its
        # own residuals in place
        second = {k: v.step() for k, v in impls.items()}
        for name in variants_only:
            assert second[name] == pytest.approx(second["numpy"], rel=1e-5), (label, name)
