"""The optimizer contract and the gradient-transform machinery.

An **optimizer** is a pair of pure functions::

    opt_state = optimizer.init(params)
    params, opt_state = optimizer.update(params, grads, opt_state, lr)

``lr`` is given at every step, so a schedule is just a function of the step.
No update mutates ``params``, ``grads`` or ``opt_state``.

A **gradient transform** (as in optax) rewrites the gradients before they are
applied; it takes its arguments in the optimizer's order::

    state = transform.init(params)
    updates, state = transform.update(params, grads, state)

:func:`chain` composes transforms left to right; :func:`descend` turns a
transform into an optimizer with the rule ``p <- p - lr * updates``.  Every
optimizer in :mod:`fundl.optim` is built this way, e.g.
``adam() == descend(scale_by_adam(...))`` and
``chain(clip_by_global_norm(1.0), adam())`` is again an optimizer.

Most transforms are one rule applied leaf by leaf (Adam's moments, momentum).
:func:`leafwise` builds such a transform from the rule, and declares it
(``GradientTransform.per_leaf``), so that :func:`descend` runs rule and descent
in one pass over the leaves: every tree is walked once per update (flattened
once, rebuilt once), as jax's ``@optimizer`` does.

A transform's output may alias its input gradients or its own state (e.g. a
transform that leaves gradients unchanged returns them as they are), so
nobody may write into it; :func:`descend` allocates the new params.
"""

from __future__ import annotations

import math
from typing import (Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union, Unpack,
                    overload)

import numpy as np

from .. import tree

__all__ = ["Optimizer", "GradientTransform", "PerLeaf", "leafwise", "chain", "descend",
           "descend_leaf", "count_array", "as_lr", "check_number", "check_positive", "check_rate",
           "check_decay", "check_count", "check_eps_fits", "check_grads", "TINY_EPS"]


class PerLeaf(NamedTuple):
    """One step of a transform written as a rule per leaf.

    ``rule(p, g, *s) -> (u, *new_s)`` runs on matching leaves of the params, the
    gradients and each tree of ``trees`` (state trees shaped like params);
    ``rebuild(new_trees) -> state`` makes the new state from the rebuilt trees.

    ``elementwise=True`` declares that every output element depends only on the
    same element of the inputs, and that ``rule(p, g, *s, out=new_s_out)`` writes the
    new states into the given arrays (and returns them): :func:`descend` then runs
    the rule and the descent over cache-sized blocks of large leaves (the same bits).
    """

    rule: Callable[..., Tuple[Any, ...]]
    trees: Tuple[Any, ...]
    rebuild: Callable[[List[Any]], Any]
    elementwise: bool = False


class Optimizer(NamedTuple):
    """``init(params) -> opt_state``; ``update(params, grads, opt_state, lr) -> (params, opt_state)``.

    ``update_owning_grads``, if given, is the same update for a caller that
    hands over gradient arrays it owns exclusively and never uses again: it may
    build the new params in their memory (:func:`fundl.sgd` does).  Only
    :func:`fundl.make_step` calls it, after making sure of the ownership
    (:mod:`fundl.fusion`).
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any, float], Tuple[Any, Any]]
    name: str = "optimizer"
    update_owning_grads: Optional[Callable[[Any, Any, Any, float], Tuple[Any, Any]]] = None


class GradientTransform(NamedTuple):
    """``init(params) -> state``; ``update(params, grads, state) -> (updates, state)``.

    ``per_leaf(state) -> PerLeaf``, if given, states the same update as a rule
    per leaf (see :func:`leafwise`).
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], Tuple[Any, Any]]
    name: str = "transform"
    per_leaf: Optional[Callable[[Any], PerLeaf]] = None


def as_lr(lr: Any) -> float:
    """``lr`` as a Python float (so float32 arrays stay float32), checked finite and >= 0;
    a schedule must be called first."""
    if type(lr) is float and 0.0 <= lr < math.inf:  # the common case, first (0.1 us, not 0.3)
        return lr
    if callable(lr):
        raise TypeError("update needs the learning rate as a number; call the schedule with the step "
                        "(fundl.make_step does this when given a schedule)")
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, (int, float, np.integer, np.floating)) \
            and not (isinstance(lr, np.ndarray) and lr.ndim == 0 and lr.dtype.kind in "if"):
        raise TypeError(f"the learning rate must be a number or a schedule lr(step) -> float, "
                        f"got {type(lr).__name__} {lr!r}")
    value = float(lr)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"the learning rate must be finite and >= 0, got {value}")
    return value


