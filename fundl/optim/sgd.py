"""Plain stochastic gradient descent: ``p <- p - lr * g``."""

from __future__ import annotations

import numpy as np

from .. import tree
from .base import Optimizer

__all__ = ["sgd"]


def _sgd_leaf(p: np.ndarray, g: np.ndarray, lr: float) -> np.ndarray:
    new = np.multiply(g, -lr, dtype=p.dtype)  # one fresh array in p's dtype
    new += p
    return new


def sgd() -> Optimizer:
    """Plain SGD with an empty state (``{}``): ``p <- p - lr * g`` for every leaf."""

    def init(params):
        return {}

    def update(params, grads, opt_state, lr):
        return tree.map(lambda p, g: _sgd_leaf(p, g, lr), params, grads), opt_state

    return Optimizer(init, update, "sgd")
