"""The train state, the pure training step, and gradients of a loss through a model."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Protocol, Tuple, Union

import numpy as np

from . import plan, random, tree
from .core import Layer, Params, State
from .losses import Loss, LossError
from .optim.base import Optimizer, as_lr
from .optim.schedules import Schedule
from .validate import SpecError, TreeSpec

__all__ = ["TrainState", "make_step", "value_and_grad", "Schedule", "check_parts",
           "StepHook", "exclusive_grads"]

Step = Callable[["TrainState", Tuple[Any, Any], Union[float, Schedule]],
                Tuple["TrainState", Dict[str, Any]]]


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


_new_train_state = tuple.__new__


class StepHook(Protocol):
    """What a data-parallel step adds to :func:`make_step` (:mod:`fundl.distributed`).

    - ``forward_key(key)``: this rank's forward key;
    - ``loss(loss, out, y) -> (value, dout, share, metrics)``: the global batch's
      loss, this rank's output gradient of it, this rank's share of the global
      batch's examples (0 for a rank without examples, whose gradients are then
      zeros) and metrics to report beside the loss;
    - ``state(new_state, old_state, share)``: the state every rank keeps;
    - ``agree(train_state, lr)``: called when a train state reaches the step that
      it did not return itself; raises unless every rank holds the same one;
    - ``updated(train_state)``: called after the update of such a step; raises
      unless the params stayed the same on every rank.
    """

    def forward_key(self, key: Any) -> Any: ...
    def loss(self, loss: Loss, out: Any, y: Any) -> Tuple[float, Any, float, Dict[str, Any]]: ...
    def state(self, new_state: State, old_state: State, share: float) -> State: ...
    def agree(self, ts: "TrainState", lr: float) -> None: ...
    def updated(self, ts: "TrainState") -> None: ...


def make_step(model: Layer, loss: Loss, optimizer: Optimizer, *, train: bool = True,
              hook: Optional[StepHook] = None) -> Step:
    """The pure training step ``step(train_state, (x, y), lr) -> (train_state, metrics)``.

    One forward with the model's vjp (a fresh key split from the train state),
    the loss and its gradient, the pullback (without the first layer's input
    gradient), and the optimizer update.  ``lr`` is a number or a schedule
    ``lr(step) -> float``.  ``metrics`` holds ``"loss"`` (a Python float).
    ``train=False`` takes the gradients in eval mode (batch norm on its running
    statistics, no dropout; the state does not change).  Nothing the caller
    passed in is ever written.

    The params, state and optimizer state are checked against the model and the
    optimizer (structure, shapes, one float dtype) when a train state reaches the
    step that it did not return itself; the batch and the learning rate at every
    step.  ``hook`` makes it the data-parallel step (:mod:`fundl.distributed`).
    """
    check_parts("make_step", model, loss, optimizer)
    planned = plan.of(model)
    forward = planned.fast(need_dx=False).vjp_fn
    update, copy_first = _update_for(model, optimizer)
    uses_key = model.traits.uses_key
    checked = _TrainStateCheck(planned, optimizer)
    trusted: List[Any] = [None]   # the train state this step returned last

    def step(ts: TrainState, batch: Tuple[Any, Any], lr: Union[float, Schedule]):
        # The common case inline, the checks with their messages only when it fails.
        if type(batch) is tuple and len(batch) == 2 and type(batch[0]) is np.ndarray \
                and batch[0].shape[:1] != (0,):
            x, y = batch
        else:
            x, y = _check_batch(batch, empty_ok=hook is not None)
        if type(lr) is float and 0.0 <= lr < math.inf:  # the common case: no call
            rate = lr
        else:
            rate = as_lr(lr(ts.step) if callable(lr) else lr)
        fresh_state = ts is not trusted[0]
        if fresh_state:
            checked(ts, x)
            if hook is not None:
                hook.agree(ts, rate)
        if uses_key:
            key, sub = random.split(ts.key)
        else:  # the same next key; no forward key to derive
            key, sub = random.split(ts.key, 1)[0], None
        if hook is not None:
            sub = hook.forward_key(sub)
        try:
            out, new_state, pullback = forward(ts.params, ts.state, x, key=sub, train=train)
        except Exception as err:  # noqa: BLE001 - located, then re-raised
            raise planned.diagnose(err, lambda t: t.vjp_fn(ts.params, ts.state, x, key=sub,
                                                           train=train)) from None
        if hook is None:
            loss_value, dout = loss.value_and_grad(out, y)
            metrics: Dict[str, Any] = {"loss": float(loss_value)}
        else:
            global_value, dout, share, more = hook.loss(loss, out, y)
            metrics = {"loss": global_value, **more}
        if type(dout) is not np.ndarray or dout.shape != out.shape or dout.dtype != out.dtype:
            _check_loss_grad(loss, out, dout)
        try:
            grads, _ = pullback(dout)
        except Exception as err:  # noqa: BLE001
            raise planned.diagnose(err, lambda t: t.vjp_fn(ts.params, ts.state, x, key=sub,
                                                           train=train)[2](dout)) from None
        if hook is not None:
            if share == 0.0:  # a rank without examples contributes nothing
                grads = tree.zeros_like(ts.params)
            new_state = hook.state(new_state, ts.state, share)
        if copy_first:
            grads = exclusive_grads(grads, (ts.params, ts.state, ts.opt_state, new_state, batch))
        params, opt_state = update(ts.params, grads, ts.opt_state, rate)
        # tuple.__new__: the named tuple's own __new__ is a Python-level call
        new = _new_train_state(TrainState, (params, new_state, opt_state, key, ts.step + 1))
        if fresh_state and hook is not None:
            hook.updated(new)
        trusted[0] = new
        return new, metrics

    return step


def value_and_grad(model: Layer, loss: Loss, params: Params, state: State, x: Any, y: Any, *,
                   key: Any = None, train: bool = False) -> Tuple[float, Params, Any]:
    """``(loss value, dparams, dx)``: the loss of ``model(x)`` against ``y`` and its exact
    gradients with respect to the params and the input.

    In eval mode by default (``train=False``: the deployed model's function, batch
    norm on its running statistics, no dropout): the input gradient of a trained
    model for saliency maps and adversarial examples.  ``train=True`` (with a
    ``key`` for dropout) gives the training forward's gradients instead.
    """
    check_parts("value_and_grad", model, loss)
    out, _, pullback = model.vjp(params, state, x, key=key, train=train)
    value, dout = loss.value_and_grad(out, y)
    _check_loss_grad(loss, out, dout)
    dparams, dx = pullback(dout)
    return float(value), dparams, dx


def check_parts(who: str, model: Any, loss: Any, optimizer: Any = None) -> None:
    """TypeErrors that say what to pass unless ``model`` is a Layer, ``loss`` a Loss and
    ``optimizer`` (if given) an Optimizer (``who`` names the caller: ``"make_step"``)."""
    if not isinstance(model, Layer):
        raise TypeError(f"{who}: model must be a fundl Layer (e.g. fl.serial(fl.dense(10), ...)), "
                        f"got {type(model).__name__}")
    if not isinstance(loss, Loss):
        hint = (" (a loss factory such as fl.losses.huber must be called: fl.losses.huber(1.0))"
                if callable(loss) else "")
        raise TypeError(f"{who}: loss must be a fundl Loss, e.g. fl.losses.softmax_cross_entropy; "
                        f"fl.losses.Loss(value, value_and_grad, name) wraps your own; got "
                        f"{type(loss).__name__}{hint}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        hint = " (did you forget to call it, e.g. fl.optim.adam()?)" if callable(optimizer) else ""
        raise TypeError(f"{who}: optimizer must be a fundl Optimizer, got "
                        f"{type(optimizer).__name__}{hint}")


def _check_batch(batch: Any, empty_ok: bool = False) -> Tuple[Any, Any]:
    """``batch`` as ``(x, y)``, or a clear error (not a 3-tuple unpacking error, not an
    empty batch unless ``empty_ok``: a data-parallel rank may have no examples)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list))
               else type(batch).__name__)
        raise ValueError(f"step: batch must be a pair (x, y), got {got}")
    x, y = batch
    first = x
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    if not empty_ok and isinstance(first, np.ndarray) and first.ndim >= 1 and first.shape[0] == 0:
        raise ValueError("step: the batch is empty (0 examples); skip it or drop the last batch")
    return x, y


