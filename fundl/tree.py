"""Pytree utilities over nested dicts, lists and tuples.

A pytree is a leaf (usually a numpy array or a number) or a container: a
``dict`` (string keys), a ``list`` or a ``tuple`` (named tuples included) of
pytrees.  ``None`` is an empty container (it holds no leaves).  Paths are
readable strings like ``"dense_0/w"`` (dict keys, list/tuple indices, or
named-tuple field names, joined by ``/``).

Dict order: results follow the key order of the first tree; other trees passed
alongside it must have the same keys (in any order).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, NamedTuple, Sequence, Tuple

import numpy as np

__all__ = [
    "TreeError", "TreeDef", "map", "leaves", "flatten", "unflatten", "structure",
    "flatten_with_paths", "unflatten_from_paths", "paths", "map_with_paths", "zeros_like",
    "global_norm", "cast", "size", "all_equal", "is_namedtuple", "join_path", "shapes",
    "ShapeDtype", "replace_at",
]

_builtin_map = map


class TreeError(ValueError):
    """Trees whose structures differ; the message names the first differing path."""


def is_namedtuple(x: Any) -> bool:
    """Whether ``x`` is a named tuple (a tuple with ``_fields``)."""
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _is_node(x: Any) -> bool:
    return x is None or isinstance(x, (dict, list, tuple))


def _children(node: Any) -> List[Tuple[str, Any]]:
    """(path component, child) pairs of a container."""
    if node is None:
        return []
    if isinstance(node, dict):
        return [(str(k), v) for k, v in node.items()]
    if is_namedtuple(node):
        return list(zip(node._fields, node))
    return [(str(i), v) for i, v in enumerate(node)]


def _rebuild(node: Any, values: Sequence[Any]) -> Any:
    """A container like ``node`` holding ``values`` in ``_children`` order."""
    if node is None:
        return None
    if isinstance(node, dict):
        return dict(zip(node.keys(), values))
    if is_namedtuple(node):
        return type(node)(*values)
    if isinstance(node, tuple):
        return tuple(values)
    return list(values)


def join_path(prefix: str, part: str) -> str:
    """``prefix/part``, or ``part`` at the root: how leaf paths are spelled."""
    return f"{prefix}/{part}" if prefix else part


def _describe(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, dict):
        return f"dict with keys {sorted(_builtin_map(str, x.keys()))}"
    if is_namedtuple(x):
        return f"{type(x).__name__} with fields {list(x._fields)}"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of length {len(x)}"
    return "a leaf"


def _mismatch(path: str, first: Any, other: Any) -> TreeError:
    where = path or "<root>"
    return TreeError(f"tree structures differ at '{where}': {_describe(first)} vs {_describe(other)}")


def _same_node(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, dict):
        return isinstance(b, dict) and len(a) == len(b) and all(k in b for k in a)
    if is_namedtuple(a) or is_namedtuple(b):   # named tuples: the same type (AdamState is
        return type(a) is type(b)               # not AdamaxState, though their fields match)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b)
    return not _is_node(b)


def map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` to the leaves of ``tree`` (and the matching leaves of ``rest``).

    Returns a tree shaped like ``tree``.  Raises :class:`TreeError` naming the
    first path at which a tree in ``rest`` differs in structure.
    """
    if not rest:
        return _map1(fn, tree)
    result = _map2(fn, tree, rest[0]) if len(rest) == 1 else _map_many(fn, tree, rest)
    if result is _MISMATCH:  # differing structures, or containers the fast path does not take
        return _map_checked(fn, "", tree, rest)
    return result


class _Mismatch:
    __slots__ = ()


_MISMATCH = _Mismatch()


def _map1(fn: Callable[..., Any], node: Any) -> Any:
    if type(node) is dict:  # the common case first: params are nested dicts
        return {k: _map1(fn, v) for k, v in node.items()}
    if not _is_node(node):
        return fn(node)
    return _rebuild(node, [_map1(fn, child) for _, child in _children(node)])


