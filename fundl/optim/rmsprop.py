"""RMSProp (Tieleman & Hinton, 2012), optionally centered (Graves, 2013) and with momentum.

With ``nu`` the running mean of squared gradients and ``mu`` the running mean
of gradients (both zeros at the start, no bias correction)::

    nu <- decay * nu + (1 - decay) * g * g
    mu <- decay * mu + (1 - decay) * g                   (centered only)
    u  <- g / (sqrt(nu) + eps)                           (plain)
    u  <- g / (sqrt(max(nu - mu * mu, 0)) + eps)         (centered)
    v  <- momentum * v + u;  u <- v                      (only if momentum > 0)
    p  <- p - lr * u

``eps`` is added outside the square root (PyTorch's form; optax's default puts
it inside).  The momentum buffer accumulates the scaled gradients and ``lr``
multiplies it, as in PyTorch and optax.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from .. import tree
from .base import (TINY_EPS, GradientTransform, Optimizer, PerLeaf, chain, check_decay,
                   check_eps_fits, check_positive, descend, leafwise)
from .sgd import trace

__all__ = ["rmsprop", "scale_by_rms", "RMSState"]


class RMSState(NamedTuple):
    """``nu`` (mean of g^2) and ``mu`` (mean of g, or ``None`` if not centered): trees like params."""

    nu: Any
    mu: Optional[Any]


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, centered: bool = False, *,
                 who: str = "scale_by_rms") -> GradientTransform:
    """RMSProp's scaling as a transform: output ``g / (sqrt(nu [- mu^2]) + eps)``.

    ``decay`` in [0, 1), ``eps > 0`` (with 0 a zero gradient gives 0/0); ``who`` names it
    in error messages."""
    decay, eps = check_decay(who, "decay", decay), check_positive(who, "eps", eps)
    if not isinstance(centered, (bool, np.bool_)):
        raise TypeError(f"{who}: centered must be True or False, got {centered!r}")
    rest = 1.0 - decay

    def init(params):
        return RMSState(tree.zeros_like(params), tree.zeros_like(params) if centered else None)

    def rule(p, g, nu, mu=None, out=(None, None)):
        if g.dtype.itemsize < 4 or eps < TINY_EPS:
            check_eps_fits(who, eps, eps, g.dtype)
        u = np.multiply(g, g)
        u *= rest
        nu = np.multiply(nu, decay, out=out[0])      # fresh (or out): the new state
        nu += u
        if mu is not None:
            mu = np.multiply(mu, decay, out=out[1])  # fresh (or out): the new state
            np.multiply(g, rest, out=u)
            mu += u
            np.multiply(mu, mu, out=u)
            np.subtract(nu, u, out=u)
            np.maximum(u, 0.0, out=u)    # nu - mu^2 >= 0 in exact arithmetic
            np.sqrt(u, out=u)
        else:
            np.sqrt(nu, out=u)
        u += eps
        np.divide(g, u, out=u)
        return u, nu, mu

    def uncentered(p, g, nu, out=(None,)):
        u, nu, _ = rule(p, g, nu, out=(out[0], None))
        return u, nu

    def step(state):
        if centered:
            return PerLeaf(rule, (state.nu, state.mu), lambda trees: RMSState(*trees),
                           elementwise=True)
        return PerLeaf(uncentered, (state.nu,), lambda trees: RMSState(trees[0], None),
                       elementwise=True)

    return leafwise(init, step, "scale_by_rms")


def rmsprop(decay: float = 0.9, eps: float = 1e-8, centered: bool = False,
            momentum: float = 0.0) -> Optimizer:
    """RMSProp: ``nu <- decay nu + (1-decay) g^2; p <- p - lr g / (sqrt(nu) + eps)``.

    ``centered`` divides by the running standard deviation ``sqrt(nu - mu^2)``
    instead; ``momentum > 0`` adds a heavy-ball buffer on the scaled gradient.
    State: ``RMSState(nu, mu)``, or ``(RMSState, TraceState(velocity))`` with momentum.
    """
    scale = scale_by_rms(decay, eps, centered, who="rmsprop")
    if check_decay("rmsprop", "momentum", momentum) == 0.0:
        return descend(scale, "rmsprop")
    return descend(chain(scale, trace(momentum, who="rmsprop")), "rmsprop")
