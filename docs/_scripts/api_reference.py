"""The API reference, generated from fundl's source: one page per public module.

Which modules are public: ``fundl`` itself, every module or package directly under
``fundl/`` whose name does not start with ``_``, and every submodule that a public
package names in its ``__all__`` (``fundl.optim.schedules``, ``fundl.interop.torch``).
Their public names are their ``__all__``.  The other files of a subpackage
(``fundl/layers/dense.py``, ``fundl/io/checkpoint.py``...) are implementation files
whose public names the package re-exports.

Everything is read from the source with :mod:`ast`, nothing is imported: the
reference builds without numpy's import cost, without mpi4py or torch, and a new
module or a new name in an ``__all__`` gets its entry without anyone editing the
docs.  Each object is documented once, on the page of the public module closest
to where it is defined (``fundl.dense`` on the ``fundl.layers`` page, ``fundl.Loss``
on ``fundl.losses``); the other pages that export it link there.

This file is also the mkdocs hook (``hooks:`` in ``mkdocs.yml``): ``on_config``
adds the pages to the navigation and ``on_files`` hands them to mkdocs.
``tests/test_docs.py`` imports it to check that every public name has its entry.
"""

from __future__ import annotations

import ast
import functools
import pathlib
import re
from typing import Dict, List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = "fundl"
REFERENCE_DIR = "reference"
NAV_TITLE = "API reference"

Target = Tuple[str, str, str]   # ("object", defining module, name) or ("module", module, "")


@functools.lru_cache(maxsize=None)
def module_paths(root: pathlib.Path = ROOT) -> Dict[str, pathlib.Path]:
    """Every module of the package: dotted name -> file (``__init__.py`` for a package)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


@functools.lru_cache(maxsize=None)
def _tree(module: str, root: pathlib.Path = ROOT) -> ast.Module:
    return ast.parse(module_paths(root)[module].read_text(encoding="utf-8"))


def _top_level(body):
    """The module's top-level statements, including those inside ``if``/``try`` blocks."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _top_level(block)
            for handler in node.handlers:
                yield from _top_level(handler.body)
        else:
            yield node


def exports(module: str, root: pathlib.Path = ROOT) -> Optional[List[str]]:
    """The module's ``__all__`` (a literal list or tuple of strings), or None without one."""
    for node in _top_level(_tree(module, root).body):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = ast.literal_eval(node.value)
            if not all(isinstance(v, str) for v in value):
                raise ValueError(f"{module}.__all__ must be a literal list of strings")
            return list(value)
    return None


def _is_package(module: str, root: pathlib.Path = ROOT) -> bool:
    return module_paths(root)[module].name == "__init__.py"