def check_number(who: str, name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value`` as a Python float: ``TypeError`` unless it is a real number (not a bool, not
    a string), ``ValueError`` if it is NaN (or infinite, unless ``allow_inf``); the message
    names the optimizer ``who`` and the argument ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)) and not (
            isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"):
        raise TypeError(f"{who}: {name} must be a real number, got {type(value).__name__} "
                        f"{value!r}")
    out = float(value)
    if math.isnan(out) or (not allow_inf and math.isinf(out)):
        raise ValueError(f"{who}: {name} must be finite, got {out}")
    return out


def check_positive(who: str, name: str, value: Any) -> float:
    """``value`` as a float, checked finite and ``> 0`` (an ``eps``, a norm bound)."""
    out = check_number(who, name, value)
    if not out > 0.0:
        raise ValueError(f"{who}: {name} must be > 0, got {out}")
    return out


def check_rate(who: str, name: str, value: Any) -> float:
    """``value`` as a float, checked finite and ``>= 0`` (a weight decay, a factor)."""
    out = check_number(who, name, value)
    if not out >= 0.0:
        raise ValueError(f"{who}: {name} must be >= 0, got {out}")
    return out


def check_decay(who: str, name: str, value: Any) -> float:
    """``value`` as a float, checked to lie in ``[0, 1)`` (a decay or momentum coefficient)."""
    out = check_number(who, name, value)
    if not 0.0 <= out < 1.0:
        raise ValueError(f"{who}: {name} must be in [0, 1), got {out}")
    return out


#: Below this an ``eps`` may round to 0 in float32 (whose smallest subnormal is 1.4e-45): a
#: rule checks its ``eps`` in the gradient's dtype when the dtype is narrower than float32
#: or ``eps`` is this small (one float comparison on the common path).
TINY_EPS = 1e-37


def check_eps_fits(who: str, eps: float, eps_used: float, dtype: np.dtype) -> None:
    """Raise if ``eps`` (used as ``eps_used``) rounds to 0 in the params' dtype (float16 with
    the default 1e-8): the update would divide 0 by 0 for every zero gradient."""
    if dtype.type(eps_used) == 0:
        tiny = float(np.finfo(dtype).smallest_subnormal)
        raise ValueError(f"{who}: eps={eps:g} is 0 in {dtype} (the update would divide by zero); "
                         f"use eps of at least {tiny / max(eps_used / eps, 1e-300):.1e} for "
                         f"{dtype} params, e.g. {who}(eps=1e-4), or train in float32")


def check_count(who: str, count: Any) -> int:
    """The step count of a state as an ``int``, checked to be a whole number ``>= 0``."""
    try:
        n = int(count)
        ok = n == count and n >= 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{who}: the optimizer state's count must be a whole number >= 0 "
                         f"(the updates done so far), got {count!r}; was the state built by "
                         f"{who}'s init or loaded from its checkpoint?")
    return n


def count_array(n: int = 0) -> np.ndarray:
    """A step count as a 0-d ``int64`` array (a pytree leaf that checkpoints cleanly)."""
    return np.asarray(int(n), dtype=np.int64)


def check_grads(ps: Sequence[Any], gs: Sequence[Any], treedef: tree.TreeDef) -> None:
    """Raise ``ValueError`` naming the path of the first gradient whose shape is not its
    parameter's (numpy would broadcast it silently)."""
    for i, (p, g) in enumerate(zip(ps, gs)):
        if type(p) is np.ndarray and type(g) is np.ndarray and g.shape == p.shape:
            continue  # the common case: no np.shape call (two Python calls per leaf)
        if p is not None and np.shape(g) != np.shape(p):
            path = tree.paths(treedef.unflatten(list(range(treedef.num_leaves))))[i]
            raise ValueError(f"the gradient of '{path}' has shape {np.shape(g)}, its parameter "
                             f"{np.shape(p)}")


def _run_rule(step: PerLeaf, ps: Sequence[Any], gs: Sequence[Any],
              treedef: tree.TreeDef) -> Tuple[List[Any], Any]:
    """The updates (a list in ``treedef``'s order) and the new state of one rule step."""
    check_grads(ps, gs, treedef)
    cols = [treedef.leaves_of(t) for t in step.trees]
    outs = [step.rule(*xs) if np.ndim(xs[1]) else _rule_0d(step.rule, xs)
            for xs in zip(ps, gs, *cols)]
    columns = list(zip(*outs)) if outs else [()] * (1 + len(cols))
    return list(columns[0]), step.rebuild([treedef.unflatten(c) for c in columns[1:]])


