"""Adam and its relatives (Kingma & Ba, 2015; Loshchilov & Hutter, 2019).

With ``t`` the step number (1 at the first update), ``m`` and ``v`` zeros at
the start and ``u`` the update applied as ``p <- p - lr * u``::

    adam:    m <- b1 m + (1 - b1) g
             v <- b2 v + (1 - b2) g^2
             u  = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    adamw:   u  = adam's u + weight_decay * p         (decoupled weight decay)
             so p <- p - lr * (adam's u + weight_decay * p)

    adamax:  m <- b1 m + (1 - b1) g
             v <- max(b2 v, |g| + eps)                (infinity norm; v is u_t in the paper)
             u  = (m / (1 - b1^t)) / v

adamw's decay is multiplied by ``lr``, as in optax and PyTorch (the paper's
``eta_t`` schedule multiplier is ``lr`` here), so with a schedule the decay
follows the schedule.  adamax puts ``eps`` inside the max, as PyTorch and
optax do (the paper has no ``eps``).  Bias corrections are Python floats, so
float32 params stay float32.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import tree
from ..validate import SpecError
from .base import (GradientTransform, Optimizer, PerLeaf, chain, check_count, check_decay,
                   check_eps_fits, check_positive, count_array, descend, leafwise,
                   TINY_EPS)
from .mask import Mask
from .transforms import weight_decay as _weight_decay

__all__ = ["adam", "adamw", "adamax", "scale_by_adam", "scale_by_adamax", "AdamState",
           "AdamaxState"]


class AdamState(NamedTuple):
    """``count`` (updates done, 0-d int64), ``mu`` (m) and ``nu`` (v): trees shaped like params."""

    count: np.ndarray  # type: ignore[assignment]  # shadows tuple.count; a checkpointed name
    mu: Any
    nu: Any


class AdamaxState(NamedTuple):
    """``count`` (updates done, 0-d int64), ``mu`` (m) and ``nu`` (the infinity norm ``u``).

    The same fields as :class:`AdamState` but another type, so that an Adam state
    (a checkpoint) is refused by an adamax step and the other way round: ``nu``
    means something else in each.
    """

    count: np.ndarray  # type: ignore[assignment]  # shadows tuple.count; a checkpointed name
    mu: Any
    nu: Any


def _init_adam(params) -> AdamState:
    return AdamState(count_array(0), tree.zeros_like(params), tree.zeros_like(params))


def _init_adamax(params) -> AdamaxState:
    return AdamaxState(count_array(0), tree.zeros_like(params), tree.zeros_like(params))


def _check_state(who: str, state: Any, cls: type) -> None:
    """A :class:`SpecError` unless ``state`` is a ``cls`` (adam's and adamax's states have the
    same fields but not the same meaning: one is never resumed as the other)."""
    if type(state) is not cls:
        raise SpecError(f"{who}: the optimizer state is a {type(state).__name__}, not the "
                        f"{cls.__name__} that {who}'s init makes; is it another optimizer's "
                        f"(a checkpoint of {'adamax' if cls is AdamState else 'adam'})?")


def _hyper(who: str, b1: float, b2: float, eps: float):
    """``b1`` and ``b2`` in [0, 1), ``eps`` finite and > 0 (eps = 0: a zero gradient gives 0/0)."""
    return (check_decay(who, "b1", b1), check_decay(who, "b2", b2),
            check_positive(who, "eps", eps))


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                  who: str = "scale_by_adam") -> GradientTransform:
    """Adam's bias-corrected scaling as a transform (see the module docstring).

    ``b1``, ``b2`` in [0, 1) and ``eps > 0``; ``who`` names it in error messages."""
    b1, b2, eps = _hyper(who, b1, b2, eps)

    def step(state):
        if type(state) is not AdamState:
            _check_state(who, state, AdamState)
        t = check_count(who, state.count) + 1
        # m_hat / (sqrt(v_hat) + eps) = (m / (sqrt(v) + eps * s2)) * (s2 / (1 - b1^t)),
        # with s2 = sqrt(1 - b2^t): one pass fewer than scaling v.  Python floats keep float32.
        s2 = math.sqrt(1.0 - b2 ** t)
        eps_t = eps * s2
        scale = s2 / (1.0 - b1 ** t)

        def rule(p, g, m, v, out=(None, None)):
            if g.dtype.itemsize < 4 or eps_t < TINY_EPS:
                check_eps_fits(who, eps, eps_t, g.dtype)
            u = np.multiply(g, 1.0 - b1)
            m = np.multiply(m, b1, out=out[0])  # fresh (or out): new state
            m += u
            np.multiply(g, g, out=u)
            u *= 1.0 - b2
            v = np.multiply(v, b2, out=out[1])  # fresh (or out): new state
            v += u
            np.sqrt(v, out=u)
            u += eps_t
            np.divide(m, u, out=u)
            u *= scale
            return u, m, v

        return PerLeaf(rule, (state.mu, state.nu),
                       lambda trees: AdamState(count_array(t), *trees), elementwise=True)

    return leafwise(_init_adam, step, "scale_by_adam")


def scale_by_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                    who: str = "scale_by_adamax") -> GradientTransform:
    """Adamax's scaling as a transform (see the module docstring); ``nu`` holds the infinity norm.

    State :class:`AdamaxState`; ``b1``, ``b2`` in [0, 1) and ``eps > 0``."""
    b1, b2, eps = _hyper(who, b1, b2, eps)

    def step(state):
        if type(state) is not AdamaxState:
            _check_state(who, state, AdamaxState)
        t = check_count(who, state.count) + 1
        c1 = 1.0 / (1.0 - b1 ** t)

        def rule(p, g, m, v, out=(None, None)):
            if g.dtype.itemsize < 4 or eps < TINY_EPS:
                check_eps_fits(who, eps, eps, g.dtype)
            u = np.multiply(g, 1.0 - b1)
            m = np.multiply(m, b1, out=out[0])  # fresh (or out): new state
            m += u
            np.abs(g, out=u)
            u += eps
            v = np.multiply(v, b2, out=out[1])  # fresh (or out): new state
            np.maximum(v, u, out=v)
            np.divide(m, v, out=u)
            u *= c1
            return u, m, v

        return PerLeaf(rule, (state.mu, state.nu),
                       lambda trees: AdamaxState(count_array(t), *trees), elementwise=True)

    return leafwise(_init_adamax, step, "scale_by_adamax")


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adam with bias correction.  State ``AdamState(count, mu, nu)``.

    ``b1``, ``b2`` in [0, 1) and ``eps > 0``, or a ``ValueError`` naming the argument."""
    return descend(scale_by_adam(b1, b2, eps, who="adam"), "adam")


def adamw(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4,
          mask: Mask = None) -> Optimizer:
    """AdamW: ``p <- p - lr * (adam_update + weight_decay * p)`` (decay scaled by ``lr``, as optax).

    ``mask`` selects the decayed parameters (default: all) in any form of
    :mod:`fundl.optim.mask`: ``lambda path: path.endswith("/w")``, ``"*/w"``, a tree
    of bools.  ``weight_decay >= 0``.  State ``(AdamState(count, mu, nu), {})``.
    """
    return descend(chain(scale_by_adam(b1, b2, eps, who="adamw"),
                         _weight_decay(weight_decay, mask, "adamw", "weight_decay")), "adamw")


def adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adamax (Adam with the infinity norm).  State ``AdamaxState(count, mu, nu)``."""
    return descend(scale_by_adamax(b1, b2, eps, who="adamax"), "adamax")