def _check_loss_grad(loss: Loss, out: Any, dout: Any) -> None:
    """The loss gradient has the model output's structure, shapes and dtypes (a custom
    loss's wrong-shaped gradient would otherwise be reshaped by a pullback)."""
    try:
        plan.check_cotangent(out, dout, f"the gradient of the loss {loss.name}")
    except Exception as err:  # noqa: BLE001 - one error type for a bad loss
        raise LossError(str(err)) from None


class _TrainStateCheck:
    """``check(ts, x)``: the train state's params and state against the model (for ``x``'s
    signature), its optimizer state against ``optimizer.init`` (structure, computed once),
    and one float dtype across the three."""

    def __init__(self, planned: plan.Plan, optimizer: Optimizer) -> None:
        self.planned = planned
        self.optimizer = optimizer
        self.opt_spec: Optional[TreeSpec] = None

    def __call__(self, ts: Any, x: Any) -> None:
        if not isinstance(ts, TrainState):
            raise TypeError(f"step: expected a TrainState, got {type(ts).__name__}")
        self.planned.check(ts.params, ts.state, x)
        if self.opt_spec is None:
            self.opt_spec = TreeSpec(self.optimizer.init(ts.params))
        try:
            self.opt_spec.check(ts.opt_state, "opt_state")
        except SpecError as err:
            raise SpecError(f"{err}; is the train state from another optimizer than "
                            f"{self.optimizer.name}? (TrainState.create(key, model, optimizer, "
                            f"in_shape) makes a matching one)") from None
        one_float_dtype({"params": ts.params, "state": ts.state, "opt_state": ts.opt_state})


