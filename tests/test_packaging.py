"""Release hygiene: the license, the one version, the declared dependencies and the changelog."""

import importlib.metadata
import os
import pathlib
import re
import tomllib

import numpy as np
import pytest

import fundl

ROOT = pathlib.Path(__file__).resolve().parents[1]


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def test_license_is_an_spdx_expression_with_its_file():
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the fundl developers" in text
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"]), \
        "PEP 639: an SPDX license expression replaces the license classifiers"


def test_the_version_is_written_once():
    from fundl import _version
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == \
        {"attr": "fundl._version.__version__"}
    assert fundl.__version__ is _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", fundl.__version__)
    other = [p for p in (ROOT / "fundl").rglob("*.py")
             if p.name != "_version.py" and re.search(r"__version__\s*=", p.read_text())]
    assert not other, f"a second place writes the version: {other}"


def test_the_installed_metadata_has_the_imported_version():
    # CI sets FUNDL_TEST_INSTALLED=1 when it runs the suite against the installed wheel:
    # then the imported fundl must be that wheel's, not a source tree's.
    required = os.environ.get("FUNDL_TEST_INSTALLED") == "1"
    try:
        dist = importlib.metadata.distribution("fundl")
    except importlib.metadata.PackageNotFoundError:
        assert not required, "FUNDL_TEST_INSTALLED=1 but fundl is not installed"
        pytest.skip("fundl is not installed (tests run from the source tree)")
    installed = pathlib.Path(dist.locate_file("fundl/__init__.py")).resolve()
    if installed != pathlib.Path(fundl.__file__).resolve():
        assert not required, f"FUNDL_TEST_INSTALLED=1 but fundl comes from {fundl.__file__}"
        pytest.skip(f"the imported fundl ({fundl.__file__}) is not the installed one ({installed})")
    assert dist.version == fundl.__version__
    assert dist.metadata["License-Expression"] == "MIT"
    # a wheel installs it as .dist-info/licenses/LICENSE; a checkout's .egg-info lists it
    assert any(pathlib.PurePath(str(f)).name == "LICENSE" for f in dist.files or []), \
        "LICENSE is not among the installed files"


def test_dependencies_are_numpy_only_and_its_floor_holds():
    assert PROJECT["dependencies"] == ["numpy>=2.3"]
    assert PROJECT["requires-python"].startswith(">=3.11")
    floor = (2, 3)
    assert tuple(int(p) for p in np.__version__.split(".")[:2]) >= floor
    users = [p for p in (ROOT / "fundl").rglob("*.py") if "typing_extensions" in p.read_text()]
    assert not users, f"typing_extensions is not a dependency, but {users} use it"


def test_the_changes_live_in_the_changelog():
    readme = (ROOT / "README.md").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "[CHANGELOG.md](CHANGELOG.md)" in readme
    section = readme.split("## Changes\n", 1)[1].split("\n## ", 1)[0]
    assert section.strip() == "What changed between versions is in [CHANGELOG.md](CHANGELOG.md)."
    assert changelog.startswith("# Changelog\n")
    assert "## Unreleased" in changelog and "One argument order for updates" in changelog


def test_import_fundl_loads_no_optional_part(tmp_path):
    """``import fundl`` loads the core only: io, perf, interop, export and datasets, and the
    standard modules for files, hashing and processes they need, load on first use."""
    import subprocess
    import sys
    code = ("import sys, numpy; before = set(sys.modules); import fundl; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(fundl.__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert "fundl.step" in out and "fundl.fit" in out
    for lazy in ("fundl.io", "fundl.perf", "fundl.interop", "fundl.export", "fundl.datasets",
                 "fundl.surgery", "fundl.testing", "json", "csv", "hashlib", "socket", "secrets",
                 "subprocess", "html"):
        assert lazy not in out, f"import fundl loaded {lazy}"
