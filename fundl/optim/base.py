"""The optimizer contract and the gradient-transform machinery.

An **optimizer** is a pair of pure functions::

    opt_state = optimizer.init(params)
    params, opt_state = optimizer.update(params, grads, opt_state, lr)

``lr`` is given at every step, so a schedule is just a function of the step.
No update mutates ``params``, ``grads`` or ``opt_state``, with one opt-in
exception: an update may accept the keyword ``donate_grads=True``, by which its
caller hands over gradient arrays it owns exclusively and never uses again;
the update may then reuse their memory for the new params.  Only
:func:`fundl.make_step` does this, after checking that every gradient leaf is
an array of its own (see :func:`fundl.step.exclusive_grads`).

A **gradient transform** (as in optax) rewrites the gradients before they are
applied::

    state = transform.init(params)
    updates, state = transform.update(grads, state, params)

:func:`chain` composes transforms left to right; :func:`descend` turns a
transform into an optimizer with the rule ``p <- p - lr * updates``.  Every
optimizer in :mod:`fundl.optim` is built this way, e.g.
``adam() == descend(scale_by_adam(...))`` and
``chain(clip_by_global_norm(1.0), adam())`` is again an optimizer.

A transform's output may alias its input gradients or its own state (e.g. a
transform that leaves gradients unchanged returns them as they are), so
nobody may write into it; :func:`descend` allocates the new params.
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Tuple, Union

import numpy as np

from .. import tree

__all__ = ["Optimizer", "GradientTransform", "chain", "descend", "descend_leaf", "map_with_paths",
           "map_n", "count_array", "as_lr", "check_decay"]


class Optimizer(NamedTuple):
    """``init(params) -> opt_state``; ``update(params, grads, opt_state, lr) -> (params, opt_state)``."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any, float], Tuple[Any, Any]]
    name: str = "optimizer"


class GradientTransform(NamedTuple):
    """``init(params) -> state``; ``update(grads, state, params) -> (updates, state)``."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], Tuple[Any, Any]]
    name: str = "transform"


def as_lr(lr: Any) -> float:
    """``lr`` as a Python float (so float32 arrays stay float32); a schedule must be called first."""
    if callable(lr):
        raise TypeError("update needs the learning rate as a number; call the schedule with the step "
                        "(fundl.make_step does this when given a schedule)")
    return float(lr)


def check_decay(name: str, value: float) -> float:
    """``value`` as a float, checked to lie in ``[0, 1)`` (a decay or momentum coefficient)."""
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def count_array(n: int = 0) -> np.ndarray:
    """A step count as a 0-d ``int64`` array (a pytree leaf that checkpoints cleanly)."""
    return np.asarray(int(n), dtype=np.int64)


class _Pack:
    """Holds matching leaves of several trees (a leaf, not a container, for fundl.tree)."""

    __slots__ = ("items",)

    def __init__(self, items: Tuple[Any, ...]) -> None:
        self.items = items


def _zipped_leaves(first: Any, rest: Tuple[Any, ...]) -> List[Tuple[Any, ...]]:
    """Matching leaves of ``first`` and ``rest`` in ``first``'s flatten order (dict order may differ)."""
    return [pack.items for pack in tree.leaves(tree.map(lambda *xs: _Pack(xs), first, *rest))]


def map_with_paths(fn: Callable[..., Any], first: Any, *rest: Any) -> Any:
    """Like :func:`fundl.tree.map`, but ``fn(path, leaf, *other_leaves)`` also gets the leaf's path."""
    zipped = _zipped_leaves(first, rest)
    values = [fn(path, *xs) for path, xs in zip(tree.paths(first), zipped)]
    return tree.unflatten(tree.structure(first), values)


def map_n(fn: Callable[..., Tuple[Any, ...]], n: int, first: Any, *rest: Any) -> Tuple[Any, ...]:
    """``n`` trees shaped like ``first`` from ``fn(leaf, *other_leaves) -> (out_1, ..., out_n)``."""
    packed = tree.map(lambda *xs: _Pack(fn(*xs)), first, *rest)
    return tuple(tree.map(lambda pack: pack.items[i], packed) for i in range(n))


def descend_leaf(p: np.ndarray, u: np.ndarray, lr: float) -> np.ndarray:
    """``p - lr * u`` as one fresh array in ``p``'s dtype (``p`` and ``u`` are not written)."""
    new = np.multiply(u, -lr, dtype=p.dtype)  # the one fresh array, in p's dtype
    new += p
    return new


def descend(transform: GradientTransform, name: str = "") -> Optimizer:
    """The optimizer ``p <- p - lr * u`` with ``u, state = transform.update(grads, state, params)``.

    The optimizer's state is the transform's state.
    """

    def update(params, grads, state, lr):
        lr = as_lr(lr)
        updates, state = transform.update(grads, state, params)
        return tree.map(lambda p, u: descend_leaf(p, u, lr), params, updates), state

    return Optimizer(transform.init, update, name or transform.name)


def _chain_transforms(parts: List[GradientTransform]) -> GradientTransform:
    def init(params):
        return tuple(t.init(params) for t in parts)

    def update(grads, state, params):
        new_states = []
        for t, s in zip(parts, state):
            grads, s = t.update(grads, s, params)
            new_states.append(s)
        return grads, tuple(new_states)

    return GradientTransform(init, update, "chain(" + ", ".join(t.name for t in parts) + ")")


def chain(*parts: Union[GradientTransform, Optimizer]) -> Union[GradientTransform, Optimizer]:
    """Compose transforms left to right; if the last part is an :class:`Optimizer`, so is the result.

    ``chain(t1, t2)`` is the transform applying ``t1`` then ``t2``; its state is
    the tuple ``(state1, state2)``.  ``chain(t1, t2, opt)`` is the optimizer that
    rewrites the gradients with ``t1`` and ``t2`` and then calls ``opt.update``
    on them; its state is ``(state1, state2, opt_state)``.  For example
    ``chain(clip_by_global_norm(1.0), adam())``.
    """
    if not parts:
        raise ValueError("chain needs at least one transform")
    *transforms, last = parts
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransform):
            raise TypeError(f"chain: part {i} is a {type(t).__name__}; only the last part may be "
                            "an Optimizer, the others must be GradientTransforms")
    if isinstance(last, GradientTransform):
        return _chain_transforms(list(parts))
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
        grads, pre_state = pre.update(grads, state[:-1], params)
        params, opt_state = opt.update(params, grads, state[-1], lr)
        return params, pre_state + (opt_state,)

    return Optimizer(init, update, "chain(" + ", ".join(t.name for t in parts) + ")")