def _rule_0d(rule: Callable[..., Tuple[Any, ...]], xs: Sequence[Any]) -> Tuple[Any, ...]:
    """``rule`` on the 0-d leaves ``xs`` as arrays of shape ``(1,)``, its results reshaped to
    ``()``: numpy gives scalars, not arrays, for arithmetic on 0-d arrays, and a rule's
    ``out=`` cannot write into a scalar."""
    outs = rule(*(np.reshape(x, (1,)) if isinstance(x, np.ndarray) else x for x in xs))
    return tuple(np.reshape(o, ()) if isinstance(o, np.ndarray) else o for o in outs)


def _descend_elementwise(step: PerLeaf, ps: Sequence[Any], gs: Sequence[Any],
                         treedef: tree.TreeDef, lr: float) -> Tuple[Any, Any]:
    """The new params and state of :func:`descend` with an elementwise rule, leaf by leaf
    (large leaves in blocks)."""
    check_grads(ps, gs, treedef)
    cols = [treedef.leaves_of(t) for t in step.trees]
    outs = [_descend_blocks(step, p, g, xs, lr) for p, g, *xs in zip(ps, gs, *cols)]
    new_ps = [o[0] for o in outs]
    columns = [list(c) for c in zip(*(o[1] for o in outs))] if outs else [[]] * len(cols)
    return (treedef.unflatten(new_ps),
            step.rebuild([treedef.unflatten(c) for c in columns]))


def leafwise(init: Callable[[Any], Any], step: Callable[[Any], PerLeaf],
             name: str) -> GradientTransform:
    """A transform from a rule per leaf: ``step(state)`` gives this update's :class:`PerLeaf`."""

    def update(params, grads, state):
        gs, treedef = tree.flatten(grads)
        ps = treedef.leaves_of(params) if params is not None else [None] * len(gs)
        updates, state = _run_rule(step(state), ps, gs, treedef)
        return treedef.unflatten(updates), state

    return GradientTransform(init, update, name, step)


def descend_leaf(p: np.ndarray, u: np.ndarray, lr: float, out: Optional[np.ndarray] = None
                 ) -> np.ndarray:
    """``p - lr * u`` as one fresh array in ``p``'s dtype (``p`` and ``u`` are not written),
    or written into ``out``."""
    if out is None and not p.ndim:  # numpy's result for 0-d arrays is a scalar
        out = np.empty((), p.dtype)
    new = np.multiply(u, -lr, dtype=p.dtype, out=out)  # the one fresh array, in p's dtype
    new += p
    return new


#: Bytes of each array in one block of :func:`_descend_blocks` (2**16 float32 elements).
#: Adam's rule and descent on the benchmark MLP's 670k float32 params, caches swept
#: between updates: 1.90 ms leaf by leaf, 1.39 in blocks of 2**16 elements (1.48 in
#: 2**15, 1.60 in 2**14): its 13 passes then run in L2, and each array is read or
#: written once from memory.
_BLOCK_BYTES = 2 ** 18


