"""Training: the train state, the pure step function, and the loop over it.

- :class:`TrainState` and :func:`make_step` live in :mod:`fundl.step`;
- :func:`fit` and :func:`evaluate` in :mod:`fundl.fit`.
"""

from .fit import NonFiniteLossError, evaluate, fit
from .step import Schedule, TrainState, make_step

__all__ = ["TrainState", "make_step", "Schedule", "fit", "evaluate", "NonFiniteLossError"]
