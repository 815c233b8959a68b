import os
import pathlib
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_example(name):
    return runpy.run_path(str(ROOT / "examples" / name))


def test_seed_experiment_recovers_the_linear_map():
    run = load_example("linear_regression.py")["run"]
    w, b, w_real, b_real, loss = run(steps=2000, verbose=False)
    assert w.dtype == np.float32
    assert np.abs(w - w_real).max() < 0.01 and np.abs(b - b_real).max() < 0.01
    assert loss < 1e-5




def test_mnist1d_short_run_beats_chance(tmp_path, monkeypatch):
    """A short MNIST-1D run (the headline example's CNN, 400 steps) clearly beats chance (10%)."""
    pytest.importorskip("mnist1d", reason="the optional mnist1d package is not installed")
    monkeypatch.setenv("FUNDL_CACHE", str(tmp_path))
    example = load_example("mnist1d.py")
    data = example["fl"].datasets.mnist1d()
    model, ts, history, seconds = example["train_one"]("cnn", 0, data, steps=400)
    (_, _), (x_test, y_test) = data
    acc = example["test_accuracy"](model, ts.params, ts.state, x_test, y_test)
    assert acc > 60.0, acc
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("script,expect", [
    ("classify_spirals.py", r"test accuracy: (0\.9[5-9]\d|1\.000)"),
    ("custom_layer.py", r"check_layer: contract checks passed"),
    ("optimizers.py", r"adam\s+0\.01\s+0\.0\d+"),
    ("linear_regression.py", r"recovered w_real and b_real"),
])
def test_small_examples_run(script, expect):
    # the checkout's fundl, whether or not (and whichever) fundl is pip-installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(expect, out.stdout), out.stdout[-2000:]
