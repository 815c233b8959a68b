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
    ("adversarial.py --quick", r"eps 0\.1\s+accuracy 0\.[0-8]\d\d(.|\n)*the body's statistics "
                               r"unchanged, its params trained"),
])
def test_small_examples_run(script, expect):
    # the checkout's fundl, whether or not (and whichever) fundl is pip-installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    name, *args = script.split()
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(expect, out.stdout), out.stdout[-2000:]


def _checkout_env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def test_char_transformer_tiny_run_beats_the_unigram_baseline():
    run = load_example("char_transformer.py")["run"]
    out = run(epochs=3, chars=20_000, context=32, width=32, heads=2, lr=1e-2, sample_chars=20,
              verbose=False)   # measured: 4.40 bits/char against a unigram 4.91
    assert out["val_bits"][-1] < out["val_bits"][0]
    assert out["train_bits"][-1] < out["train_bits"][0]
    assert out["val_bits"][-1] < out["unigram_bits"] - 0.3, (out["val_bits"], out["unigram_bits"])
    assert len(out["sample"]) == 20
    # the key/value cache draws the text the full recomputation draws, from the same logits
    assert out["sample_recomputed"] == out["sample"] and out["logit_diff"] < 1e-4
    assert set(out["chars_per_second"]) == {"cached", "recomputed"}
    again = run(epochs=1, chars=5_000, context=16, width=16, heads=2, sample_chars=30,
                verbose=False)   # 11 + 30 characters through a window of 16: two refills
    same = run(epochs=1, chars=5_000, context=16, width=16, heads=2, sample_chars=30,
               verbose=False)
    assert again["sample"] == same["sample"] and again["val_bits"] == same["val_bits"]
    assert again["sample_recomputed"] == again["sample"] and again["logit_diff"] < 1e-4


def test_char_transformer_decode_equals_apply_and_the_cache_grows():
    example = load_example("char_transformer.py")
    fl = example["fl"]
    model = example["transformer"](11, 12, 8, 2, 2)
    params, state, _ = model.init(fl.random.key(0), (12,))
    params = fl.tree.cast(params, np.float64)
    ids = (np.arange(2 * 12).reshape(2, 12) * 7) % 11
    want = model.apply(params, state, ids)
    whole, caches = example["decode"](model, params, state, {}, ids, 0)
    assert sorted(caches) == [("residual_2", "serial_0", "multi_head_attention_1"),
                              ("residual_4", "serial_0", "multi_head_attention_1")]
    assert max(c.k.shape[2] for c in caches.values()) == 12
    first, caches = example["decode"](model, params, state, {}, ids[:, :5], 0)
    rest = [first]
    for t in range(5, 12):
        out, caches = example["decode"](model, params, state, caches, ids[:, t:t + 1], t)
        rest.append(out)
    for got in (whole, np.concatenate(rest, axis=1)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_variable_length_padding_changes_nothing():
    run = load_example("variable_length.py")["run"]
    out = run(n_train=600, n_test=200, epochs=3, verbose=False)
    assert out["max_diff"] < 1e-5
    assert out["losses"][-1] < out["losses"][0]
    assert out["accuracy"] > 0.75, out["accuracy"]


@pytest.mark.parametrize("script,expect", [
    ("variable_length.py", r"max \|logit difference\| (\d\.\d\de-(0[6-9]|[1-9]\d)|0\.00e\+00)\n"
                           r".*test accuracy: 0\.[89]"),
    ("char_transformer.py", r"sampling: \d+ chars/s with the key/value cache, \d+ chars/s "
                            r"recomputing the window for every character; the same text: True, "
                            r"max \|cached - recomputed logit\| \d\.\de-0[5-9](.|\n)*"
                            r"validation \d\.\d+ bits/char, \d\.\d+ below the unigram"),
])
def test_new_examples_quick(script, expect):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--quick"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=_checkout_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(expect, out.stdout), out.stdout[-2000:]


def test_augmentation_example_quick_resumes_bit_identically(tmp_path):
    pytest.importorskip("mnist1d", reason="the optional mnist1d package is not installed")
    env = dict(_checkout_env(), FUNDL_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "augment_mnist1d.py"),
                          "--quick"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"interrupted at step 15 and resumed: bit-identical True", out.stdout), \
        out.stdout[-2000:]
    accuracy = [float(a) for a in re.findall(r"val loss \d\.\d+ accuracy (\d\.\d+)", out.stdout)]
    assert len(accuracy) == 3 and accuracy[-1] > 0.25 > 0.1, out.stdout   # chance is 0.1


def test_onnx_export_example_quick(tmp_path):
    for package in ("mnist1d", "onnx", "onnxruntime"):
        pytest.importorskip(package, reason=f"the optional {package} package is not installed")
    env = dict(_checkout_env(), FUNDL_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "export_onnx.py"), "--quick",
                          "--out", str(tmp_path / "models")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    assert re.search(r"cnn: .*\n  ONNX ops: .*Conv x3.*\n.*predictions agree on 100\.0%", out.stdout)
    assert re.search(r"gru: .*\n  ONNX ops: .*GRU,.*\n.*predictions agree on 100\.0%", out.stdout)
    assert re.search(r"worst relative difference: \d\.\de-(0[6-9]|[1-9]\d)", out.stdout), out.stdout
    assert (tmp_path / "models" / "mnist1d_gru.onnx").exists()


def test_fine_tune_example_quick(tmp_path):
    for package in ("torch", "mnist1d"):
        pytest.importorskip(package, reason=f"the optional {package} package is not installed")
    env = dict(_checkout_env(), FUNDL_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "fine_tune.py"), "--quick"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    port = re.search(r"ported to fundl: test accuracy (\d\.\d+), max \|fundl - torch\| "
                     r"(\d\.\de[-+]\d\d)", out.stdout)
    assert port and float(port.group(1)) > 0.5 and float(port.group(2)) < 1e-4, out.stdout
    tuned = re.search(r"digits 5-9: test accuracy (\d\.\d+) \(the same head on a random body: "
                      r"(\d\.\d+)\); the body's params and batch-norm statistics bit-identical",
                      out.stdout)
    assert tuned and float(tuned.group(1)) > float(tuned.group(2)) + 0.1, out.stdout
    assert "rebuilt by fl.io.load_model: serial(eval_mode(serial(conv1d(16, 5" in out.stdout
    assert "the same outputs: True" in out.stdout


def test_fine_tune_example_skips_cleanly_without_torch(tmp_path):
    # the example asks importlib whether torch is installed: answer no
    code = ("import importlib.util, runpy, sys\n"
            "find = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'torch' else find(name, *a)\n"
            "sys.argv = ['fine_tune.py', '--quick']\n"
            f"runpy.run_path({str(ROOT / 'examples' / 'fine_tune.py')!r}, run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=_checkout_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("skipped: this example needs torch"), out.stdout
