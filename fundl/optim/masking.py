"""Masking: train some parameters, freeze the others, give groups their own optimizer.

A **mask** selects parameters by their path: a predicate ``path -> bool``, a glob
pattern or a list of them, or a params-shaped tree of bools (:mod:`fundl.optim.mask`,
the one reading of ``mask=`` that every optimizer shares).

:func:`masked` applies a transform or an optimizer to the selected leaves only
and passes the others through unchanged; :func:`freeze` keeps the selected
params bit-identical (the same arrays) under any optimizer, decoupled weight
decay included; :func:`multi_transform` gives each labelled group of
parameters its own transform or optimizer; :func:`scale_lr` multiplies the
learning rate of one optimizer (per-group learning rates)::

    opt = freeze(adamw(weight_decay=1e-2), "dense_0/*")          # fine-tune the head
    opt = multi_transform({"body": scale_lr(adam(), 0.1), "head": adam()},
                          lambda path: "head" if path.startswith("dense_2/") else "body")

The wrapped optimizer sees the selected leaves as a flat dict keyed by their
full paths (``{"dense_2/w": ..., "dense_2/b": ...}``), so its state covers
exactly those leaves and a path mask inside it (``adamw(mask=...)``) sees the
same paths as outside.  States are :class:`MaskedState` and
:class:`MultiTransformState`: plain pytrees that :func:`fundl.io.save` stores.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Set, Tuple, Union

import numpy as np

from .. import tree
from .base import GradientTransform, Optimizer, as_lr, check_rate, descend
from .mask import Labels, Mask, MaskError, labeller, selector

__all__ = ["masked", "freeze", "multi_transform", "set_to_zero", "scale_lr",
           "MaskedState", "MultiTransformState", "MaskError", "Mask", "Labels"]

Part = Union[GradientTransform, Optimizer]


class MaskedState(NamedTuple):
    """State of :func:`masked` and :func:`freeze`.

    ``inner``: the wrapped transform's or optimizer's state for the selected
    leaves only (its trees are dicts keyed by parameter path).
    """

    inner: Any


class MultiTransformState(NamedTuple):
    """State of :func:`multi_transform`.

    ``inner``: a dict ``label -> state`` of each group's transform or optimizer,
    whose trees hold that group's leaves only (dicts keyed by parameter path).
    """

    inner: Dict[str, Any]


# ----------------------------------------------------------------------------- trees by path

def _flatten(t: Any, where: str) -> Tuple[List[Any], tree.TreeDef, List[str]]:
    """Leaves, treedef and paths of ``t``; two leaves with the same path are an error."""
    leaves, treedef = tree.flatten(t)
    paths = tree.paths(t)
    if len(set(paths)) != len(paths):
        seen: Set[str] = set()
        for dup in paths:
            if dup in seen:
                raise MaskError(f"{where}: two parameters have the same path '{dup}'")
            seen.add(dup)
    return leaves, treedef, paths


def _split(paths: List[str], groups: List[Any], leaves: List[Any]) -> Dict[Any, Dict[str, Any]]:
    """``{group: {path: leaf}}`` (a leaf whose group is ``None`` is left out)."""
    out: Dict[Any, Dict[str, Any]] = {}
    for p, g, leaf in zip(paths, groups, leaves):
        if g is not None:
            out.setdefault(g, {})[p] = leaf
    return out


def _join(paths: List[str], groups: List[Any], rest: List[Any],
          outs: Dict[Any, Any]) -> List[Any]:
    """The leaves again: ``outs[group][path]``, or ``rest`` where the group is ``None``."""
    return [r if g is None else outs[g][p] for p, g, r in zip(paths, groups, rest)]


# ----------------------------------------------------------------------------- small parts

def _zero_update(params, grads, state):
    return tree.zeros_like(grads), state


def set_to_zero() -> GradientTransform:
    """The transform whose updates are zeros shaped like the gradients (state ``{}``).

    As a group of an optimizer :func:`multi_transform` it leaves that group's
    params as they are (the same arrays), under any learning rate.
    """
    return GradientTransform(lambda params: {}, _zero_update, "set_to_zero")


def _keep_params() -> Optimizer:
    """The optimizer that returns the params as they are (state ``{}``)."""
    return Optimizer(lambda params: {}, lambda params, grads, state, lr: (params, state),
                     "set_to_zero")


def _as_optimizer(part: Part) -> Optimizer:
    if isinstance(part, Optimizer):
        return part
    if part.update is _zero_update:
        return _keep_params()
    return descend(part)


def _check_part(part: Any, where: str) -> None:
    if not isinstance(part, (GradientTransform, Optimizer)):
        raise TypeError(f"{where}: expected a GradientTransform or an Optimizer, "
                        f"got {type(part).__name__}")


def scale_lr(optimizer: Optimizer, factor: float) -> Optimizer:
    """``optimizer`` run with ``lr * factor`` at every step (a per-group learning rate).

    Unlike ``chain(scale(factor), opt)``, which scales the gradients (and so
    changes nothing for a scale-invariant rule such as Adam's or Lion's), this
    scales the step itself, decoupled weight decay included.  Same state as
    ``optimizer``.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"scale_lr: expected an Optimizer, got {type(optimizer).__name__}")
    factor = check_rate("scale_lr", "factor", factor)

    def scaled(fn):
        def update(params, grads, state, lr):
            return fn(params, grads, state, as_lr(lr) * factor)
        return update

    owning = optimizer.update_owning_grads
    return Optimizer(optimizer.init, scaled(optimizer.update), f"scale_lr({optimizer.name}, {factor})",
                     None if owning is None else scaled(owning))


