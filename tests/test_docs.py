"""The documentation runs: every ```python block of every docs page and of README.md.

The blocks of one page run in order in one namespace, as a reader would run them, in a
fresh working directory (a page may write files) with one MNIST-1D cache for the session.
Two markers, an HTML comment on the line right before a fence, change that:

- ``<!-- notest: REASON -->``: the block is not run here (it needs ``mpiexec``, say);
  it shows as a skipped test with its reason (``pytest -ra`` prints it);
- ``<!-- requires: MODULE[, MODULE] -->``: the block runs only where those modules
  import (optional extras: ``mnist1d``, ``torch``); otherwise it is skipped, saying so.
  A later block that uses its names carries the same marker.

Each block is its own test item; a failing block names its page and line.  The API
reference is checked here too: every public name has its entry, and (when mkdocs and
its plugins are installed) the site builds with ``--strict`` and has an anchor for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import traceback
from typing import Dict, List, Optional, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_scripts" not in p.parts) + [ROOT / "README.md"]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```[ \t]*$",
                    re.M | re.S)
_MARKER = re.compile(r"<!--\s*(notest|requires)\s*:\s*(.*?)\s*-->[ \t]*\n[ \t]*\Z", re.S)


@dataclasses.dataclass(frozen=True)
class Block:
    page: pathlib.Path
    index: int                  # among the page's python blocks
    line: int                   # of the opening fence
    code: str
    marker: Optional[Tuple[str, str]]

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks(page: pathlib.Path) -> List[Block]:
    """The page's ```python blocks with the marker before each (if any)."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for m in _FENCE.finditer(text):
        info = m.group("info").strip()
        if info != "python":
            assert not info.lower().startswith(("py", "ipython")), (
                f"{page.relative_to(ROOT)}: a ```{info} block would escape the tests: "
                "write ```python")
            continue
        indent = m.group("indent")
        code = "".join(line[len(indent):] if line.startswith(indent) else line
                       for line in m.group("code").splitlines(keepends=True))
        before = text[max(0, m.start() - 500):m.start()]
        marker = _MARKER.search(before)
        blocks.append(Block(page, len(blocks), text.count("\n", 0, m.start()) + 1, code,
                            (marker.group(1), marker.group(2)) if marker else None))
    return blocks


BLOCKS = [b for page in PAGES for b in python_blocks(page)]


def _missing(modules: str) -> List[str]:
    return [m.strip() for m in modules.split(",")
            if m.strip() and importlib.util.find_spec(m.strip()) is None]


@pytest.fixture(scope="session")
def page_runner(tmp_path_factory):
    """Runs each page once (on first use) and returns its blocks' outcomes."""
    cache = tmp_path_factory.mktemp("fundl_cache")
    results: Dict[pathlib.Path, List[Tuple[str, str]]] = {}

    def run(page: pathlib.Path) -> List[Tuple[str, str]]:
        if page in results:
            return results[page]
        workdir = tmp_path_factory.mktemp(page.stem)
        namespace: dict = {"__name__": "__docs__"}
        outcomes: List[Tuple[str, str]] = []
        stop: Optional[str] = None
        old_cwd, old_cache = os.getcwd(), os.environ.get("FUNDL_CACHE")
        os.chdir(workdir)
        os.environ["FUNDL_CACHE"] = str(cache)
        try:
            for block in python_blocks(page):
                kind, arg = block.marker or ("", "")
                if kind == "notest":
                    outcomes.append(("skip", f"notest: {arg}"))
                    continue
                if stop:
                    outcomes.append(("skip", stop))
                    continue
                missing = _missing(arg) if kind == "requires" else []
                if missing:        # the blocks that use its names say so with their own marker
                    outcomes.append(("skip", f"needs {', '.join(missing)} (not installed)"))
                    continue
                out = io.StringIO()
                try:
                    with contextlib.redirect_stdout(out):
                        exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)
                except BaseException:          # noqa: BLE001 - reported as this block's failure
                    outcomes.append(("fail", traceback.format_exc() + "\nstdout:\n"
                                     + out.getvalue()[-3000:]))
                    stop = f"an earlier block (line {block.line}) of {page.name} failed"
                else:
                    outcomes.append(("ok", out.getvalue()))
        finally:
            os.chdir(old_cwd)
            if old_cache is None:
                os.environ.pop("FUNDL_CACHE", None)
            else:
                os.environ["FUNDL_CACHE"] = old_cache
        results[page] = outcomes
        return outcomes

    return run


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs(block, page_runner):
    status, detail = page_runner(block.page)[block.index]
    if status == "skip":
        pytest.skip(detail)
    assert status == "ok", f"{block.id} failed:\n{detail}"


