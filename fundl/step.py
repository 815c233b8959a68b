"""The train state and the pure training step."""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Tuple, Union

import numpy as np

from . import random, tree
from .core import Layer, call_vjp
from .losses import Loss
from .optim.base import Optimizer

__all__ = ["TrainState", "make_step", "Schedule", "exclusive_grads"]

Schedule = Callable[[int], float]


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
    train state), the loss and its gradient, the pullback, and the optimizer
    update.  ``lr`` is a number or a schedule ``lr(step) -> float``.
    ``metrics`` holds ``"loss"`` (a Python float).  The input gradient of the
    first layer is not computed.
    Optimizers that accept ``donate_grads`` (``sgd``) get the gradients
    donated: the step owns them, so the new params may reuse their memory
    (unless the model declares them fresh, ``"dparams" in model.fresh``,
    :func:`exclusive_grads` first copies any gradient leaf that is not an
    array of its own).  Nothing the caller passed in is ever written.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"make_step: model must be a fundl Layer, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"make_step: loss must be a fundl Loss, got {type(loss).__name__}")

    donate = optimizer.update_owning_grads is not None
    trusted = "dparams" in model.fresh  # every gradient array is new and nobody else's

    def step(ts: TrainState, batch: Tuple[Any, Any], lr: Union[float, Schedule]):
        x, y = batch
        key, sub = random.split(ts.key)
        out, new_state, pullback = call_vjp(model, ts.params, ts.state, x, sub, need_dx=False)
        value, dout = loss.value_and_grad(out, y)
        grads, _ = pullback(dout)
        rate = lr(ts.step) if callable(lr) else lr
        if donate:
            if not trusted:  # the model does not declare its gradients fresh: check them
                grads = exclusive_grads(grads, (ts.params, ts.state, ts.opt_state, new_state,
                                                batch))
            params, opt_state = optimizer.update_owning_grads(ts.params, grads, ts.opt_state,
                                                              rate)
        else:
            params, opt_state = optimizer.update(ts.params, grads, ts.opt_state, rate)
        return TrainState(params, new_state, opt_state, key, ts.step + 1), {"loss": float(value)}

    return step


def exclusive_grads(grads: Any, keep: Any) -> Any:
    """``grads`` with every leaf an array nobody else holds, so it may be written.

    A leaf is kept as it is when it is a writeable array that owns its memory,
    that no other gradient leaf views, and whose memory is not that of an
    array in ``keep`` (the params, state, optimizer state and batch that
    outlive the step); any other leaf is replaced by a copy.  Pullbacks
    normally return fresh arrays, so this copies nothing.
    """
    leaves = tree.leaves(grads)
    mine = set()
    for g in leaves:  # the common case, checked first: distinct writeable arrays of their own
        if type(g) is not np.ndarray or g.base is not None or not g.flags.writeable \
                or id(g) in mine:
            break
        mine.add(id(g))
    else:
        if not any(type(a) is np.ndarray and (id(a) in mine or id(a.base) in mine)
                   for a in tree.leaves(keep)):
            return grads  # nothing to copy, nothing to rebuild
    owners: Dict[int, int] = {}
    for g in leaves:
        if isinstance(g, np.ndarray):
            owner = id(g if g.base is None else g.base)
            owners[owner] = owners.get(owner, 0) + 1
    kept = {id(a if a.base is None else a.base)
            for a in tree.leaves(keep) if isinstance(a, np.ndarray)}

    def owned(g: Any) -> bool:
        return (isinstance(g, np.ndarray) and g.base is None and g.flags.writeable
                and owners[id(g)] == 1 and id(g) not in kept)

    return tree.map(lambda g: g if owned(g) else np.array(g, copy=True), grads)
