"""A learning-rate range test: train briefly with a rate growing exponentially, watch the loss."""

from __future__ import annotations

import math
from typing import Any, List, NamedTuple, Optional

import numpy as np

from .. import random
from ..core import Layer
from ..losses import Loss
from ..optim.base import Optimizer
from ..step import TrainState, check_parts, make_step
from ..validate import data_shapes
from .checks import check_batch_size, check_count, check_train_state
from .inputs import Data, float_dtype

__all__ = ["lr_find", "LRFindResult"]


class LRFindResult(NamedTuple):
    """What :func:`lr_find` saw: the rate of each step (``lrs``), the training loss it gave
    (``losses``), that loss smoothed (``smoothed``), and ``suggestion``, a rate to start from."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float


def lr_find(model: Layer, loss: Loss, optimizer: Optimizer, train_data: Any, *, key: Any,
            min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100,
            batch_size: int = 128, smoothing: float = 0.98, diverge: float = 4.0,
            train_state: Optional[TrainState] = None) -> LRFindResult:
    """Leslie Smith's learning-rate range test (fastai's ``lr_find``).

    From the train state fit would start from (``TrainState.create`` with ``key``'s first
    half, or ``train_state``), take up to ``steps`` training steps on ``train_data``
    (``(x, y)`` or a data source, batches as :func:`fit` draws them), step ``i`` at the
    rate ``min_lr * (max_lr / min_lr) ** (i / (steps - 1))``, and record the loss.  Stops
    early when the loss is not finite or its smoothed value (an exponential moving average
    with ``smoothing``, bias-corrected) exceeds ``diverge`` times the lowest seen.  Nothing
    is kept: the train state it trained is thrown away.

    ``suggestion`` is the rate where the smoothed loss falls fastest against ``log(lr)``
    (the most negative slope before its minimum); a common choice, not a guarantee: look
    at ``losses`` against ``lrs`` (a log-scale plot) and pick a rate somewhat below where
    the loss stops falling.
    """
    check_parts("lr_find", model, loss, optimizer)
    for name, v in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) \
                or not math.isfinite(v) or v <= 0:
            raise ValueError(f"lr_find: {name} must be a finite number > 0, got {v!r}")
    if not min_lr < max_lr:
        raise ValueError(f"lr_find: min_lr ({min_lr}) must be below max_lr ({max_lr})")
    steps = check_count(steps, "steps", "lr_find")
    if steps < 2:
        raise ValueError(f"lr_find: steps must be >= 2, got {steps}")
    if not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"lr_find: smoothing must be in [0, 1), got {smoothing!r}")
    if not float(diverge) > 1.0:
        raise ValueError(f"lr_find: diverge must be > 1, got {diverge!r}")
    batch_size = check_batch_size(batch_size, "lr_find")
    data = Data(train_data, "lr_find: train_data")
    per_epoch = data.count(batch_size, False, None if data.arrays else
                           (data.length or steps))
    k_init, k_data = random.split(key)
    in_shape = data_shapes(data.x) if data.arrays else \
        data_shapes(data.first_batch(random.fold_in(k_data, 0))[0])
    if train_state is None:
        ts = TrainState.create(k_init, model, optimizer, in_shape)
    else:
        check_train_state(train_state, model, optimizer, in_shape)
        ts = train_state
    data.set_dtype(float_dtype(ts.params), "lr_find", [False])
    step = make_step(model, loss, optimizer)
    rates = min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))
    raw: List[float] = []
    smooth: List[float] = []
    avg, best, i = 0.0, math.inf, 0
    epoch = 0
    while i < steps:
        for batch in data.epoch(random.fold_in(k_data, epoch), 0, batch_size, per_epoch, True):
            if i >= steps:
                break
            with np.errstate(over="ignore", invalid="ignore"):
                ts, out = step(ts, batch, float(rates[i]))
            value = out["loss"]
            if not math.isfinite(value):
                i = steps
                break
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (len(raw) + 1))
            raw.append(value)
            smooth.append(smoothed)
            best = min(best, smoothed)
            i += 1
            if len(raw) > 1 and smoothed > diverge * best:
                i = steps
                break
        epoch += 1
    n = len(raw)
    lrs = rates[:n]
    smoothed = np.array(smooth)
    if n == 0:
        raise ValueError(f"lr_find: the loss was not finite at the first rate {min_lr}; "
                         "lower min_lr")
    low = int(np.argmin(smoothed))
    if low >= 2:
        slope = np.gradient(smoothed[:low + 1], np.log(lrs[:low + 1]))
        suggestion = float(lrs[int(np.argmin(slope))])
    else:
        suggestion = float(lrs[low]) / 10.0
    return LRFindResult(lrs, np.array(raw), smoothed, suggestion)
