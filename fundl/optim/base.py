"""The optimizer contract: a pair of pure functions.

::

    opt_state = optimizer.init(params)
    params, opt_state = optimizer.update(params, grads, opt_state, lr)

``lr`` is given at every step, so a schedule is just a function of the step.
No update mutates ``params``, ``grads`` or ``opt_state``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

__all__ = ["Optimizer"]


class Optimizer(NamedTuple):
    """``init(params) -> opt_state``; ``update(params, grads, opt_state, lr) -> (params, opt_state)``."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any, float], Tuple[Any, Any]]
    name: str = "optimizer"
