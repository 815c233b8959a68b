"""Params, state and optimizer state checked against what ``init`` produced.

A tree that does not match its model would otherwise be used silently: a bias
of shape ``(5, 3)`` broadcasts, an LSTM weight of the wrong height gives output
of the wrong width, a float64 leaf among float32 params stays float64.  A
:class:`TreeSpec` records the structure, shapes and dtypes of a tree once;
:meth:`TreeSpec.check` compares another tree with it in one walk and raises a
:class:`SpecError` that names the path (``params/dense_0/b``), the expected and
the actual shape and dtype, and lists missing and unexpected keys as
``load_state_dict`` does.

Floating-point leaves may be cast together to another float dtype (the
gradient checks run every model in float64): what must hold is that each
float dtype of the spec maps to one dtype of the tree.

:mod:`fundl.plan` keeps the specs of the trees a model's ``init`` made, per input
signature, and checks the params and state of every call against them.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import tree

__all__ = ["SpecError", "TreeSpec", "data_shapes"]


class SpecError(ValueError):
    """A tree that does not match the structure, shapes or dtypes it must have."""


class _Leaf:
    __slots__ = ("shape", "dtype", "kind")

    def __init__(self, value: Any) -> None:
        if isinstance(value, np.ndarray):
            self.shape, self.dtype, self.kind = value.shape, value.dtype, "array"
        else:
            self.shape, self.dtype, self.kind = None, None, type(value).__name__

    def describe(self) -> str:
        if self.kind == "array":
            return f"shape {self.shape}, dtype {self.dtype}"
        return f"a {self.kind}"


def _describe(value: Any) -> str:
    return _Leaf(value).describe()


def _node_paths(t: Any, prefix: str = "") -> List[str]:
    """Every path in ``t``: containers (dict keys) as well as leaves."""
    out: List[str] = []
    if isinstance(t, dict):
        for k, v in t.items():
            p = tree.join_path(prefix, str(k))
            out.append(p)
            out.extend(_node_paths(v, p))
    elif isinstance(t, (list, tuple)):
        names = getattr(t, "_fields", None) or [str(i) for i in range(len(t))]
        for name, v in zip(names, t):
            p = tree.join_path(prefix, name)
            out.append(p)
            out.extend(_node_paths(v, p))
    return out


class TreeSpec:
    """The structure, shapes and dtypes of a tree, recorded once (``TreeSpec(tree)``)."""

    def __init__(self, t: Any) -> None:
        values, self.treedef = tree.flatten(t)
        self.leaves = [_Leaf(v) for v in values]
        self.exact = [(leaf.shape, leaf.dtype) for leaf in self.leaves]
        self.paths = tree.paths(t)
        self.node_paths = _node_paths(t)
        self.is_exactly = _exact_test(t)

    def matches_exactly(self, t: Any) -> bool:
        """Whether ``t`` is nested dicts holding arrays of exactly the recorded shapes and
        dtypes (the fast test; ``False`` for trees with other containers)."""
        return self.is_exactly is not None and self.is_exactly(t)

    def matches(self, t: Any) -> bool:
        """Whether ``t`` matches (no exception, no message; :meth:`check` tries the exact
        test first)."""
        try:
            self.check(t)
        except SpecError:
            return False
        return True

    def check(self, t: Any, root: str = "params") -> None:
        """Raise :class:`SpecError` unless ``t`` matches this spec (see the module docstring)."""
        if self.is_exactly is not None and self.is_exactly(t):
            return  # the common case: nested dicts of arrays, all as made
        try:
            values = self.treedef.leaves_of(t)
        except tree.TreeError:
            raise self._structure_error(t, root) from None
        for value, (shape, dtype) in zip(values, self.exact):  # the common case: all as made
            if type(value) is not np.ndarray or value.shape != shape or (
                    value.dtype is not dtype and value.dtype != dtype):
                break
        else:
            return
        casts: Dict[Any, Any] = {}
        for value, spec, path in zip(values, self.leaves, self.paths):
            if spec.kind != "array":
                if isinstance(value, np.ndarray):
                    raise SpecError(f"{root}/{path}: expected {spec.describe()}, got "
                                    f"{_describe(value)}")
                continue
            if type(value) is not np.ndarray and not isinstance(value, np.ndarray):
                raise SpecError(f"{root}/{path}: expected an array of {spec.describe()}, got "
                                f"{_describe(value)}")
            if value.shape != spec.shape:
                raise SpecError(f"{root}/{path}: expected shape {spec.shape}, got shape "
                                f"{value.shape}")
            if value.dtype != spec.dtype:
                if not (spec.dtype.kind == value.dtype.kind == "f"):
                    raise SpecError(f"{root}/{path}: expected dtype {spec.dtype}, got dtype "
                                    f"{value.dtype}")
            if spec.dtype.kind == "f":
                seen = casts.setdefault(spec.dtype, (value.dtype, path))
                if seen[0] != value.dtype:
                    raise SpecError(
                        f"{root}/{path}: dtype {value.dtype} differs from {root}/{seen[1]} "
                        f"({seen[0]}); every float leaf must have one dtype -- cast the whole "
                        f"tree (fundl.tree.cast({root}, np.{seen[0]}))")

    def _structure_error(self, t: Any, root: str) -> SpecError:
        want, got = self.node_paths, _node_paths(t)
        got_set, want_set = set(got), set(want)
        missing = [p for p in want if p not in got_set]
        unexpected = [p for p in got if p not in want_set]
        parts = []
        if missing:
            parts.append("missing keys: " + ", ".join(f"{root}/{p}" for p in _top(missing)))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(f"{root}/{p}" for p in _top(unexpected)))
        if not parts:
            where, want_node, got_node = _kind_mismatch(self.treedef.skeleton, t)
            at = f"{root}/{where}" if where else root
            return SpecError(f"{at}: expected {_container(want_node)}, got {_container(got_node)}")
        return SpecError(f"{root} do not match the model: " + "; ".join(parts))


def _container(node: Any) -> str:
    name = type(node).__name__
    return f"{'an' if name[0] in 'AEIOUaeiou' else 'a'} {name}"


def _kind_mismatch(skeleton: Any, t: Any, path: str = "") -> Tuple[str, Any, Any]:
    """``(path, expected node, given node)`` of the first container of another type (a list
    for a tuple, an AdamState for an AdamaxState) where the keys and lengths agree."""
    if type(skeleton) is not type(t) and (isinstance(skeleton, (dict, list, tuple))
                                          or isinstance(t, (dict, list, tuple))):
        return path, skeleton, t
    if isinstance(skeleton, dict):
        for k, v in skeleton.items():
            found = _kind_mismatch(v, t[k], tree.join_path(path, str(k)))
            if found[0] is not None:
                return found
    elif isinstance(skeleton, (list, tuple)):
        names = getattr(skeleton, "_fields", None) or range(len(skeleton))
        for name, a, b in zip(names, skeleton, t):
            found = _kind_mismatch(a, b, tree.join_path(path, str(name)))
            if found[0] is not None:
                return found
    return None, skeleton, t  # type: ignore[return-value]


def _exact_test(t: Any) -> Optional[Callable[[Any], bool]]:
    """``is_exactly(other)``: whether ``other`` is nested dicts with the keys of ``t`` and arrays
    of exactly its shapes and dtypes; ``None`` unless ``t`` is nested dicts of arrays only (the
    params and state of most models).

    The walk is planned once: a flat list of the dicts (each found in its parent) and of the
    leaves (each found in its dict), so a test is two loops, with no call per node, no list of
    leaves and no exception; a tree without arrays (a state of empty dicts) is tested by
    dict equality.  Every checked ``apply``/``vjp`` of a model runs it first.
    """
    dicts: List[Tuple[int, Any, int]] = []            # (parent's index in nodes, key, len)
    leaves: List[Tuple[int, Any, Any, Any]] = []      # (dict's index in nodes, key, shape, dtype)

    def plan(d: Any, index: int) -> bool:
        for k, v in d.items():
            if type(v) is np.ndarray:
                leaves.append((index, k, v.shape, v.dtype))
            elif type(v) is dict:
                dicts.append((index, k, len(v)))
                if not plan(v, len(dicts)):
                    return False
            else:
                return False
        return True

    if type(t) is not dict or not plan(t, 0):
        return None
    if not leaves:
        skeleton = tree.map(lambda leaf: leaf, t)   # a copy of the nested (empty) dicts

        def is_empty_like(other: Any) -> bool:
            try:
                return type(other) is dict and other == skeleton
            except Exception:  # noqa: BLE001 - e.g. an array where {} belongs: not a match
                return False
        return is_empty_like
    size = len(t)

    def is_exactly(other: Any) -> bool:
        if type(other) is not dict or len(other) != size:
            return False
        nodes = [other]
        for parent, k, n in dicts:   # equal lengths and every key found: the same keys
            d = nodes[parent].get(k)
            if type(d) is not dict or len(d) != n:
                return False
            nodes.append(d)
        for index, k, shape, dtype in leaves:
            v = nodes[index].get(k)
            if type(v) is not np.ndarray or v.shape != shape or (
                    v.dtype is not dtype and v.dtype != dtype):
                return False
        return True

    return is_exactly


def _top(paths: List[str]) -> List[str]:
    """The outermost of ``paths`` (a missing ``dense_0`` hides its ``dense_0/w``)."""
    out: List[str] = []
    for p in paths:
        if not any(p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def data_shapes(x: Any) -> Any:
    """The per-example shape of a batch (a tuple of them for a tuple of batches)."""
    if isinstance(x, np.ndarray):
        return tuple(x.shape[1:])
    if isinstance(x, (tuple, list)):
        return tuple(data_shapes(a) for a in x)
    return None