def _map2(fn: Callable[..., Any], node: Any, other: Any) -> Any:
    """:func:`_map_many` with one other tree (an optimizer's params and grads): dicts
    without building a tuple per node."""
    if type(node) is dict:
        if type(other) is not dict or len(other) != len(node):
            return _MISMATCH
        out = {}
        for k, v in node.items():
            w = other.get(k, _MISMATCH)
            if type(v) is np.ndarray and type(w) is np.ndarray:  # two leaves
                out[k] = fn(v, w)
                continue
            value = _MISMATCH if w is _MISMATCH else _map2(fn, v, w)
            if value is _MISMATCH:
                return _MISMATCH
            out[k] = value
        return out
    return _map_many(fn, node, (other,))


def _map_many(fn: Callable[..., Any], node: Any, others: Tuple[Any, ...]) -> Any:
    """Like :func:`map`, or ``_MISMATCH`` as soon as the structures differ (fast path)."""
    if type(node) is dict:  # the common case first: params are nested dicts
        n = len(node)
        for o in others:
            if type(o) is not dict or len(o) != n:
                return _MISMATCH
        out = {}
        try:
            for k, v in node.items():
                value = _map_many(fn, v, tuple(o[k] for o in others))
                if value is _MISMATCH:
                    return _MISMATCH
                out[k] = value
        except KeyError:
            return _MISMATCH
        return out
    for other in others:
        if not _same_node(node, other):
            return _MISMATCH
    if not _is_node(node):
        return fn(node, *others)
    values = []
    for i, (_, child) in enumerate(_children(node)):
        value = _map_many(fn, child, tuple(o[i] for o in others))
        if value is _MISMATCH:
            return _MISMATCH
        values.append(value)
    return _rebuild(node, values)


def _map_checked(fn: Callable[..., Any], path: str, node: Any, others: Tuple[Any, ...]) -> Any:
    """:func:`map` with a structure check at every node that names the path of a mismatch."""
    for other in others:
        if not _same_node(node, other):
            raise _mismatch(path, node, other)
    if not _is_node(node):
        return fn(node, *others)
    if isinstance(node, dict):
        return {k: _map_checked(fn, join_path(path, str(k)), v, tuple(o[k] for o in others))
                for k, v in node.items()}
    values = [_map_checked(fn, join_path(path, name), child, tuple(o[i] for o in others))
              for i, (name, child) in enumerate(_children(node))]
    return _rebuild(node, values)


def _walk(path: str, node: Any) -> Iterator[Tuple[str, Any]]:
    if _is_node(node):
        for name, child in _children(node):
            yield from _walk(join_path(path, name), child)
    else:
        yield path, node


def flatten_with_paths(tree: Any) -> List[Tuple[str, Any]]:
    """``[(path, leaf), ...]`` in a fixed order (dict insertion order)."""
    return list(_walk("", tree))


def paths(tree: Any) -> List[str]:
    """The paths of the leaves, in :func:`flatten` order."""
    return [p for p, _ in _walk("", tree)]


def leaves(tree: Any) -> List[Any]:
    """The leaves, in a fixed order (dict insertion order)."""
    out: List[Any] = []
    _collect(tree, out)
    return out


def _collect(node: Any, out: List[Any]) -> None:
    if type(node) is dict:  # the common case first: params are nested dicts of arrays
        for child in node.values():
            if type(child) is np.ndarray:
                out.append(child)
            else:
                _collect(child, out)
    elif _is_node(node):
        for _, child in _children(node):
            _collect(child, out)
    else:
        out.append(node)


