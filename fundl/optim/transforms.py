"""Stateless gradient transforms: clipping and (masked) weight decay.

Use them in :func:`fundl.optim.chain`, e.g.
``chain(clip_by_global_norm(1.0), add_weight_decay(1e-4, mask=lambda path: path.endswith("/w")), sgd())``.
Their state is ``{}``.  A leaf they leave unchanged is returned as it is.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import tree
from .base import (GradientTransform, PerLeaf, check_grads, check_number, check_positive,
                   check_rate, leafwise)
from .mask import Mask, selector

__all__ = ["clip_by_global_norm", "clip_by_value", "add_weight_decay", "scale", "identity"]


def _no_state(params):
    return {}


def identity() -> GradientTransform:
    """Leaves the gradients unchanged."""
    return GradientTransform(_no_state, lambda params, grads, state: (grads, state), "identity")


def scale(factor: float) -> GradientTransform:
    """Multiplies every gradient by ``factor`` (a finite number, of any sign)."""
    factor = check_number("scale", "factor", factor)

    def update(params, grads, state):
        return tree.map(lambda g: np.multiply(g, factor), grads), state

    return GradientTransform(_no_state, update, "scale")


def clip_by_global_norm(max_norm: float) -> GradientTransform:
    """Rescale all gradients together so that their global L2 norm is at most ``max_norm``.

    With ``n = sqrt(sum over leaves of sum(g^2))``: if ``n > max_norm`` every
    leaf becomes ``g * (max_norm / n)``, otherwise the gradients pass unchanged.
    """
    max_norm = check_positive("clip_by_global_norm", "max_norm", max_norm)

    def update(params, grads, state):
        norm = tree.global_norm(grads)
        if norm <= max_norm:
            return grads, state
        factor = max_norm / norm  # a Python float: keeps float32 float32
        return tree.map(lambda g: np.multiply(g, factor), grads), state

    return GradientTransform(_no_state, update, "clip_by_global_norm")


def clip_by_value(lo: float, hi: float) -> GradientTransform:
    """Clip every gradient entry into ``[lo, hi]`` (``lo <= hi``; either may be infinite)."""
    lo = check_number("clip_by_value", "lo", lo, allow_inf=True)
    hi = check_number("clip_by_value", "hi", hi, allow_inf=True)
    if not lo <= hi:
        raise ValueError(f"clip_by_value needs lo <= hi, got lo={lo}, hi={hi}")

    def update(params, grads, state):
        return tree.map(lambda g: np.clip(g, lo, hi), grads), state

    return GradientTransform(_no_state, update, "clip_by_value")


def add_weight_decay(rate: float, mask: Optional[Mask] = None) -> GradientTransform:
    """Add ``rate * p`` to the gradient of every parameter ``p`` that ``mask`` selects.

    ``mask`` selects by the parameter's path (e.g. ``"dense_0/w"``) in any of the
    forms of :mod:`fundl.optim.mask`: a predicate ``path -> bool`` (e.g.
    ``lambda path: path.endswith("/w")``, which leaves biases alone), a glob or a
    list of globs (``"*/w"``), or a params-shaped tree of bools; ``None`` decays
    every parameter.  Placed before :func:`descend` (as in :func:`adamw`) this is
    decoupled weight decay ``p <- p - lr * (u + rate * p)``; placed before an
    adaptive scaling it is an L2 penalty.  ``rate >= 0``.
    """
    return weight_decay(rate, mask, "add_weight_decay", "rate")


def weight_decay(rate: float, mask: Optional[Mask], name: str, arg: str) -> GradientTransform:
    """:func:`add_weight_decay` as the optimizer ``name`` builds it (its errors name ``name``
    and its argument ``arg``, e.g. ``adamw``'s ``weight_decay``)."""
    rate = check_rate(name, arg, rate)
    if mask is None:  # the same rule on every leaf: one that descend runs in blocks
        return _decay_every_leaf(rate, name)
    select = selector(mask, name)

    def update(params, grads, state):
        _need_params(params, name)
        gs, treedef = tree.flatten(grads)
        ps = treedef.leaves_of(params)
        check_grads(ps, gs, treedef)
        chosen = select(tree.paths(grads), treedef)
        if rate == 0.0:
            return grads, state
        return treedef.unflatten([_decayed(p, g, rate) if c else g
                                  for p, g, c in zip(ps, gs, chosen)]), state

    return GradientTransform(_no_state, update, "add_weight_decay")


def _decayed(p: np.ndarray, g: np.ndarray, rate: float) -> np.ndarray:
    """``g + rate * p`` as a new array in ``g``'s dtype."""
    u = np.multiply(p, rate, dtype=g.dtype)
    u += g
    return u


def _decay_every_leaf(rate: float, name: str) -> GradientTransform:
    """:func:`add_weight_decay` without a mask, as an elementwise rule per leaf: in
    ``chain(scale_by_adam(), add_weight_decay(rate))`` (``adamw``) the chain is then one
    rule, which :func:`~fundl.optim.descend` runs in cache-sized blocks (the same bits)."""

    def rule(p, g, out=()):
        if rate == 0.0:
            return (g,)
        return (_decayed(p, g, rate),)

    def step(state):
        return PerLeaf(rule, (), lambda trees: {}, elementwise=True)

    decay = leafwise(_no_state, step, "add_weight_decay")

    def update(params, grads, state):
        _need_params(params, name)
        return decay.update(params, grads, state)

    return decay._replace(update=update)


def _need_params(params: object, name: str) -> None:
    if params is None:
        raise ValueError(f"{name} needs the params (got params=None)")
