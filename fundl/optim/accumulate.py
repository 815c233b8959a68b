"""Gradient accumulation: one optimizer step every ``k`` calls, with the mean of the ``k`` gradients.

Use it to train with an effective batch ``k`` times larger than fits in memory::

    opt = accumulate(adam(), k=4)
    # calls 1, 2, 3: params are returned unchanged, gradients are summed
    # call 4: params <- adam step with (g1 + g2 + g3 + g4) / 4 and call 4's lr
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import tree
from .base import Optimizer, check_count, count_array

__all__ = ["accumulate", "AccumulateState"]


class AccumulateState(NamedTuple):
    """``count`` (calls since the last step, 0-d int64), ``grad_sum`` (like params),
    ``inner`` (the wrapped optimizer's state)."""

    count: np.ndarray  # type: ignore[assignment]  # shadows tuple.count; a checkpointed name
    grad_sum: Any
    inner: Any


def accumulate(optimizer: Optimizer, k: int) -> Optimizer:
    """Wrap ``optimizer`` so that params change only on every ``k``-th call, by the mean gradient.

    Between steps the params are returned as they are (the same objects) and
    the gradients are added to ``grad_sum``.  On the ``k``-th call the wrapped
    optimizer is called once with ``grad_sum / k`` and that call's ``lr``, and
    the sum is reset.  ``k = 1`` is the wrapped optimizer itself.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"accumulate: expected an Optimizer, got {type(optimizer).__name__}")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"accumulate needs an integer k >= 1, got {k!r}")
    k = int(k)

    def init(params):
        return AccumulateState(count_array(0), tree.zeros_like(params), optimizer.init(params))

    def update(params, grads, state, lr):
        n = check_count("accumulate", state.count) + 1
        if n < k:
            grad_sum = tree.map(lambda s, g: np.add(s, g, dtype=s.dtype), state.grad_sum, grads)
            return params, AccumulateState(count_array(n), grad_sum, state.inner)

        def mean(s, g):
            total = np.add(s, g, dtype=s.dtype)
            total /= float(k)
            return total

        mean_grads = tree.map(mean, state.grad_sum, grads)
        params, inner = optimizer.update(params, mean_grads, state.inner, lr)
        return params, AccumulateState(count_array(0), tree.zeros_like(state.grad_sum), inner)

    return Optimizer(init, update, f"accumulate({optimizer.name}, {k})")
