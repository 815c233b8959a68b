"""Smoke tests of the benchmark suite: the numpy references agree with fundl and with
naive loops, and the harness produces rows.  No timing is asserted."""

import argparse
import pathlib

import numpy as np
import pytest

import fundl as fl

from benchmarks import reference as ref
from benchmarks import run
from benchmarks import workloads as wls
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
    args = argparse.Namespace(allocator="default", frameworks=["fundl", "numpy"],
                              workloads=["mlp", "cnn"], optimizers=["sgd"], size="full",
                              mlp_batches=[8], cnn_batch=2, repeats=2, target_ms=1.0,
                              gemm_n=64, clock="wall")
    res = run.worker(args)
    assert res["blas"]["threads"] is not None
    assert res["sgemm_gflops"]["median"] > 0
    names = [(w["name"], w["opt"], w["batch"]) for w in res["workloads"]]
    assert names == [("mlp", "sgd", 8), ("cnn", "sgd", 2)]
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


# --- the workloads against PyTorch --------------------------------------------------

NEW = ("cnn_bn", "lstm", "gru_paper", "gru128", "transformer")


def _tiny(name, opt="sgd"):
    (wl,) = workloads(size="tiny", names=[name], optimizers=[opt])
    return wl


def test_workload_list_filters_and_names():
    assert run.KINDS == wls.KINDS
    all_ = workloads(batches=(4,), cnn_batch=2, size="tiny")
    assert [(w.name, w.optimizer) for w in all_] == [(k, o) for k in wls.KINDS
                                                      for o in ("sgd", "adam")]
    assert [w.label for w in workloads(size="tiny", names=["lstm", "cnn_bn"],
                                       optimizers=["adam"])] == ["cnn_bn/adam", "lstm/adam"]
    with pytest.raises(ValueError, match="unknown workloads"):
        workloads(names=["resnet"])
    full = {w.name: w for w in workloads(batches=(), names=NEW, optimizers=["sgd"])}
    assert full["lstm"].batch == 64 and full["lstm"].in_shape == (50, 32)
    assert full["gru_paper"].in_shape == (40,) and full["transformer"].in_shape == (64,)
    assert full["cnn_bn"].in_shape == (32, 32, 3)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_new_workload_builds_and_steps(name, opt):
    wl = _tiny(name, opt)
    impls = wl.implementations(("fundl", "numpy", "jax"))
    assert list(impls) == ["fundl"]
    assert wl.notes["numpy"] == "no numpy reference for this workload"
    assert "JAX" in wl.notes["jax"]
    fundl_impl = impls["fundl"]
    first, second = fundl_impl.step(), fundl_impl.step()
    assert np.isfinite(first) and 1.0 < first < 5.0 and second != first
    out = fundl_impl.infer()
    want = (wl.batch, wl.cfg["steps"], wl.cfg["vocab"]) if name == "transformer" else (wl.batch, 10)
    assert out.shape == want and out.dtype == np.float32


@pytest.mark.parametrize("name", ("mlp", "cnn") + NEW)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_fundl_and_torch_train_the_same_network(name, opt):
    pytest.importorskip("torch", reason="PyTorch is optional (pip install torch==2.13.0)")
    (wl,) = workloads(batches=(4,), cnn_batch=2, size="tiny", names=[name], optimizers=[opt])
    # A large learning rate makes every step move the loss well beyond the tolerance, so the
    # later steps check the gradients and the update, not only the copied weights.
    # (The MLP and CNN see 784 un-normalised inputs: they diverge at those rates.)
    wl.lr = {"sgd": 0.1, "adam": 0.01}[opt] / (5 if name in ("mlp", "cnn") else 1)
    impls = wl.implementations(("fundl", "torch"))
    assert set(impls) == {"fundl", "torch"}
    losses = {k: [v.step() for _ in range(4)] for k, v in impls.items()}
    assert abs(losses["fundl"][0] - losses["torch"][0]) < 1e-4
    np.testing.assert_allclose(losses["fundl"], losses["torch"], rtol=1e-4, atol=1e-5)
    assert abs(losses["fundl"][3] - losses["fundl"][0]) > 1e-2


