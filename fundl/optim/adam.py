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
from .base import GradientTransform, Optimizer, PerLeaf, chain, check_decay, count_array, descend, leafwise
from .transforms import Mask, add_weight_decay

__all__ = ["adam", "adamw", "adamax", "scale_by_adam", "scale_by_adamax", "AdamState"]


class AdamState(NamedTuple):
    """``count`` (updates done, 0-d int64), ``mu`` (m) and ``nu`` (v): trees shaped like params."""

    count: np.ndarray
    mu: Any
    nu: Any


def _check_eps(who: str, eps: float, eps_used: float, dtype: np.dtype) -> None:
    """Raise if ``eps`` rounds to 0 in the params' dtype (float16 with the default 1e-8): the
    update would divide 0 by 0 for every zero gradient."""
    if eps > 0.0 and dtype.type(eps_used) == 0:
        tiny = float(np.finfo(dtype).smallest_subnormal)
        raise ValueError(f"{who}: eps={eps:g} is 0 in {dtype} (the update would divide by zero); "
                         f"use eps of at least {tiny / max(eps_used / eps, 1e-300):.1e} for "
                         f"{dtype} params, e.g. {who}(eps=1e-4), or train in float32")


def _init_adam(params) -> AdamState:
    return AdamState(count_array(0), tree.zeros_like(params), tree.zeros_like(params))


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransform:
    """Adam's bias-corrected scaling as a transform (see the module docstring)."""
    b1, b2, eps = check_decay("b1", b1), check_decay("b2", b2), float(eps)

    def step(state):
        t = int(state.count) + 1
        # m_hat / (sqrt(v_hat) + eps) = (m / (sqrt(v) + eps * s2)) * (s2 / (1 - b1^t)),
        # with s2 = sqrt(1 - b2^t): one pass fewer than scaling v.  Python floats keep float32.
        s2 = math.sqrt(1.0 - b2 ** t)
        eps_t = eps * s2
        scale = s2 / (1.0 - b1 ** t)

        def rule(p, g, m, v, out=(None, None)):
            if g.dtype.itemsize < 4:
                _check_eps("adam", eps, eps_t, g.dtype)
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


def scale_by_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransform:
    """Adamax's scaling as a transform (see the module docstring); ``nu`` holds the infinity norm."""
    b1, b2, eps = check_decay("b1", b1), check_decay("b2", b2), float(eps)

    def step(state):
        t = int(state.count) + 1
        c1 = 1.0 / (1.0 - b1 ** t)

        def rule(p, g, m, v, out=(None, None)):
            if g.dtype.itemsize < 4:
                _check_eps("adamax", eps, eps, g.dtype)
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
                       lambda trees: AdamState(count_array(t), *trees), elementwise=True)

    return leafwise(_init_adam, step, "scale_by_adamax")


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adam with bias correction.  State ``AdamState(count, mu, nu)``."""
    return descend(scale_by_adam(b1, b2, eps), "adam")


def adamw(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4,
          mask: Mask = None) -> Optimizer:
    """AdamW: ``p <- p - lr * (adam_update + weight_decay * p)`` (decay scaled by ``lr``, as optax).

    ``mask(path) -> bool`` selects the decayed parameters (default: all), e.g.
    ``lambda path: path.endswith("/w")``.  State ``(AdamState(count, mu, nu), {})``.
    """
    return descend(chain(scale_by_adam(b1, b2, eps), add_weight_decay(weight_decay, mask)), "adamw")


def adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adamax (Adam with the infinity norm).  State ``AdamState(count, mu, nu)``."""
    return descend(scale_by_adamax(b1, b2, eps), "adamax")
