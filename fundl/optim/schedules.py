"""Learning-rate schedules: plain functions ``schedule(step) -> float`` of the integer step.

Pass one as ``lr`` to :func:`fundl.make_step` (it calls ``lr(train_state.step)``,
the number of steps already taken, so the first step sees ``step = 0``), or
call it yourself.  Every schedule returns a Python float.  The step must be a
number ``>= 0`` (an int, a numpy integer or a 0-d array): anything else is a
``ValueError``/``TypeError`` naming the schedule; any step however large gives
the schedule's limit (``exponential_decay(1.0, 0.5, 10)(10**400) == 0.0``).
Arguments are checked when the schedule is made.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union, overload

import numpy as np

from .base import check_number

__all__ = ["Schedule", "constant", "piecewise_constant", "exponential_decay", "cosine_decay",
           "warmup_cosine", "join_schedules"]

Schedule = Callable[[int], float]


# An int in gives an int out (the declared contract: steps are ints); a float step is
# tolerated and stays a float.
@overload
def check_step(who: str, step: int) -> int: ...
@overload
def check_step(who: str, step: Any) -> Union[int, float]: ...
def check_step(who: str, step: Any) -> Union[int, float]:
    """``step`` as a Python int (or float), checked to be a number ``>= 0``."""
    if type(step) is int and step >= 0:  # the common case, first
        return step
    if isinstance(step, np.ndarray) and step.ndim == 0:
        step = step[()]
    if isinstance(step, (bool, np.bool_)) or not isinstance(
            step, (int, float, np.integer, np.floating)):
        raise TypeError(f"{who}: the step must be a number >= 0 (the steps taken so far), "
                        f"got {type(step).__name__} {step!r}")
    value = int(step) if isinstance(step, (int, np.integer)) else float(step)
    if not value >= 0:  # NaN too
        raise ValueError(f"{who}: the step must be >= 0 (the steps taken so far), got {value}")
    return value


@overload
def _steps(who: str, name: str, value: int, positive: bool = True) -> int: ...
@overload
def _steps(who: str, name: str, value: Any, positive: bool = True) -> Union[int, float]: ...
def _steps(who: str, name: str, value: Any, positive: bool = True) -> Union[int, float]:
    """A step count argument: a finite number, ``> 0`` (or ``>= 0`` if not ``positive``)."""
    out = check_number(who, name, value)
    if not (out > 0 if positive else out >= 0):
        raise ValueError(f"{who}: {name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return int(value) if isinstance(value, (int, np.integer)) else out


def _whole(who: str, name: str, value: Any) -> int:
    """A step boundary: a whole number (an int, or a float such as 100.0), never truncated."""
    out = check_number(who, name, value)
    if out != math.floor(out):
        raise ValueError(f"{who}: {name} must be whole numbers (steps), got {value!r}")
    return int(value) if isinstance(value, (int, np.integer)) else int(out)


def constant(value: float) -> Schedule:
    """``value`` at every step."""
    value = check_number("constant", "value", value)

    def schedule(step: int) -> float:
        check_step("constant", step)
        return value

    return schedule


def _pairs(boundaries_and_values: Any, values: Optional[Sequence[float]]
           ) -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    who = "piecewise_constant"
    if values is None:
        items = (boundaries_and_values.items() if isinstance(boundaries_and_values, Mapping)
                 else boundaries_and_values)
        pairs = sorted((_whole(who, "the start steps", b), check_number(who, "a value", v))
                       for b, v in items)
        if not pairs or pairs[0][0] != 0:
            raise ValueError("piecewise_constant: (start_step, value) pairs must include step 0, "
                             f"got {boundaries_and_values!r}")
        return tuple(b for b, _ in pairs[1:]), tuple(v for _, v in pairs)
    boundaries = tuple(_whole(who, "boundaries", b) for b in boundaries_and_values)
    values = tuple(check_number(who, "a value", v) for v in values)
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
        step = check_step("piecewise_constant", step)
        i = 0
        while i < len(boundaries) and step >= boundaries[i]:
            i += 1
        return vals[i]

    return schedule


def exponential_decay(init: float, decay_rate: float, decay_steps: int,
                      staircase: bool = False) -> Schedule:
    """``init * decay_rate ** (step / decay_steps)``; with ``staircase`` the exponent is floored.

    ``decay_rate >= 0`` and ``decay_steps > 0``.  A decaying schedule
    (``decay_rate <= 1``) is defined at every step, however large (it tends to 0);
    a growing one raises ``ValueError`` at the step where it leaves the floats.
    """
    who = "exponential_decay"
    init = check_number(who, "init", init)
    decay_rate = check_number(who, "decay_rate", decay_rate)
    if decay_rate < 0.0:
        raise ValueError(f"{who}: decay_rate must be >= 0, got {decay_rate}")
    decay_steps = _steps(who, "decay_steps", decay_steps)

    def schedule(step: int) -> float:
        step = check_step(who, step)
        try:
            p = step / decay_steps
        except OverflowError:   # a step beyond the floats
            p = math.inf
        if staircase and p < math.inf:
            p = math.floor(p)
        try:
            value = init * decay_rate ** p
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            if init == 0.0:
                return 0.0
            raise ValueError(f"{who}: {init} * {decay_rate} ** ({step} / {decay_steps}) "
                             f"overflows at step {step}")
        return value

    return schedule


def cosine_decay(init: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Cosine from ``init`` at step 0 to ``alpha * init`` at ``decay_steps``, constant after.

    ``init * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)``.
    """
    who = "cosine_decay"
    init, alpha = check_number(who, "init", init), check_number(who, "alpha", alpha)
    decay_steps = _steps(who, "decay_steps", decay_steps)

    def schedule(step: int) -> float:
        s = min(check_step(who, step), decay_steps)
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
    who = "warmup_cosine"
    peak, end = check_number(who, "peak", peak), check_number(who, "end", end)
    warmup_steps = _steps(who, "warmup_steps", warmup_steps, positive=False)
    decay_steps = _steps(who, "decay_steps", decay_steps, positive=False)
    if decay_steps < warmup_steps:
        raise ValueError(f"warmup_cosine needs 0 <= warmup_steps <= decay_steps, got "
                         f"warmup_steps={warmup_steps}, decay_steps={decay_steps}")
    span = decay_steps - warmup_steps

    def schedule(step: int) -> float:
        step = check_step(who, step)
        if step < warmup_steps:
            return peak * step / warmup_steps
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
    who = "join_schedules"
    schedules = tuple(schedules)
    boundaries = tuple(_whole(who, "boundaries", b) for b in boundaries)
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"{who}: schedules[{i}] is a {type(s).__name__}, not a schedule "
                            "step -> float (wrap a number in constant(value))")
    if boundaries and boundaries[0] <= 0:
        raise ValueError(f"{who}: boundaries must be > 0, got {boundaries}")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"join_schedules needs len(boundaries) == len(schedules) - 1, "
                         f"got {len(boundaries)} boundaries and {len(schedules)} schedules")
    if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
        raise ValueError(f"join_schedules: boundaries must be increasing, got {boundaries}")

    def schedule(step: int) -> float:
        step = check_step(who, step)
        i, start = 0, 0
        while i < len(boundaries) and step >= boundaries[i]:
            start = boundaries[i]
            i += 1
        return float(schedules[i](step - start))

    return schedule