def test_flop_counts_of_the_new_workloads_by_hand():
    # cnn_bn 8x8x3 -> 4 -> 6 channels, batch 3: conv1 2*3*64*27*4 (forward + dW),
    # conv2 2*3*16*36*6 (forward, dW, dX), dense 2*3*(2*2*6)*10 (forward, dW, dX).
    assert wls.cnn_bn_flops(**wls.TINY["cnn_bn"]) == (2 * 2 * 3 * 64 * 27 * 4 + 3 * 2 * 3 * 16 * 36 * 6
                                                      + 3 * 2 * 3 * 24 * 10)
    # lstm batch 4, 5 steps, 3 features, 8 units (32 gate columns), 10 classes.
    assert wls.lstm_flops(**wls.TINY["lstm"]) == (2 * 2 * 4 * 5 * 3 * 32 + 3 * 2 * 4 * 4 * 8 * 32
                                                  + 3 * 2 * 4 * 8 * 10)
    # bidirectional gru batch 4, 6 steps, 1 feature, 3 units (9 gate columns), dense 36 -> 10.
    per_direction = 2 * 2 * 4 * 6 * 1 * 9 + 3 * 2 * 4 * 5 * 3 * 9
    assert wls.gru_flops(**wls.TINY["gru_paper"]) == 2 * per_direction + 3 * 2 * 4 * 36 * 10
    # transformer batch 2, 8 tokens, width 16, vocab 11, 2 blocks: 16 tokens per batch.
    block = 3 * (2 * 16 * 16 * 48 + 2 * 16 * 16 * 16 + 2 * 16 * 16 * 64 + 2 * 16 * 64 * 16
                 + 2 * (2 * 2 * 8 * 8 * 16))
    assert wls.transformer_flops(**wls.TINY["transformer"]) == 2 * block + 3 * 2 * 16 * 16 * 11
    # the full sizes scale as expected
    full = wls.FULL["gru128"]
    assert wls.gru_flops(**dict(full, batch=200)) == 2 * wls.gru_flops(**full)


def test_harness_compares_fundl_with_torch():
    pytest.importorskip("torch", reason="PyTorch is optional (pip install torch==2.13.0)")
    args = argparse.Namespace(allocator="default", frameworks=["fundl", "numpy", "torch"],
                              workloads=["mlp", "lstm", "transformer"], optimizers=["sgd", "adam"],
                              size="tiny", mlp_batches=None, cnn_batch=None, repeats=2,
                              target_ms=1.0, gemm_n=64, clock="wall")
    res = run.worker(args)
    names = [(w["name"], w["opt"], w["batch"]) for w in res["workloads"]]
    assert names == [("mlp", "sgd", 8), ("mlp", "adam", 8), ("lstm", "sgd", 4),
                     ("lstm", "adam", 4), ("transformer", "sgd", 2), ("transformer", "adam", 2)]
    for w in res["workloads"]:
        assert {"fundl", "torch"} <= set(w["rows"])
        assert ("numpy" in w["rows"]) == (w["name"] == "mlp" and w["opt"] == "sgd")
        for key in ("loss", "loss2"):
            assert w["check"][key]["fundl"] == pytest.approx(w["check"][key]["torch"], abs=1e-4)
    table = run.format_table([res])
    assert "fundl vs PyTorch eager" in table and "torch/fundl" in table
    assert "no numpy reference for this workload" in table
    assert "the numpy reference is SGD only" in table
    summary = run.format_torch_table([res]).splitlines()
    assert len(summary) == 3 + 6 and summary[3].startswith("mlp         sgd       8 default")


def test_command_line_filters():
    args = run._parser().parse_args(["--quick", "--workloads", "lstm", "gru128",
                                     "--optimizers", "adam", "--size", "tiny"])
    assert args.workloads == ["lstm", "gru128"] and args.optimizers == ["adam"]
    assert run._batches(args) == ([8], 2)
    assert run._parser().parse_args(["--only", "mlp"]).workloads == ["mlp"]
    full = run._parser().parse_args([])
    assert full.workloads == list(wls.KINDS) and full.optimizers == ["sgd", "adam"]
    assert run._batches(full) == ([32, 128, 512], 64)
    with pytest.raises(SystemExit):
        run._parser().parse_args(["--workloads", "resnet"])