class TreeDef(NamedTuple):
    """The structure of a pytree: the tree with every leaf replaced by ``LEAF``.

    ``skeleton`` uses the ``LEAF`` marker for leaves so that a ``None``
    container and a leaf can be told apart.  :meth:`leaves_of` and
    :meth:`unflatten` let a per-leaf computation (an optimizer step) walk
    each tree once: flatten the first tree, take the matching leaves of the
    others in its order, compute on lists, rebuild once.
    """

    skeleton: Any
    num_leaves: int

    def __repr__(self) -> str:
        return f"TreeDef({self.skeleton!r}, num_leaves={self.num_leaves})"

    def unflatten(self, leaf_values: Sequence[Any]) -> Any:
        """A tree of this structure holding ``leaf_values`` (in flatten order)."""
        if len(leaf_values) != self.num_leaves:
            raise TreeError(f"unflatten expected {self.num_leaves} leaves, got {len(leaf_values)}")
        it = iter(leaf_values)
        return _fill(self.skeleton, it)

    def leaves_of(self, tree: Any) -> List[Any]:
        """The leaves of ``tree`` in this structure's order (dict keys may be in any order).

        Raises :class:`TreeError` naming the first path where ``tree`` differs.
        """
        out: List[Any] = []
        if not _gather(self.skeleton, tree, out):
            out = []
            _gather_checked(self.skeleton, tree, "", out)
        return out


class _Leaf:
    __slots__ = ()

    def __repr__(self) -> str:
        return "*"

    def __reduce__(self):
        return (_leaf_marker, ())


LEAF = _Leaf()


def _leaf_marker() -> _Leaf:
    return LEAF


def _skeleton(node: Any, out: List[Any]) -> Any:
    """``node``'s skeleton, appending its leaves to ``out`` (one walk)."""
    if type(node) is dict:  # the common case first: params are nested dicts of arrays
        skel = {}
        for k, v in node.items():
            if type(v) is np.ndarray:
                out.append(v)
                skel[k] = LEAF
            else:
                skel[k] = _skeleton(v, out)
        return skel
    if not _is_node(node):
        out.append(node)
        return LEAF
    return _rebuild(node, [_skeleton(child, out) for _, child in _children(node)])


def _fill(skel: Any, it: Iterator[Any]) -> Any:
    if skel is LEAF:
        return next(it)
    if type(skel) is dict:
        return {k: next(it) if v is LEAF else _fill(v, it) for k, v in skel.items()}
    return _rebuild(skel, [_fill(child, it) for _, child in _children(skel)])


def _gather(skel: Any, node: Any, out: List[Any]) -> bool:
    """Append ``node``'s leaves in ``skel``'s order; False as soon as the structures differ."""
    if type(skel) is dict:
        if type(node) is not dict or len(node) != len(skel):
            return False
        for k, s in skel.items():
            v = node.get(k, _MISMATCH)
            if s is LEAF:
                if type(v) is not np.ndarray and (v is _MISMATCH or _is_node(v)):
                    return False
                out.append(v)
            elif type(s) is dict and not s:  # an empty dict (a layer without params)
                if type(v) is not dict or v:
                    return False
            elif v is _MISMATCH or not _gather(s, v, out):
                return False
        return True
    if skel is LEAF:
        if _is_node(node):
            return False
        out.append(node)
        return True
    if skel is None:
        return node is None
    if type(node) is not type(skel) or len(node) != len(skel):  # tuples, named tuples, lists
        return False
    for s, v in zip(skel, node):
        if s is LEAF:
            if type(v) is not np.ndarray and _is_node(v):
                return False
            out.append(v)
        elif not _gather(s, v, out):
            return False
    return True


def _gather_checked(skel: Any, node: Any, path: str, out: List[Any]) -> None:
    """:func:`_gather` that raises a :class:`TreeError` naming the first differing path."""
    first = None if skel is LEAF else skel
    if skel is LEAF:
        if _is_node(node):
            raise TreeError(f"tree structures differ at '{path or '<root>'}': "
                            f"a leaf vs {_describe(node)}")
        out.append(node)
        return
    if not _same_node(first, node):
        raise _mismatch(path, first, node)
    if isinstance(skel, dict):
        for k, s in skel.items():
            _gather_checked(s, node[k], join_path(path, str(k)), out)
        return
    for (name, s), v in zip(_children(skel), node):
        _gather_checked(s, v, join_path(path, name), out)


def structure(tree: Any) -> TreeDef:
    """The :class:`TreeDef` of ``tree``."""
    return flatten(tree)[1]


def flatten(tree: Any) -> Tuple[List[Any], TreeDef]:
    """``(leaves, treedef)`` in one walk; :func:`unflatten` inverts it."""
    out: List[Any] = []
    skeleton = _skeleton(tree, out)
    return out, TreeDef(skeleton, len(out))