# ----------------------------------------------------------------------------- the engine

def _grouped_optimizer(parts: Dict[Any, Optimizer], group_of, make_state, inner_states,
                       name: str) -> Optimizer:
    """An optimizer that runs ``parts[g]`` on the leaves of group ``g`` and keeps the rest.

    ``group_of(paths, treedef)`` gives each leaf's group (``None``: untouched);
    ``inner_states(state)`` is ``{group: state}`` and ``make_state`` inverts it.
    """

    def init(params):
        ps, treedef, paths = _flatten(params, name)
        subs = _split(paths, group_of(paths, treedef), ps)
        return make_state({g: opt.init(subs.get(g, {})) for g, opt in parts.items()})

    def run(owning: bool):
        def update(params, grads, state, lr):
            ps, treedef, paths = _flatten(params, name)
            groups = group_of(paths, treedef)
            sub_p = _split(paths, groups, ps)
            sub_g = _split(paths, groups, treedef.leaves_of(grads))
            old = inner_states(state)
            new_p, new_s = {}, {}
            for g, opt in parts.items():
                fn = opt.update_owning_grads if owning and opt.update_owning_grads else opt.update
                new_p[g], new_s[g] = fn(sub_p.get(g, {}), sub_g.get(g, {}), old[g], lr)
            return treedef.unflatten(_join(paths, groups, ps, new_p)), make_state(new_s)
        return update

    owning = any(opt.update_owning_grads is not None for opt in parts.values())
    return Optimizer(init, run(False), name, run(True) if owning else None)


def _grouped_transform(parts: Dict[Any, GradientTransform], group_of, make_state, inner_states,
                       name: str, rest: Callable[[Any], Any]) -> GradientTransform:
    """A transform that runs ``parts[g]`` on group ``g``; a leaf of no group gets ``rest(grad)``."""

    def init(params):
        ps, treedef, paths = _flatten(params, name)
        subs = _split(paths, group_of(paths, treedef), ps)
        return make_state({g: t.init(subs.get(g, {})) for g, t in parts.items()})

    def update(params, grads, state):
        gs, treedef, paths = _flatten(grads, name)
        groups = group_of(paths, treedef)
        sub_g = _split(paths, groups, gs)
        sub_p = None if params is None else _split(paths, groups, treedef.leaves_of(params))
        old = inner_states(state)
        new_u, new_s = {}, {}
        for g, t in parts.items():
            p = None if sub_p is None else sub_p.get(g, {})
            new_u[g], new_s[g] = t.update(p, sub_g.get(g, {}), old[g])
        kept = [rest(g) if grp is None else None for g, grp in zip(gs, groups)]
        return treedef.unflatten(_join(paths, groups, kept, new_u)), make_state(new_s)

    return GradientTransform(init, update, name)


def _one_group(select):
    """Group ``0`` for the selected leaves, ``None`` for the others."""
    return lambda paths, treedef: [0 if s else None for s in select(paths, treedef)]