def _descend_blocks(step: PerLeaf, p: np.ndarray, g: Any, states: Sequence[Any],
                    lr: float) -> Tuple[np.ndarray, List[Any]]:
    """An elementwise rule and the descent of one leaf: ``(p - lr * u, new_states)``, in
    blocks when the leaf is larger than one block (the same values as unblocked)."""
    block = max(1024, _BLOCK_BYTES // max(p.itemsize, 1))
    if (p.size <= block or not isinstance(g, np.ndarray)
            or any(not isinstance(s, np.ndarray) or s.shape != p.shape for s in states)):
        u, *new_states = step.rule(p, g, *states) if p.ndim else _rule_0d(step.rule, (p, g, *states))
        return descend_leaf(p, u, lr), new_states
    flat = [a.reshape(-1) for a in (p, g, *states)]
    new_p = np.empty(p.size, p.dtype)
    new_states = [np.empty(s.size, s.dtype) for s in states]
    for lo in range(0, p.size, block):
        part = slice(lo, lo + block)
        outs = tuple(s[part] for s in new_states)
        u, *written = step.rule(*(a[part] for a in flat), out=outs)
        for o, w in zip(outs, written):
            if w is not o:   # a rule that returned a state array of its own
                o[...] = w
        descend_leaf(flat[0][part], u, lr, out=new_p[part])
    return new_p.reshape(p.shape), [s.reshape(p.shape) for s in new_states]


def descend(transform: GradientTransform, name: str = "") -> Optimizer:
    """The optimizer ``p <- p - lr * u`` with ``u, state = transform.update(params, grads, state)``.

    The optimizer's state is the transform's state.  A :func:`leafwise`
    transform and the descent run in one pass over the leaves.
    """
    if not isinstance(transform, GradientTransform):
        hint = (" (it is already an optimizer: use it as it is)"
                if isinstance(transform, Optimizer) else "")
        raise TypeError(f"descend: expected a GradientTransform, got "
                        f"{type(transform).__name__}{hint}")

    def update(params, grads, state, lr):
        lr = as_lr(lr)
        ps, treedef = tree.flatten(params)
        if transform.per_leaf is not None:
            step = transform.per_leaf(state)
            gs = treedef.leaves_of(grads)
            if step.elementwise:
                return _descend_elementwise(step, ps, gs, treedef, lr)
            us, state = _run_rule(step, ps, gs, treedef)
        else:
            updates, state = transform.update(params, grads, state)
            us = treedef.leaves_of(updates)
            check_grads(ps, us, treedef)
        return treedef.unflatten([descend_leaf(p, u, lr) for p, u in zip(ps, us)]), state

    return Optimizer(transform.init, update, name or transform.name)


def _chain_transforms(parts: List[GradientTransform]) -> GradientTransform:
    def init(params):
        return tuple(t.init(params) for t in parts)

    def update(params, grads, state):
        new_states = []
        for t, s in zip(parts, state):
            grads, s = t.update(params, grads, s)
            new_states.append(s)
        return grads, tuple(new_states)

    per_leaf = None
    if all(t.per_leaf is not None for t in parts):
        def per_leaf(state):
            return _chain_rules([t.per_leaf(s) for t, s in zip(parts, state)])
    return GradientTransform(init, update, "chain(" + ", ".join(t.name for t in parts) + ")",
                             per_leaf)


def _chain_rules(steps: List[PerLeaf]) -> PerLeaf:
    """One :class:`PerLeaf` that runs ``steps``' rules one after another on each leaf (each
    rule's update is the next one's gradient), elementwise if all of them are: ``adamw``'s
    ``chain(scale_by_adam(), add_weight_decay(rate))`` then runs in blocks like ``adam``
    (its update of 670k float32 params: see the benchmarks README)."""
    sizes = [len(s.trees) for s in steps]
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]

    def rule(p: Any, g: Any, *states: Any, out: Optional[Sequence[Any]] = None) -> Tuple[Any, ...]:
        new_states: List[Any] = []
        for s, lo, hi in zip(steps, bounds, bounds[1:]):
            if out is None:
                g, *new = s.rule(p, g, *states[lo:hi])
            else:
                g, *new = s.rule(p, g, *states[lo:hi], out=out[lo:hi])
            new_states.extend(new)
        return (g, *new_states)

    def rebuild(trees):
        return tuple(s.rebuild(list(trees[lo:hi]))
                     for s, lo, hi in zip(steps, bounds, bounds[1:]))

    return PerLeaf(rule, tuple(t for s in steps for t in s.trees), rebuild,
                   elementwise=all(s.elementwise for s in steps))


@overload
def chain(*parts: GradientTransform) -> GradientTransform: ...
@overload
def chain(*parts: Unpack[Tuple[Unpack[Tuple[GradientTransform, ...]], Optimizer]]
          ) -> Optimizer: ...
def chain(*parts: object) -> Union[GradientTransform, Optimizer]:
    """Compose transforms left to right; if the last part is an :class:`Optimizer`, so is the result.

    ``chain(t1, t2)`` is the transform applying ``t1`` then ``t2``; its state is
    the tuple ``(state1, state2)``.  ``chain(t1, t2, opt)`` is the optimizer that
    rewrites the gradients with ``t1`` and ``t2`` and then calls ``opt.update``
    on them; its state is ``(state1, state2, opt_state)``.  For example
    ``chain(clip_by_global_norm(1.0), adam())``.
    """
    if not parts:
        raise ValueError("chain needs at least one transform")
    *others, last = parts
    transforms: List[GradientTransform] = []
    for i, t in enumerate(others):
        if not isinstance(t, GradientTransform):
            raise TypeError(f"chain: part {i} is a {type(t).__name__}; only the last part may be "
                            "an Optimizer, the others must be GradientTransforms")
        transforms.append(t)
    if isinstance(last, GradientTransform):
        return _chain_transforms(transforms + [last])
    if not isinstance(last, Optimizer):
        raise TypeError(f"chain: the last part is a {type(last).__name__}, "
                        "not a GradientTransform or an Optimizer")
    if not transforms:
        return last
    pre = _chain_transforms(transforms)
    opt = last

    def init(params):
        return pre.init(params) + (opt.init(params),)

    def update(params, grads, state, lr):
        grads, pre_state = pre.update(params, grads, state[:-1])
        params, opt_state = opt.update(params, grads, state[-1], lr)
        return params, pre_state + (opt_state,)

    names = [t.name for t in transforms] + [last.name]
    return Optimizer(init, update, "chain(" + ", ".join(names) + ")")
