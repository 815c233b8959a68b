"""Adagrad (Duchi, Hazan & Singer, 2011): per-coordinate steps shrinking with the gradients seen.

With ``G`` the running sum of squared gradients (``initial_accumulator_value``
everywhere at the start)::

    G <- G + g * g
    p <- p - lr * g / (sqrt(G) + eps)

``eps`` is added outside the square root, as in the paper's
``diag(delta I + G^(1/2))^-1`` and PyTorch.  ``initial_accumulator_value=0.1``
is the default of optax and TensorFlow (PyTorch uses 0).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import tree
from .base import (TINY_EPS, GradientTransform, Optimizer, PerLeaf, check_eps_fits, check_rate,
                   descend, leafwise)

__all__ = ["adagrad", "scale_by_rss", "AdagradState"]


class AdagradState(NamedTuple):
    """``sum_of_squares``: a tree shaped like params (``G``)."""

    sum_of_squares: Any


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-10, *,
                 who: str = "scale_by_rss") -> GradientTransform:
    """Adagrad's scaling as a transform: ``G <- G + g^2``; output ``g / (sqrt(G) + eps)``.

    ``initial_accumulator_value >= 0`` and ``eps >= 0``, not both 0 (a zero gradient
    would give 0/0); ``who`` names it in error messages."""
    init_value = check_rate(who, "initial_accumulator_value", initial_accumulator_value)
    eps = check_rate(who, "eps", eps)
    if init_value == 0.0 and eps == 0.0:
        raise ValueError(f"{who}: eps and initial_accumulator_value are both 0, so a zero gradient "
                         "would give 0/0; make one of them > 0 (eps=1e-10 is the default)")

    def init(params):
        return AdagradState(tree.map(lambda p: np.full_like(p, init_value), params))

    def rule(p, g, acc, out=(None,)):
        if init_value == 0.0 and (g.dtype.itemsize < 4 or eps < TINY_EPS):
            check_eps_fits(who, eps, eps, g.dtype)
        u = np.multiply(g, g)
        acc = np.add(acc, u, out=out[0])       # fresh (or out): the new state
        np.sqrt(acc, out=u)
        u += eps
        np.divide(g, u, out=u)
        return u, acc

    def step(state):
        return PerLeaf(rule, (state.sum_of_squares,), lambda trees: AdagradState(*trees),
                       elementwise=True)

    return leafwise(init, step, "scale_by_rss")


def adagrad(initial_accumulator_value: float = 0.1, eps: float = 1e-10) -> Optimizer:
    """Adagrad: ``G <- G + g^2; p <- p - lr g / (sqrt(G) + eps)``.  State ``AdagradState(sum_of_squares)``."""
    return descend(scale_by_rss(initial_accumulator_value, eps, who="adagrad"), "adagrad")