def _masked(inner: Part, mask: Mask, name: str, invert: bool, rest: Callable[[Any], Any]) -> Part:
    _check_part(inner, name)
    select = selector(mask, name, invert)
    group_of = _one_group(select)
    make_state = lambda states: MaskedState(states[0])  # noqa: E731
    inner_states = lambda state: {0: state.inner}  # noqa: E731
    if isinstance(inner, Optimizer):
        return _grouped_optimizer({0: inner}, group_of, make_state, inner_states, name)
    return _grouped_transform({0: inner}, group_of, make_state, inner_states, name, rest)


# ----------------------------------------------------------------------------- public wrappers

def masked(inner: Part, mask: Mask) -> Part:
    """``inner`` (a transform or an optimizer) applied to the leaves ``mask`` selects only.

    For a :class:`GradientTransform` the result is a transform: selected leaves
    get ``inner``'s updates, the others their gradients as they are (as
    optax's ``masked``).  For an :class:`Optimizer` the result is an optimizer:
    selected params take ``inner``'s step, the others are returned as they are
    (the same arrays, so bit-identical, whatever ``inner`` does, e.g. weight
    decay).  ``inner`` sees the selected leaves as a dict ``{path: leaf}`` and
    its state covers only them.  State :class:`MaskedState(inner)`.  See the
    module docstring for the forms of ``mask``.
    """
    return _masked(inner, mask, f"masked({getattr(inner, 'name', '?')})", False, lambda g: g)


def freeze(inner: Part, mask: Mask) -> Part:
    """``inner`` with the parameters ``mask`` selects frozen: they never move.

    For an :class:`Optimizer` (``adamw``, ``lion(weight_decay=...)``,
    ``momentum``, ``accumulate(...)``, a :func:`chain`, ...) the frozen params
    are returned as they are at every step (bit-identical after any number of
    steps, decoupled weight decay included) and ``inner`` runs on the others
    only, as if the frozen ones did not exist (so its state covers only the
    trainable leaves).  For a :class:`GradientTransform` the frozen leaves'
    updates are zeros.  ``freeze(opt, mask)`` is ``masked(opt, not mask)``;
    state :class:`MaskedState(inner)`.
    """
    return _masked(inner, mask, f"freeze({getattr(inner, 'name', '?')})", True, np.zeros_like)


def multi_transform(transforms: Dict[str, Part], labels: Labels) -> Part:
    """Each group of parameters gets its own transform or optimizer.

    ``labels`` gives every parameter a label, a key of ``transforms``: a
    function ``path -> label`` or a params-shaped tree of labels.  Group
    ``label`` runs ``transforms[label]`` on its leaves only (seen as a dict
    ``{path: leaf}``; its state covers only them).  If every part is a
    :class:`GradientTransform`, the result is a transform; if any part is an
    :class:`Optimizer`, the result is an optimizer and each transform part
    ``t`` runs as ``descend(t)`` (:func:`set_to_zero` as a part leaves its
    params as they are: a frozen group).  Per-group learning rates:
    ``multi_transform({"body": scale_lr(adam(), 0.1), "head": adam()}, labels)``.
    State :class:`MultiTransformState({label: state})`, with every label of
    ``transforms`` (a label no parameter uses still has its state, built on ``{}``).
    """
    if not isinstance(transforms, dict) or not transforms:
        raise TypeError("multi_transform needs a non-empty dict {label: transform or optimizer}")
    names = ", ".join(f"{k}={getattr(v, 'name', '?')}" for k, v in transforms.items())
    name = f"multi_transform({names})"
    for label, part in transforms.items():
        if not isinstance(label, str):
            raise TypeError(f"multi_transform: labels must be strings (checkpointable dict keys), "
                            f"got {label!r}")
        _check_part(part, f"multi_transform: the part for label '{label}'")
    group_of = labeller(labels, transforms, name)
    make_state = MultiTransformState
    inner_states = lambda state: state.inner  # noqa: E731
    plain = {k: v for k, v in transforms.items() if isinstance(v, GradientTransform)}
    if len(plain) < len(transforms):   # an Optimizer among the parts
        parts = {k: _as_optimizer(v) for k, v in transforms.items()}
        return _grouped_optimizer(parts, group_of, make_state, inner_states, name)
    return _grouped_transform(plain, group_of, make_state, inner_states, name, lambda g: g)