def test_every_page_has_runnable_code_or_says_why_not():
    assert len(PAGES) > 10
    for page in PAGES:
        for block in python_blocks(page):
            if block.marker:
                assert block.marker[1], f"{block.id}: a marker needs a reason or module names"
    runnable = [b for b in BLOCKS if not (b.marker and b.marker[0] == "notest")]
    assert len(runnable) >= 0.75 * len(BLOCKS)


def test_the_readme_blocks_are_all_collected():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(python_blocks(ROOT / "README.md")) == readme.count("```python\n") >= 6


# ---- the API reference ----------------------------------------------------------------------

def _api():
    spec = importlib.util.spec_from_file_location("api_reference",
                                                  DOCS / "_scripts" / "api_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_covers_the_public_modules():
    api = _api()
    modules = api.public_modules()
    for expected in ("fundl", "fundl.losses", "fundl.optim", "fundl.optim.schedules",
                     "fundl.random", "fundl.tree", "fundl.data", "fundl.datasets", "fundl.io",
                     "fundl.metrics", "fundl.perf", "fundl.initializers", "fundl.distributed",
                     "fundl.interop", "fundl.interop.torch", "fundl.testing", "fundl.summary"):
        assert expected in modules
    assert "fundl.layers.dense" not in modules and "fundl._version" not in modules
    # The static reading agrees with the modules' real __all__, read in a fresh process:
    # importing every module here would register builders (fundl.distributed's
    # sync_batch_norm) that later tests count.
    code = ("import importlib, importlib.util, json, sys\n"
            "out = {}\n"
            "for m in sys.argv[1:]:\n"
            "    if m == 'fundl.distributed' and importlib.util.find_spec('mpi4py') is None:\n"
            "        continue\n"
            "    out[m] = list(importlib.import_module(m).__all__)\n"
            "print(json.dumps(out))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # this fundl
    proc = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    real = json.loads(proc.stdout)
    assert len(real) >= len(modules) - 1
    for module, names in real.items():
        assert api.exports(module) == names, module


def test_every_public_name_has_its_reference_entry():
    api = _api()
    pages = api.pages()
    canonical = api.canonical_pages()
    count = 0
    for module, names in api.public_names().items():
        page = pages[api.page_path(module)]
        for name in names:
            kind, target, defname = api.resolve(module, name)
            if kind == "module":
                assert f"| `{name}` | [`{target}`]({target}.md) |" in page, (module, name)
            elif canonical[(target, defname)] == module:
                assert f"::: {target}.{defname}\n    options:\n      heading: " \
                       f"\"{module}.{name}\"" in page, (module, name)
            else:
                where = canonical[(target, defname)]
                assert f"| `{name}` | [`{where}.{defname}`][{target}.{defname}] |" \
                    in page, (module, name)
                assert f"::: {target}.{defname}\n" in pages[api.page_path(where)]
            count += 1
    assert count > 250


def _mkdocs_available() -> Optional[str]:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ModuleNotFoundError:
            return module
    return None


def test_the_site_builds_strict_with_an_anchor_for_every_public_name(tmp_path):
    missing = _mkdocs_available()
    if missing:
        pytest.skip(f"the docs build needs the docs extra ({missing} is missing): "
                    'pip install ".[docs]"')
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-d", str(site)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    api = _api()
    canonical = api.canonical_pages()
    for module, names in api.public_names().items():
        html = (site / "reference" / module / "index.html").read_text(encoding="utf-8")
        for name in names:
            kind, target, defname = api.resolve(module, name)
            if kind == "object" and canonical[(target, defname)] == module:
                assert f'id="{target}.{defname}"' in html, (module, name)
            elif kind == "object":
                where = canonical[(target, defname)]
                assert f'href="../{where}/#{target}.{defname}"' in html, (module, name)
    for page in PAGES[:-1]:
        rel = page.relative_to(DOCS).with_suffix("")
        built = site / (rel.parent if rel.name == "index" else rel) / "index.html"
        assert built.exists(), f"{page} was not built"
    shutil.rmtree(site)


# ---- pages that quote numbers kept elsewhere ---------------------------------------------------

def _table(text: str, header: str) -> List[str]:
    lines = text[text.index(header):].splitlines()
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    return lines[:end]


def test_the_benchmark_page_quotes_the_readme_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    page = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    header = "| workload | fundl | PyTorch eager |"
    table = _table(readme, header)
    assert len(table) >= 10 and _table(page, header) == table
