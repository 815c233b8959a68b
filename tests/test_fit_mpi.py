"""fit(comm=) with tuples of inputs and outputs and with a data source, under real ``mpiexec``:
equal to one process (float64).  Skipped without MPI (``pip install "fundl[mpi]"``)."""

import json
from pathlib import Path

import pytest

from test_distributed import SCRIPTS, launch


@pytest.mark.parametrize("ranks", [2, 3])
def test_fit_with_tuples_and_a_source_over_mpi_equals_one_process(tmp_path, ranks):
    proc, _ = launch(ranks, str(SCRIPTS / "fit_tuples.py"), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in range(ranks):
        got = json.loads((Path(tmp_path) / f"rank_{r}.json").read_text())
        assert got["tuple_param_diff"] < 1e-12 and got["source_param_diff"] < 1e-12, got
        assert got["loss_diff"] < 1e-12 and got["val_loss_diff"] < 1e-12, got
        assert got["accuracy"][0] == got["accuracy"][1]
        assert got["val_accuracy"][0] == got["val_accuracy"][1]
        assert got["hist_keys"] == ["epoch", "step", "loss", "accuracy", "mae", "lr",
                                    "val_loss", "val_accuracy", "val_mae"]
