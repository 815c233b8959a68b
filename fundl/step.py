"""The train state and the pure training step."""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Tuple, Union

from . import fusion, random
from .core import Layer
from .losses import Loss
from .optim.base import Optimizer
from .optim.schedules import Schedule

__all__ = ["TrainState", "make_step", "Schedule"]


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
    if not isinstance(model, Layer):
        raise TypeError(f"make_step: model must be a fundl Layer, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"make_step: loss must be a fundl Loss, got {type(loss).__name__}")
    forward = fusion.runner(model)
    update = fusion.owned_update(model, optimizer)

    def step(ts: TrainState, batch: Tuple[Any, Any], lr: Union[float, Schedule]):
        x, y = batch
        key, sub = random.split(ts.key)
        out, new_state, pullback = forward(ts.params, ts.state, x, sub, need_dx=False)
        value, dout = loss.value_and_grad(out, y)
        grads, _ = pullback(dout)
        rate = lr(ts.step) if callable(lr) else lr
        params, opt_state = update(ts, grads, new_state, batch, rate)
        return TrainState(params, new_state, opt_state, key, ts.step + 1), {"loss": float(value)}

    return step