def test_breakdown_times_every_leaf_layer_of_the_tiny_transformer():
    from benchmarks import breakdown
    wl = workloads(size="tiny", names=["transformer"], optimizers=["sgd"])[0]
    impl = wl.implementations(["fundl"])["fundl"]
    rows = breakdown.fundl_layers(impl.model, impl.ts.params, impl.ts.state, impl.x, repeats=2)
    names = [name for _, name, _, _ in rows]
    # embedding, positional, 2 x (ln, mha) + 2 x (ln, dense, gelu, dense), ln, dense
    assert names.count("multi_head_attention") == 2 and names.count("gelu") == 2
    assert names.count("layer_norm") == 5 and names.count("dense") == 5 and len(rows) == 16
    assert rows[2][0] == "/residual_2/serial_0/layer_norm_0"
    assert all(f > 0 and b >= 0 for _, _, f, b in rows)


def test_breakdown_runs_end_to_end_at_tiny_size(capsys):
    from benchmarks import breakdown
    breakdown.main(["cnn_bn", "--size", "tiny", "--repeats", "2", "--ops", "3"])
    out = capsys.readouterr().out
    assert "/conv2d_0" in out and "/batch_norm_5" in out and "fundl step" in out
    assert "torch" in out  # the torch profile, or why it is missing


def test_alloc_measures_fresh_processes_with_both_allocator_settings(capsys):
    from benchmarks import alloc
    got = alloc.run_child("mlp", "sgd", "keep", 2, "tiny", "fundl")
    assert set(got) == {"ms", "faults"} and got["ms"] > 0 and got["faults"] >= 0
    alloc.main(["--workloads", "gru_paper", "--size", "tiny", "--rounds", "1", "--steps", "2"])
    out = capsys.readouterr().out
    assert "gru_paper" in out and "keep/default" in out


def test_overhead_runs_the_same_training_both_ways(capsys):
    from benchmarks import overhead
    via_step, by_hand = overhead.build()
    losses = [(via_step(), by_hand()) for _ in range(3)]
    for a, b in losses:                      # the same network, params and updates
        assert abs(a - b) <= 1e-6 * max(1.0, abs(a))
    assert losses[0][0] != losses[2][0]      # and both train
    overhead.main(["--repeats", "1", "--steps", "5"])
    assert "ratio" in capsys.readouterr().out


def test_another_checkout_runs_beside_this_one(capsys):
    """``--against PATH`` (here: this checkout under another module name) times a second
    fundl interleaved with this one; the same code trains to the same losses and params."""
    from benchmarks import overhead, same_results, versions
    root = str(pathlib.Path(__file__).resolve().parents[1])
    other = versions.load(root, "test_copy")
    assert other is not fl and other.serial is not fl.serial
    rows = same_results.compare(other, steps=3)
    assert [name for name, *_ in rows] == ["mlp adam", "cnn bn dropout momentum",
                                           "lstm residual layer_norm adamw"]
    assert all(params == 0.0 and leaves == 0 and loss == 0.0 for _, params, leaves, loss in rows)
    overhead.main(["--repeats", "2", "--steps", "3", "--against", root])
    assert overhead.measure(1, 2, against=root).keys() == {"this", "other"}
    args = argparse.Namespace(allocator="default", frameworks=["fundl"], workloads=["mlp"],
                              optimizers=["sgd"], size="full", mlp_batches=[8], cnn_batch=2,
                              repeats=2, target_ms=1.0, gemm_n=64, clock="wall", against=root)
    res = run.worker(args)
    (w,) = res["workloads"]
    assert set(w["rows"]) == {"fundl", "before"}
    assert w["check"]["loss"]["before"] == w["check"]["loss"]["fundl"]
    table = run.format_table([res])
    assert "before/fundl" in table
