"""Learning-rate schedules: plain functions ``schedule(step) -> float`` of the integer step.

Pass one as ``lr`` to :func:`fundl.make_step` (it calls ``lr(train_state.step)``,
the number of steps already taken, so the first step sees ``step = 0``), or
call it yourself.  Every schedule returns a Python float.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["Schedule", "constant", "piecewise_constant", "exponential_decay", "cosine_decay",
           "warmup_cosine", "join_schedules"]

Schedule = Callable[[int], float]


def constant(value: float) -> Schedule:
    """``value`` at every step."""
    value = float(value)

    def schedule(step: int) -> float:
        return value

    return schedule


def _pairs(boundaries_and_values: Any, values: Optional[Sequence[float]]
           ) -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    if values is None:
        items = (boundaries_and_values.items() if isinstance(boundaries_and_values, Mapping)
                 else boundaries_and_values)
        pairs = sorted((int(b), float(v)) for b, v in items)
        if not pairs or pairs[0][0] != 0:
            raise ValueError("piecewise_constant: (start_step, value) pairs must include step 0, "
                             f"got {boundaries_and_values!r}")
        return tuple(b for b, _ in pairs[1:]), tuple(v for _, v in pairs)
    boundaries = tuple(int(b) for b in boundaries_and_values)
    values = tuple(float(v) for v in values)
    if len(values) != len(boundaries) + 1:
        raise ValueError(f"piecewise_constant: needs len(values) == len(boundaries) + 1, "
                         f"got {len(boundaries)} boundaries and {len(values)} values")
    if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])) or (boundaries and boundaries[0] <= 0):
        raise ValueError(f"piecewise_constant: boundaries must be positive and increasing, got {boundaries}")
    return boundaries, values


def piecewise_constant(boundaries_and_values: Union[Mapping[int, float], Sequence[Any]],
                       values: Optional[Sequence[float]] = None) -> Schedule:
    """A step function.  Two spellings::

        piecewise_constant([100, 200], [1.0, 0.1, 0.01])      # boundaries, values
        piecewise_constant({0: 1.0, 100: 0.1, 200: 0.01})     # start step -> value

    Both give 1.0 for steps 0..99, 0.1 for 100..199 and 0.01 from step 200 on:
    a boundary is the first step of the next value.  The pairs form (a dict
    or a sequence of ``(start_step, value)``) must start at step 0.
    """
    boundaries, vals = _pairs(boundaries_and_values, values)

    def schedule(step: int) -> float:
        i = 0
        while i < len(boundaries) and step >= boundaries[i]:
            i += 1
        return vals[i]

    return schedule


def exponential_decay(init: float, decay_rate: float, decay_steps: int,
                      staircase: bool = False) -> Schedule:
    """``init * decay_rate ** (step / decay_steps)``; with ``staircase`` the exponent is floored."""
    init, decay_rate = float(init), float(decay_rate)
    if decay_steps <= 0:
        raise ValueError(f"exponential_decay needs decay_steps > 0, got {decay_steps}")

    def schedule(step: int) -> float:
        p = step / decay_steps
        return init * decay_rate ** (math.floor(p) if staircase else p)

    return schedule


def cosine_decay(init: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Cosine from ``init`` at step 0 to ``alpha * init`` at ``decay_steps``, constant after.

    ``init * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)``.
    """
    init, alpha = float(init), float(alpha)
    if decay_steps <= 0:
        raise ValueError(f"cosine_decay needs decay_steps > 0, got {decay_steps}")

    def schedule(step: int) -> float:
        s = min(max(step, 0), decay_steps)
        return init * ((1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * s / decay_steps)) + alpha)

    return schedule


def warmup_cosine(peak: float, warmup_steps: int, decay_steps: int, end: float = 0.0) -> Schedule:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine down to ``end``.

    ``decay_steps`` counts from step 0 and includes the warm-up (as optax's
    ``warmup_cosine_decay_schedule``): the value is ``peak * step / warmup_steps``
    for ``step < warmup_steps``, ``peak`` at ``warmup_steps``, then
    ``end + (peak - end) * 0.5 * (1 + cos(pi * (step - warmup_steps) / (decay_steps - warmup_steps)))``,
    reaching ``end`` at ``decay_steps`` and staying there.
    """
    peak, end = float(peak), float(end)
    if warmup_steps < 0 or decay_steps < warmup_steps:
        raise ValueError(f"warmup_cosine needs 0 <= warmup_steps <= decay_steps, got "
                         f"warmup_steps={warmup_steps}, decay_steps={decay_steps}")
    span = decay_steps - warmup_steps

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return peak * max(step, 0) / warmup_steps
        if step >= decay_steps:
            return end
        return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / span))

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """``schedules[i]`` from ``boundaries[i-1]`` on, called with the step shifted to start at 0.

    ``len(boundaries) == len(schedules) - 1``; for ``step < boundaries[0]`` the
    value is ``schedules[0](step)``; for ``boundaries[i-1] <= step < boundaries[i]``
    it is ``schedules[i](step - boundaries[i-1])``.
    """
    schedules, boundaries = tuple(schedules), tuple(int(b) for b in boundaries)
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"join_schedules needs len(boundaries) == len(schedules) - 1, "
                         f"got {len(boundaries)} boundaries and {len(schedules)} schedules")
    if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
        raise ValueError(f"join_schedules: boundaries must be increasing, got {boundaries}")

    def schedule(step: int) -> float:
        i, start = 0, 0
        while i < len(boundaries) and step >= boundaries[i]:
            start = boundaries[i]
            i += 1
        return float(schedules[i](step - start))

    return schedule
