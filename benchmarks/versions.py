"""Two versions of fundl in one process: this checkout's and another checkout's.

``load(path)`` imports the ``fundl`` package found under ``path`` (a checkout, e.g. a
``git worktree`` of an older commit) as the module ``fundl_<tag>``, beside the current
one, so that a refactoring can be compared with the code it replaced in the same
process: the same results bit for bit (:mod:`benchmarks.same_results`), the step's
fixed cost interleaved (``python3 -m benchmarks.overhead --against PATH``).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Dict


def load(path: str, tag: str = "other") -> ModuleType:
    """The ``fundl`` package of the checkout at ``path``, imported as ``fundl_<tag>``."""
    root = pathlib.Path(path).resolve() / "fundl"
    if not (root / "__init__.py").exists():
        raise FileNotFoundError(f"no fundl package under {path}")
    name = f"fundl_{tag}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def workloads_for(other: ModuleType) -> ModuleType:
    """A copy of :mod:`benchmarks.workloads` whose models, steps and optimizers are those of
    the fundl module ``other`` (as :func:`load` imported it): its source runs once with
    ``fundl`` and its submodules standing for ``other``'s, then they are put back."""
    prefix = other.__name__ + "."
    stand_ins: Dict[str, ModuleType] = {"fundl": other}
    stand_ins.update({"fundl." + name[len(prefix):]: module
                      for name, module in list(sys.modules.items()) if name.startswith(prefix)})
    saved = {name: sys.modules.get(name) for name in stand_ins}
    here = pathlib.Path(__file__).resolve().parent
    name = f"benchmarks.workloads_{other.__name__}"
    try:
        sys.modules.update(stand_ins)
        spec = importlib.util.spec_from_file_location(name, here / "workloads.py")
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "benchmarks"
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        for key, was in saved.items():
            if was is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = was
    return module
