"""CI runs the README's test command (tests/test_docs.py runs the README's code blocks)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^(python3 -m pip install \S+.*pytest.*)$", README, re.M)
    assert commands, "README must show the test command"
    assert commands[0] in ci.splitlines()