def one_float_dtype(trees: Dict[str, Any]) -> None:
    """Raise :class:`SpecError` naming two paths unless every float leaf of ``trees`` has one
    dtype (float32 params with a float16 optimizer state would train wrongly)."""
    first: Optional[Tuple[str, np.dtype]] = None
    for path, leaf in tree.flatten_with_paths(trees):
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f":
            if first is None:
                first = (path, leaf.dtype)
            elif leaf.dtype != first[1]:
                raise SpecError(f"{path}: dtype {leaf.dtype} differs from {first[0]} ({first[1]}); "
                                f"params, state and optimizer state must share one float dtype "
                                f"(fundl.tree.cast the whole train state)")


# --- handing gradients to an optimizer that reuses their memory --------------------------------

def _update_for(model: Layer, optimizer: Optimizer
                ) -> Tuple[Callable[[Any, Any, Any, float], Tuple[Any, Any]], bool]:
    """``(update, copy_first)``: an optimizer that may build the new params in the gradients'
    memory (``update_owning_grads``, sgd) gets them -- directly when the model's gradients
    are fresh arrays (:func:`fundl.plan.fresh_results`), after :func:`exclusive_grads`
    otherwise; any other optimizer its plain ``update``."""
    if optimizer.update_owning_grads is None:
        return optimizer.update, False
    return optimizer.update_owning_grads, "dparams" not in plan.fresh_results(model)


def exclusive_grads(grads: Any, keep: Any) -> Any:
    """``grads`` with every leaf an array nobody else holds, so it may be written.

    A leaf is kept as it is when it is a writeable array that owns its memory,
    that no other gradient leaf views, and whose memory is not that of an
    array in ``keep`` (the params, state, optimizer state and batch that
    outlive the step); any other leaf is replaced by a copy.
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
