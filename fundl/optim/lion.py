"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

With ``m`` zeros at the start::

    c  = b1 m + (1 - b1) g             (interpolation used for the step)
    p <- p - lr * (sign(c) + weight_decay * p)
    m <- b2 m + (1 - b2) g             (the state tracks g with the slower b2)

Every coordinate moves by exactly ``lr`` (plus decay), so Lion wants an
``lr`` 3-10x smaller than Adam's.  The decay is decoupled and scaled by ``lr``
as in the paper and optax; ``weight_decay`` defaults to 0 here (optax: 1e-3).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import tree
from .base import (GradientTransform, Optimizer, PerLeaf, chain, check_decay, check_rate, descend,
                   leafwise)
from .mask import Mask
from .transforms import weight_decay as _weight_decay

__all__ = ["lion", "scale_by_lion", "LionState"]


class LionState(NamedTuple):
    """``mu``: a tree shaped like params (the momentum ``m``)."""

    mu: Any


def scale_by_lion(b1: float = 0.9, b2: float = 0.99, *,
                  who: str = "scale_by_lion") -> GradientTransform:
    """Lion's sign update as a transform: output ``sign(b1 m + (1-b1) g)``;
    ``m <- b2 m + (1-b2) g``.

    ``b1``, ``b2`` in [0, 1); ``who`` names it in error messages."""
    b1, b2 = check_decay(who, "b1", b1), check_decay(who, "b2", b2)

    def init(params):
        return LionState(tree.zeros_like(params))

    def rule(p, g, m, out=(None,)):
        c = np.multiply(m, b1)
        tmp = np.multiply(g, 1.0 - b1)
        c += tmp
        u = np.sign(c)                   # not in place: numpy 2's in-place sign is ~10x slower
        np.multiply(g, 1.0 - b2, out=tmp)
        new = np.multiply(m, b2, out=c if out[0] is None else out[0])  # c reused if no out
        new += tmp
        return u, new

    def step(state):
        return PerLeaf(rule, (state.mu,), lambda trees: LionState(*trees), elementwise=True)

    return leafwise(init, step, "scale_by_lion")


def lion(b1: float = 0.9, b2: float = 0.99, weight_decay: float = 0.0, mask: Mask = None) -> Optimizer:
    """Lion: ``p <- p - lr (sign(b1 m + (1-b1) g) + weight_decay p); m <- b2 m + (1-b2) g``.

    ``mask`` selects the decayed parameters (default: all) in any form of
    :mod:`fundl.optim.mask`.  State ``LionState(mu)``, or ``(LionState(mu), {})`` when
    ``weight_decay > 0``.
    """
    scaling = scale_by_lion(b1, b2, who="lion")
    if check_rate("lion", "weight_decay", weight_decay) == 0.0:
        return descend(scaling, "lion")
    decay = _weight_decay(weight_decay, mask, "lion", "weight_decay")
    return descend(chain(scaling, decay), "lion")
