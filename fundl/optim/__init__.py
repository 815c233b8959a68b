"""Optimizers as pairs of pure functions (see :mod:`fundl.optim.base`)."""

from .base import Optimizer
from .sgd import sgd

__all__ = ["Optimizer", "sgd"]
