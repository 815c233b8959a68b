"""Stateless gradient transforms: clipping and (masked) weight decay.

Use them in :func:`fundl.optim.chain`, e.g.
``chain(clip_by_global_norm(1.0), add_weight_decay(1e-4, mask=lambda path: path.endswith("/w")), sgd())``.
Their state is ``{}``.  A leaf they leave unchanged is returned as it is.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .. import tree
from .base import GradientTransform, PerLeaf, leafwise

__all__ = ["clip_by_global_norm", "clip_by_value", "add_weight_decay", "scale", "identity"]

Mask = Optional[Callable[[str], bool]]


def _no_state(params):
    return {}


def identity() -> GradientTransform:
    """Leaves the gradients unchanged."""
    return GradientTransform(_no_state, lambda params, grads, state: (grads, state), "identity")


def scale(factor: float) -> GradientTransform:
    """Multiplies every gradient by ``factor``."""
    factor = float(factor)

    def update(params, grads, state):
        return tree.map(lambda g: np.multiply(g, factor), grads), state

    return GradientTransform(_no_state, update, "scale")


def clip_by_global_norm(max_norm: float) -> GradientTransform:
    """Rescale all gradients together so that their global L2 norm is at most ``max_norm``.

    With ``n = sqrt(sum over leaves of sum(g^2))``: if ``n > max_norm`` every
    leaf becomes ``g * (max_norm / n)``, otherwise the gradients pass unchanged.
    """
    max_norm = float(max_norm)
    if not max_norm > 0.0:
        raise ValueError(f"clip_by_global_norm needs max_norm > 0, got {max_norm}")

    def update(params, grads, state):
        norm = tree.global_norm(grads)
        if norm <= max_norm:
            return grads, state
        factor = max_norm / norm  # a Python float: keeps float32 float32
        return tree.map(lambda g: np.multiply(g, factor), grads), state

    return GradientTransform(_no_state, update, "clip_by_global_norm")


def clip_by_value(lo: float, hi: float) -> GradientTransform:
    """Clip every gradient entry into ``[lo, hi]``."""
    lo, hi = float(lo), float(hi)
    if not lo <= hi:
        raise ValueError(f"clip_by_value needs lo <= hi, got lo={lo}, hi={hi}")

    def update(params, grads, state):
        return tree.map(lambda g: np.clip(g, lo, hi), grads), state

    return GradientTransform(_no_state, update, "clip_by_value")


def add_weight_decay(rate: float, mask: Mask = None) -> GradientTransform:
    """Add ``rate * p`` to the gradient of every parameter ``p`` whose path passes ``mask``.

    ``mask(path) -> bool`` is a predicate on the parameter's path string as
    given by :func:`fundl.tree.flatten_with_paths` (e.g. ``"dense_0/w"``);
    ``None`` decays every parameter.  For example
    ``mask=lambda path: path.endswith("/w")`` leaves biases alone.  Placed
    before :func:`descend` (as in :func:`adamw`) this is decoupled weight decay
    ``p <- p - lr * (u + rate * p)``; placed before an adaptive scaling it is an
    L2 penalty.
    """
    rate = float(rate)
    if mask is None:  # the same rule on every leaf: one that descend runs in blocks
        return _decay_every_leaf(rate)

    def leaf(path, g, p):
        if rate == 0.0 or (mask is not None and not mask(path)):
            return g
        u = np.multiply(p, rate, dtype=g.dtype)
        u += g
        return u

    def update(params, grads, state):
        _need_params(params)
        return tree.map_with_paths(leaf, grads, params), state

    return GradientTransform(_no_state, update, "add_weight_decay")


def _decay_every_leaf(rate: float) -> GradientTransform:
    """:func:`add_weight_decay` without a mask, as an elementwise rule per leaf: in
    ``chain(scale_by_adam(), add_weight_decay(rate))`` (``adamw``) the chain is then one
    rule, which :func:`~fundl.optim.descend` runs in cache-sized blocks (the same bits)."""

    def rule(p, g, out=()):
        if rate == 0.0:
            return (g,)
        u = np.multiply(p, rate, dtype=g.dtype)
        u += g
        return (u,)

    def step(state):
        return PerLeaf(rule, (), lambda trees: {}, elementwise=True)

    decay = leafwise(_no_state, step, "add_weight_decay")

    def update(params, grads, state):
        _need_params(params)
        return decay.update(params, grads, state)

    return decay._replace(update=update)


def _need_params(params: object) -> None:
    if params is None:
        raise ValueError("add_weight_decay needs the params (got params=None)")