def unflatten(treedef: TreeDef, leaf_values: Sequence[Any]) -> Any:
    """Rebuild a tree of ``treedef``'s structure from leaves in flatten order."""
    return treedef.unflatten(list(leaf_values))


def map_with_paths(fn: Callable[..., Any], first: Any, *rest: Any) -> Any:
    """Like :func:`map`, but ``fn(path, leaf, *other_leaves)`` also gets the leaf's path."""
    leaves_, treedef = flatten(first)
    others = [treedef.leaves_of(t) for t in rest]
    return treedef.unflatten([fn(path, *xs) for path, xs in
                              zip(paths(first), zip(leaves_, *others))])


def unflatten_from_paths(like: Any, pairs: Any) -> Any:
    """Rebuild a tree shaped like ``like`` from ``(path, leaf)`` pairs or a path dict.

    Raises :class:`TreeError` naming a path of ``like`` that is missing, or a
    path in ``pairs`` that ``like`` does not have.
    """
    table = dict(pairs)
    wanted = paths(like)
    missing = [p for p in wanted if p not in table]
    if missing:
        raise TreeError(f"no value for path '{missing[0]}'"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(table) - set(wanted))
    if extra:
        raise TreeError(f"unexpected path '{extra[0]}'"
                        + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    return unflatten(structure(like), [table[p] for p in wanted])


def zeros_like(tree: Any) -> Any:
    """A tree of zero arrays with the shapes and dtypes of ``tree``'s leaves."""
    return map(np.zeros_like, tree)


def global_norm(tree: Any) -> float:
    """The L2 norm of all leaves taken together (a Python float, computed in float64)."""
    total = 0.0
    for leaf in leaves(tree):
        a = np.asarray(leaf)
        flat = a.reshape(-1)
        total += (float(np.dot(flat, flat)) if a.dtype.kind == "f"
                  else float(np.sum(np.square(a, dtype=np.float64))))
    return float(np.sqrt(total))


def cast(tree: Any, dtype: Any) -> Any:
    """Cast every floating-point leaf to ``dtype``; other leaves are kept as they are."""
    dtype = np.dtype(dtype)

    def one(leaf: Any) -> Any:
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f":
            return leaf.astype(dtype, copy=False) if leaf.dtype == dtype else leaf.astype(dtype)
        return leaf

    return map(one, tree)


def size(tree: Any) -> int:
    """Total number of elements over all leaves (the parameter count of params)."""
    return int(sum(np.size(leaf) for leaf in leaves(tree)))


def _leaf_equal(x: Any, y: Any) -> bool:
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    return bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))


def all_equal(a: Any, b: Any) -> bool:
    """True when the trees have the same structure and bit-identical leaves and dtypes."""
    try:
        return all(leaves(map(_leaf_equal, a, b)))
    except TreeError:
        return False


class ShapeDtype(NamedTuple):
    """An array's shape and dtype, shown as ``f32[8,16]`` (see :func:`shapes`)."""

    shape: Tuple[int, ...]
    dtype: np.dtype

    def __repr__(self) -> str:
        d = self.dtype
        short = "bool" if d.kind == "b" else f"{d.kind}{d.itemsize * 8}"  # f32, i64, u8
        return f"{short}[{','.join(str(n) for n in self.shape)}]"


def shapes(tree: Any) -> Any:
    """``tree`` with every array leaf replaced by its :class:`ShapeDtype`: a params tree
    shown by its shapes, ``{'dense_0': {'w': f32[8,16], 'b': f32[16]}}``."""
    return map(lambda a: ShapeDtype(a.shape, a.dtype) if isinstance(a, np.ndarray) else a, tree)


def replace_at(tree: Any, path: Sequence[Any], value: Any) -> Any:
    """``tree`` with ``value`` at ``path`` (a sequence of dict keys, the last one may be new;
    ``()`` is the root): new dicts along the path, the rest shared, nothing written."""
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = value if len(path) == 1 else replace_at(tree[path[0]], path[1:], value)
    return out
