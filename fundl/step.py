"""The train state and the pure training step."""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Tuple, Union

import numpy as np

from . import fusion, random
from .core import Layer
from .losses import Loss
from .optim.base import Optimizer, as_lr
from .optim.schedules import Schedule
from .validate import SpecError, TreeSpec

__all__ = ["TrainState", "make_step", "Schedule", "check_parts"]


class TrainState(NamedTuple):
    """Everything that changes during training, as one immutable pytree.

    ``params`` (trained), ``state`` (not trained, e.g. BatchNorm statistics),
    ``opt_state``, ``key`` (split every step, e.g. for dropout masks) and
    ``step`` (the number of steps taken, an int).
    """

    params: Any
    state: Any
    opt_state: Any
    key: Any
    step: int

    @classmethod
    def create(cls, key: Any, model: Layer, optimizer: Optimizer, in_shape: Any) -> "TrainState":
        """Initialise ``model`` for per-example ``in_shape`` and ``optimizer`` for its params."""
        k_init, k_train = random.split(key)
        params, state, _ = model.init(k_init, in_shape)
        return cls(params, state, optimizer.init(params), k_train, 0)


def make_step(model: Layer, loss: Loss, optimizer: Optimizer
              ) -> Callable[[TrainState, Tuple[Any, Any], Union[float, Schedule]],
                            Tuple[TrainState, Dict[str, Any]]]:
    """The pure training step ``step(train_state, (x, y), lr) -> (train_state, metrics)``.

    One forward with ``model.vjp`` (training mode, a fresh key split from the
    train state), the loss and its gradient, the pullback (without the first
    layer's input gradient), and the optimizer update.  ``lr`` is a number or a
    schedule ``lr(step) -> float``.  ``metrics`` holds ``"loss"`` (a Python
    float).  Nothing the caller passed in is ever written; how the gradients
    reach an optimizer that reuses their memory is :func:`fundl.fusion.owned_update`.
    """
    check_parts("make_step", model, loss, optimizer)
    forward = fusion.bound_runner(model, need_dx=False, x_donated=False, dy_donated=False)
    update, copy_first = fusion.owned_update(model, optimizer)
    opt_state_spec = _OptStateSpec(optimizer)
    uses_key = fusion.speed_of(model).uses_key

    def step(ts: TrainState, batch: Tuple[Any, Any], lr: Union[float, Schedule]):
        # The common case inline, the checks with their messages only when it fails: two
        # frames less (1.5 us of the tiny MLP's 84 us step, benchmarks.overhead).
        if type(batch) is tuple and len(batch) == 2 and type(batch[0]) is np.ndarray \
                and batch[0].shape[:1] != (0,):
            x, y = batch
        else:
            x, y = _check_batch(batch)
        if type(ts) is not TrainState or not opt_state_spec.is_exactly(ts.opt_state):
            opt_state_spec.check(ts)
        rate = as_lr(lr(ts.step) if callable(lr) else lr)
        if uses_key:
            key, sub = random.split(ts.key)
        else:  # the same next key; no forward key to derive (4-7 us of a tiny model's step)
            key, sub = random.split(ts.key, 1)[0], None
        out, new_state, pullback = forward(ts.params, ts.state, x, key=sub)
        value, dout = loss.value_and_grad(out, y)
        grads, _ = pullback(dout)
        if copy_first:
            grads = fusion.exclusive_grads(grads, (ts.params, ts.state, ts.opt_state, new_state,
                                                   batch))
        params, opt_state = update(ts.params, grads, ts.opt_state, rate)
        return TrainState(params, new_state, opt_state, key, ts.step + 1), {"loss": float(value)}

    return step


def check_parts(who: str, model: Any, loss: Any, optimizer: Any) -> None:
    """TypeErrors that say what to pass unless ``model`` is a Layer, ``loss`` a Loss and
    ``optimizer`` an Optimizer (``who`` names the caller: ``"make_step"``, ``"fit"``)."""
    if not isinstance(model, Layer):
        raise TypeError(f"{who}: model must be a fundl Layer (e.g. fl.serial(fl.dense(10), ...)), "
                        f"got {type(model).__name__}")
    if not isinstance(loss, Loss):
        hint = (" (a loss factory such as fl.losses.huber must be called: fl.losses.huber(1.0))"
                if callable(loss) else "")
        raise TypeError(f"{who}: loss must be a fundl Loss, e.g. fl.losses.softmax_cross_entropy; "
                        f"fl.losses.Loss(value, value_and_grad, name) wraps your own; got "
                        f"{type(loss).__name__}{hint}")
    if not isinstance(optimizer, Optimizer):
        hint = " (did you forget to call it, e.g. fl.optim.adam()?)" if callable(optimizer) else ""
        raise TypeError(f"{who}: optimizer must be a fundl Optimizer, got "
                        f"{type(optimizer).__name__}{hint}")


def _check_batch(batch: Any) -> Tuple[Any, Any]:
    """``batch`` as ``(x, y)``, or a clear error (not a 3-tuple unpacking error, not an empty batch)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list))
               else type(batch).__name__)
        raise ValueError(f"step: batch must be a pair (x, y), got {got}")
    x, y = batch
    first = x
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    if isinstance(first, np.ndarray) and first.ndim >= 1 and first.shape[0] == 0:
        raise ValueError("step: the batch is empty (0 examples); skip it or drop the last batch")
    return x, y


class _OptStateSpec:
    """The structure of the optimizer's state for the params it trains (from ``init``, once),
    so that a missing or foreign ``opt_state`` (another optimizer's) gets a clear error."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.spec: Any = None
        self.is_exactly: Callable[[Any], bool] = _never  # the spec's fast test, once made

    def check(self, ts: Any) -> None:
        if not isinstance(ts, TrainState):
            raise TypeError(f"step: expected a TrainState, got {type(ts).__name__}")
        if self.spec is None:
            self.spec = TreeSpec(self.optimizer.init(ts.params))
            self.is_exactly = self.spec.is_exactly or _never
        try:
            self.spec.check(ts.opt_state, "opt_state")
        except SpecError as err:
            raise SpecError(f"{err}; is the train state from another optimizer than "
                            f"{self.optimizer.name}? (TrainState.create(key, model, optimizer, "
                            f"in_shape) makes a matching one)") from None


def _never(tree: Any) -> bool:
    return False
