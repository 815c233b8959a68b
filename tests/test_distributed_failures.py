"""MPI failure modes under real ``mpiexec``: every one ends every rank within a bounded time,
with the reason on stderr from every rank, and leaves no process behind.

tests/mpi_scripts/failures.py runs one mode per launch.  On 76c14af a rank that ran fewer
batches and finished its script left the other blocked in ``Allreduce`` forever (the job
hung), ranks whose gradient trees differed hit ``MPI_ERR_TRUNCATE``, "double free or
corruption" or a silent wrong sum followed by a hang, and fit(comm=) with different keys
trained on overlapping shards without a word.  Skipped without MPI.
"""

import json
import os
import time
import uuid

import pytest

from test_distributed import SCRIPTS, launch

BOUND = 30   # seconds: every failure below ends the job well within it (normally 1-5 s)


def _processes_with(token):
    """PIDs of live processes whose command line holds ``token``."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        pids.append(int(pid))
            except OSError:
                pass
    return pids


def run_mode(n, mode, tmp_path, **env):
    """Launch ``failures.py`` in ``mode`` on ``n`` ranks; (returncode, stderr, seconds), after
    checking that no process of the launch is left."""
    token = f"fundl-test-{uuid.uuid4().hex}"
    proc, seconds = launch(n, str(SCRIPTS / "failures.py"), str(tmp_path), mode, token,
                           timeout=BOUND + 30, env={k: str(v) for k, v in env.items()})
    deadline = time.monotonic() + 5
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(token) == [], "orphaned processes after the launch"
    return proc.returncode, proc.stderr, seconds


def lines_of(stderr, rank, n):
    head = f"fundl.distributed: rank {rank} of {n}:"
    return [line for line in stderr.splitlines() if line.startswith(head)]


@pytest.mark.parametrize("n", [2, 3])
def test_a_rank_that_finished_its_script_ends_the_job(tmp_path, n):
    code, err, seconds = run_mode(n, "short_exit", tmp_path)
    assert code != 0 and seconds < BOUND
    short = n - 1                       # the last rank ran 2 batches, the others 3
    # whichever waiting rank sees it first tells the others; every rank prints it
    assert (f"rank {short} finished its script after 2 training steps, but rank ") in err
    assert "waits in the loss reduction of train step 2 (after starting 3 training steps" in err
    for r in range(n):
        assert any(f"rank {short} finished its script after 2 training steps" in line
                   for line in lines_of(err, r, n)), err
    assert f"  rank {short}: finished its script after 2 training steps" in err
    assert "  rank 0: waiting" in err and "started 3 training steps" in err


def test_a_rank_in_another_collective_ends_the_job(tmp_path):
    code, err, seconds = run_mode(2, "short_evaluate", tmp_path)
    assert code != 0 and seconds < BOUND
    assert "waits in the loss reduction of train step 2" in err
    assert "rank 1 waits in evaluate's batch count" in err
    assert "at the same point of their sequences of collectives (#12)" in err
    for r in range(2):
        assert any("evaluate's batch count" in line for line in lines_of(err, r, 2)), err


def test_a_rank_whose_collective_pairs_with_the_loss_reduction(tmp_path):
    # rank 1 sums 5 numbers, as many as the loss reduction: the step numbers riding in it
    # show the mismatch
    code, err, seconds = run_mode(2, "short_sum", tmp_path)
    assert code != 0 and seconds < BOUND
    assert ("distributed.make_step: the ranks are not at the same step: rank 0 is at train "
            "step 2") in err
    assert any("ending the job because of rank 0: ValueError" in line for line in lines_of(err, 1, 2))


def test_a_rank_that_never_comes_hits_the_deadline(tmp_path):
    code, err, seconds = run_mode(2, "stuck", tmp_path, FUNDL_MPI_TIMEOUT=3)
    assert code != 0 and 3 < seconds < BOUND
    assert "rank 0 waited 3 s in the loss reduction of train step 2" in err
    assert ("  rank 1: running outside fundl's collectives (started 2 training steps, the last "
            "at train step 1)") in err
    assert any("ending the job because of rank 0" in line for line in lines_of(err, 1, 2))


def test_gradients_that_change_structure_on_one_rank(tmp_path):
    code, err, seconds = run_mode(2, "structure_change", tmp_path)
    assert code != 0 and seconds < BOUND
    assert "rank 1 waits in the structure check of mean_gradients" in err
    assert "rank 0 waits in the Allreduce of mean_gradients (bucket 1 of 1)" in err
    assert "changed structure while the others' did not" in err
    for r in range(2):
        assert any("structure check" in line for line in lines_of(err, r, 2)), err
    assert "double free" not in err and "MPI_ERR" not in err


@pytest.fixture(scope="module", params=[2, 3], ids=["n2", "n3"])
def agreement(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"agree{request.param}")
    code, err, seconds = run_mode(request.param, "agreement", out)
    assert code == 0, err[-3000:]
    return [json.loads((out / f"rank_{r}.json").read_text()) for r in range(request.param)]


@pytest.mark.parametrize("case,lines", [
    ("fit_key", ["key: rank 0: [16920295385781661272, 610735763742393210], rank 1: "
                 "[5353851093722033705, 2256949147471542953]"]),
    ("fit_lr", ["lr: the schedule at step 1: rank 0: 0.08705505632961241, rank 1: "
                "0.08908987181403394"]),
    ("fit_epochs", ["epochs/steps (the last step): rank 0: 10, rank 1: 15"]),
    ("fit_batch_size", ["batch_size: rank 0: 8, rank 1: 16", "batches per epoch: rank 0: 5, "
                        "rank 1: 3"]),
    ("fit_optimizer", ["optimizer: rank 0: ('chain(mean_gradients, adam)', ",
                       "rank 1: ('chain(mean_gradients, sgd)', "]),
    ("fit_model", ["model (params and state): rank 0: "]),
    ("fit_data", ["train_data: rank 0: ('40 examples', "]),
])
def test_fit_refuses_ranks_with_different_arguments(agreement, case, lines):
    for r in agreement:       # the same error on every rank, before the first step
        assert r[case].startswith("fit: the ranks called fit with different arguments")
        for line in lines:
            assert line in r[case], r[case]
        assert r[case] == agreement[0][case]
    assert all(r["fit_same"] == "accepted" for r in agreement)


@pytest.mark.parametrize("case,text", [
    ("gradients_dtype", "leaf 'dense_0/b' is float32 (4,) on rank 0, but rank 1 has "
                        "'dense_0/b': float64 (4,)"),
    ("gradients_structure", "rank 0 has 2 leaves, rank 1 3 (rank 0: ['dense_0/w', "
                            "'dense_0/b'], rank 1: ['dense_0/w', 'dense_0/b', 'dense_1/w'])"),
    ("gradients_bucket_bytes", "bucket_bytes is 1048576 on rank 0, 64 on rank 1"),
])
def test_mean_gradients_refuses_different_trees(agreement, case, text):
    for r in agreement:
        assert r[case].startswith("mean_gradients: the ranks sum different trees"), r[case]
        assert text in r[case]
        assert r["gradients_none"] == "accepted"


def test_the_step_refuses_ranks_with_different_losses(agreement):
    for r in agreement:
        assert ("the ranks hold different train states, learning rates or losses at step 0 "
                "(loss: rank 0: ('softmax_cross_entropy', 0), rank 1: ('cross_entropy', 0)"
                ) in r["step_loss"]
