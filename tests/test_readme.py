"""The README's code runs as shown (shortened training), and CI runs its test command."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^(python3 -m pip install \S+.*pytest.*)$", README, re.M)
    assert commands, "README must show the test command"
    assert commands[0] in ci.splitlines()


def test_quickstart_and_loop_run(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d", reason="the quickstart uses the optional mnist1d package")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUNDL_CACHE", str(tmp_path / "cache"))
    quickstart, loop = BLOCKS[0], BLOCKS[1]
    code = (quickstart + loop).replace("epochs=20", "epochs=1").replace("range(20)", "range(1)")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["ts"].step == 40
    assert (tmp_path / "cnn.npz").exists()


def test_custom_layer_snippet_runs():
    block = next(b for b in BLOCKS if "scaled_tanh" in b)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["model"].name == "serial"
