"""Masks: which parameters a transform touches, chosen by their paths.

A **mask** selects parameters by their path (as :func:`fundl.tree.paths`
spells it, e.g. ``"dense_0/w"`` or ``"serial_0/dense_1/b"``).  Every ``mask=``
of :mod:`fundl.optim` (:func:`~fundl.optim.add_weight_decay`,
:func:`~fundl.optim.adamw`, :func:`~fundl.optim.lion`, :func:`~fundl.optim.masked`,
:func:`~fundl.optim.freeze`) takes the same three forms, read by :func:`selector`:

- a predicate ``mask(path) -> bool``, e.g. ``lambda path: path.startswith("dense_0/")``;
  it must return a bool (``True``/``False``, a numpy bool): ``None``, a string
  or an array is a :class:`MaskError` naming the path and what it returned;
- a glob pattern or a list of them (:func:`fnmatch.fnmatchcase`, where ``*``
  also matches ``/``), e.g. ``"dense_0/*"`` or ``["dense_0/*", "*/b"]``: a path
  is selected when any pattern matches it.  A pattern that matches no path of
  a non-empty tree is an error (it is almost always a typo);
- a tree of bools with exactly the structure of the params (dict keys in any
  order), e.g. ``{"dense_0": {"w": True, "b": True}, "dense_2": {"w": False, "b": False}}``.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, List, Sequence, TypeGuard, Union

import numpy as np

from .. import tree

__all__ = ["Mask", "Labels", "MaskError", "selector", "labeller"]

Mask = Union[Callable[[str], bool], str, Sequence[str], Any]
"""A predicate on paths, a glob pattern or list of them, or a params-shaped tree of bools."""

Labels = Union[Callable[[str], str], Any]
"""A function ``path -> label`` or a params-shaped tree of labels (strings)."""

Select = Callable[[List[str], tree.TreeDef], List[bool]]


class MaskError(ValueError):
    """A mask or labels that do not fit the params; the message names the path."""


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_)) or (
        isinstance(v, np.ndarray) and v.dtype == np.bool_ and v.ndim == 0)


def _show(v: Any) -> str:
    """``v`` as a short description for an error: its type and value (arrays by shape and dtype)."""
    if isinstance(v, np.ndarray):
        return f"an array of shape {v.shape} and dtype {v.dtype}"
    text = repr(v)
    return f"{type(v).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _is_globs(mask: Any) -> TypeGuard[Union[str, Sequence[str]]]:
    return isinstance(mask, str) or (
        isinstance(mask, (list, tuple)) and not tree.is_namedtuple(mask)
        and len(mask) > 0 and all(isinstance(m, str) for m in mask))


def call(fn: Callable[[str], Any], path: str, where: str, what: str) -> Any:
    """``fn(path)``, an exception it raises re-raised as a :class:`MaskError` naming the path."""
    try:
        return fn(path)
    except Exception as e:  # re-raised with the path that made it fail
        raise MaskError(f"{where}: the {what} raised on path '{path}': "
                        f"{type(e).__name__}: {e}") from e


def tree_leaves(t: Any, treedef: tree.TreeDef, where: str, what: str) -> List[Any]:
    """The leaves of a params-shaped ``t`` in ``treedef``'s order, or a :class:`MaskError`."""
    try:
        return treedef.leaves_of(t)
    except tree.TreeError as e:
        raise MaskError(f"{where}: the {what} tree does not match the params "
                        f"(params vs {what}): {e}") from None


def check_mask(mask: Any, where: str) -> None:
    """Raise ``TypeError`` for a ``mask`` that is none of the three forms whatever the params
    (``None``, an empty string or list, a list mixing patterns and other things)."""
    if mask is None:
        raise TypeError(f"{where}: mask=None selects nothing; give a predicate path -> bool, "
                        "a glob pattern or a list of them, or a params-shaped tree of bools")
    if isinstance(mask, str) and not mask:
        raise MaskError(f"{where}: the mask is an empty pattern ''")
    if isinstance(mask, (list, tuple)) and not tree.is_namedtuple(mask) and \
            any(isinstance(m, str) for m in mask) and not _is_globs(mask):
        odd = next(m for m in mask if not isinstance(m, str))
        raise TypeError(f"{where}: a list of glob patterns must hold strings only, "
                        f"got {_show(odd)} in {mask!r}")


def selector(mask: Mask, where: str, invert: bool = False) -> Select:
    """``select(paths, treedef) -> [bool per leaf]`` for any form of ``mask`` (``invert``: its
    complement); ``where`` starts every error message (the optimizer's name)."""
    check_mask(mask, where)
    if _is_globs(mask):
        patterns = [mask] if isinstance(mask, str) else list(mask)

        def select(paths, treedef):
            hits = [[fnmatch.fnmatchcase(p, pat) for p in paths] for pat in patterns]
            for pat, h in zip(patterns, hits):
                if paths and not any(h):
                    shown = ", ".join(f"'{p}'" for p in paths[:4])
                    shown += ", ..." if len(paths) > 4 else ""
                    raise MaskError(f"{where}: the pattern '{pat}' matches no parameter path "
                                    f"(the paths are {shown})")
            return [any(col) != invert for col in zip(*hits)]
    elif callable(mask):
        def select(paths, treedef):
            out = []
            for p in paths:
                v = call(mask, p, where, "mask predicate")
                if not _is_bool(v):
                    raise MaskError(f"{where}: the mask predicate must return True or False, "
                                    f"got {_show(v)} for path '{p}'")
                out.append(bool(v) != invert)
            return out
    else:
        def select(paths, treedef):
            values = tree_leaves(mask, treedef, where, "mask")
            for p, v in zip(paths, values):
                if not _is_bool(v):
                    raise MaskError(f"{where}: the mask tree must hold True/False at every leaf, "
                                    f"got {_show(v)} at '{p}'")
            return [bool(v) != invert for v in values]
    return select


def labeller(labels: Labels, known: Dict[str, Any], where: str
             ) -> Callable[[List[str], tree.TreeDef], List[str]]:
    """``label_of(paths, treedef) -> [label per leaf]``, each a key of ``known``."""

    def check(path: str, label: Any) -> Any:
        try:
            ok = label in known
        except TypeError:  # unhashable
            ok = False
        if not ok:
            raise MaskError(f"{where}: label {label!r} of path '{path}' has no transform "
                            f"(the transforms are for labels {sorted(known)})")
        return label

    if callable(labels):
        def label_of(paths, treedef):
            return [check(p, call(labels, p, where, "labels function")) for p in paths]
    else:
        def label_of(paths, treedef):
            values = tree_leaves(labels, treedef, where, "labels")
            return [check(p, v) for p, v in zip(paths, values)]
    return label_of