@functools.lru_cache(maxsize=None)
def _bindings(module: str, root: pathlib.Path = ROOT) -> Dict[str, Tuple]:
    """Top-level names of ``module``: ("def", node) or ("from", source module, name)."""
    out: Dict[str, Tuple] = {}
    package = module if _is_package(module, root) else module.rpartition(".")[0]
    for node in _top_level(_tree(module, root).body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = ("def", node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = ("def", node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                out[alias.asname or alias.name] = ("from", source, alias.name)
    return out


def resolve(module: str, name: str, root: pathlib.Path = ROOT, _depth: int = 0) -> Target:
    """Where ``module.name`` comes from: the module that defines it, or the submodule it is."""
    if _depth > 20:
        raise ValueError(f"import cycle resolving {module}.{name}")
    binding = _bindings(module, root).get(name)
    submodule = f"{module}.{name}"
    if binding is None:
        if submodule in module_paths(root):
            return ("module", submodule, "")
        raise ValueError(f"{module} exports {name!r} but does not define or import it")
    if binding[0] == "def":
        return ("object", module, name)
    _, source, original = binding
    if source == module or (source in module_paths(root)
                            and original not in _bindings(source, root)
                            and f"{source}.{original}" in module_paths(root)):
        return ("module", f"{source}.{original}", "")
    if source not in module_paths(root):
        raise ValueError(f"{module}.{name} comes from outside fundl ({source})")
    return resolve(source, original, root, _depth + 1)


@functools.lru_cache(maxsize=None)
def public_modules(root: pathlib.Path = ROOT) -> Tuple[str, ...]:
    """``fundl`` first, then the other public modules in alphabetical order."""
    paths = module_paths(root)
    found = {PACKAGE}
    for name in paths:
        parts = name.split(".")
        if len(parts) == 2 and not parts[1].startswith("_"):
            found.add(name)
    queue = sorted(found)
    while queue:
        module = queue.pop()
        if not _is_package(module, root):
            continue
        for name in exports(module, root) or []:
            kind, target, _ = resolve(module, name, root)
            if kind == "module" and target not in found and target.startswith(module + "."):
                found.add(target)
                queue.append(target)
    return (PACKAGE,) + tuple(sorted(found - {PACKAGE}))


def public_names(root: pathlib.Path = ROOT) -> Dict[str, List[str]]:
    """Every public module's ``__all__`` (empty for a public module without one)."""
    return {m: exports(m, root) or [] for m in public_modules(root)}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


@functools.lru_cache(maxsize=None)
def canonical_pages(root: pathlib.Path = ROOT) -> Dict[Tuple[str, str], str]:
    """For each exported object (defining module, name): the page that documents it.

    Among the public modules that export it, the one that shares the longest
    dotted prefix with the module that defines it, the deepest one on a tie.
    """
    exporters: Dict[Tuple[str, str], List[str]] = {}
    for module, names in public_names(root).items():
        for name in names:
            kind, defmodule, defname = resolve(module, name, root)
            if kind == "object":
                exporters.setdefault((defmodule, defname), []).append(module)
    return {key: max(mods, key=lambda m: (_common_prefix(m, key[0]), m.count("."), m))
            for key, mods in exporters.items()}


def _summary(defmodule: str, defname: str, root: pathlib.Path = ROOT) -> str:
    """The first line of the object's docstring (empty for a constant or a type alias)."""
    binding = _bindings(defmodule, root).get(defname)
    node = binding[1] if binding and binding[0] == "def" else None
    doc = ast.get_docstring(node) if isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else None
    return _first_paragraph(doc)


_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")


def _first_paragraph(doc: Optional[str]) -> str:
    """A docstring's first paragraph on one line, for a table cell (reST roles as code)."""
    if not doc:
        return ""
    text = doc.strip().split("\n\n")[0].replace("\n", " ")
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return re.sub(r"(\S)::$", r"\1:", text).replace("|", "\\|")


def anchor(page: str, name: str) -> str:
    """The identifier an object documented on ``page`` as ``name`` is linked by."""
    return f"{page}.{name}"


def page_path(module: str) -> str:
    return f"{REFERENCE_DIR}/{module}.md"


def render_module(module: str, root: pathlib.Path = ROOT) -> str:
    """The markdown of one module's reference page."""
    canon = canonical_pages(root)
    public = set(public_modules(root))
    lines = [f"# `{module}`", "",
             f"::: {module}", "    options:", "      members: false",
             "      show_root_heading: false", "      show_root_toc_entry: false", ""]
    documented, elsewhere, modules = [], [], []
    for name in exports(module, root) or []:
        kind, target, defname = resolve(module, name, root)
        if kind == "module":
            modules.append((name, target))
        elif canon[(target, defname)] == module:
            documented.append((name, target, defname))
        else:
            elsewhere.append((name, target, defname))
    if modules:
        lines += ["## Modules", "", "| name | module |", "| --- | --- |"]
        for name, target in modules:
            link = f"[`{target}`]({target}.md)" if target in public else f"`{target}`"
            lines.append(f"| `{name}` | {link} |")
        lines.append("")
    if elsewhere:
        title = "Names" if module == PACKAGE else "Also exported here"
        lines += [f"## {title}", "",
                  "Documented on the page of the module closest to where each is defined.", "",
                  "| name | documented as | |", "| --- | --- | --- |"]
        for name, target, defname in elsewhere:
            where = anchor(canon[(target, defname)], defname)
            lines.append(f"| `{name}` | [`{where}`][{target}.{defname}] | "
                         f"{_summary(target, defname, root)} |")
        lines.append("")
    for name, target, defname in documented:
        public_id = anchor(module, name)
        if public_id != f"{target}.{defname}":
            lines.append(f"[](){{#{public_id}}}")
        lines += [f"::: {target}.{defname}", "    options:", f'      heading: "{public_id}"',
                  f'      toc_label: "{name}"', ""]
    return "\n".join(lines) + "\n"


def render_index(root: pathlib.Path = ROOT) -> str:
    lines = ["# API reference", "",
             "Generated from the source (`docs/_scripts/api_reference.py`): one page per "
             "public module, listing its `__all__`. Each object is documented once, on the "
             "page of the public module closest to where it is defined; the other modules "
             "that export it link there.", "",
             "| module | |", "| --- | --- |"]
    for module in public_modules(root):
        first = _first_paragraph(ast.get_docstring(_tree(module, root)))
        lines.append(f"| [`{module}`]({module}.md) | {first} |")
    return "\n".join(lines) + "\n"


def pages(root: pathlib.Path = ROOT) -> Dict[str, str]:
    """Every generated page: path under ``docs/`` -> markdown."""
    out = {f"{REFERENCE_DIR}/index.md": render_index(root)}
    for module in public_modules(root):
        out[page_path(module)] = render_module(module, root)
    return out


# ---- the mkdocs hook ---------------------------------------------------------------------

def on_config(config):
    """Put the reference pages into the navigation, after the hand-written pages."""
    entries = [{"Overview": f"{REFERENCE_DIR}/index.md"}]
    entries += [{module: page_path(module)} for module in public_modules()]
    config["nav"] = [item for item in (config.get("nav") or [])
                     if not (isinstance(item, dict) and NAV_TITLE in item)]
    config["nav"].append({NAV_TITLE: entries})
    return config


def on_files(files, config):
    """Add the generated pages to the site's files."""
    from mkdocs.structure.files import File

    for path, text in pages().items():
        files.append(File.generated(config, path, content=text))
    return files
