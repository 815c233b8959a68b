"""The Layer contract and the helpers that build layers.

A layer is an immutable named tuple of three pure functions::

    params, state, out_shape = layer.init(key, in_shape)
    y                        = layer.apply(params, state, x, *, key=None, train=False)
    y, new_state, pullback   = layer.vjp(params, state, x, *, key=None)
    dparams, dx              = pullback(dy)

``in_shape``/``out_shape`` are per-example shapes (no batch axis); data carries
the batch on axis 0.  ``vjp`` is the training-mode forward.  It may also take the
keyword ``need_dx=False``, a hint that the caller does not need the input
gradient (the first layer of a model); the pullback may then return ``None``
for ``dx``.  Layers written without that keyword still compose: combinators only
pass it to layers whose ``vjp`` accepts it (see :func:`call_vjp`).

Donation (an optimisation; nothing changes for layers that ignore it).  A layer
may declare in ``Layer.fresh`` that its ``vjp`` output (``"y"``) or its
pullback's input gradient (``"dx"``) is an array nobody else holds: a new one,
never kept by the layer itself.  :func:`fundl.serial` then hands it over to the
neighbour that consumes it, with the keyword ``x_donated=True`` (the next
layer's ``vjp`` may overwrite its input ``x``) or ``dy_donated=True`` (the
previous layer's pullback may overwrite the ``dy`` it receives).  So a ReLU
after a dense layer works in place, as hand-written numpy would, while every
array a caller passes in is still never written.  A model whose pullback's
parameter gradients are all fresh (``"dparams"``) lets :func:`fundl.make_step`
hand them to the optimizer without checking them first.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, FrozenSet, NamedTuple, Tuple

import numpy as np

from . import random

Array = np.ndarray
Shape = Tuple[int, ...]
Params = Any  # a pytree of nested dicts/lists/tuples with arrays at the leaves
State = Any
Pullback = Callable[[Any], Tuple[Params, Any]]

__all__ = [
    "Layer",
    "LayerError",
    "stateless_layer",
    "elementwise_layer",
    "call_vjp",
    "accepts_keyword",
    "split_key",
    "init_child",
    "apply_child",
    "vjp_child",
    "check_float_input",
    "check_trailing_shape",
    "check_sequence_in_shape",
    "check_param_dtype",
    "as_shape",
    "is_shape",
    "normalize_shapes",
]


class LayerError(ValueError):
    """Bad input to a layer: the message names the layer's path in the model.

    ``path`` is the layer's position in the parameter tree (``"block_1/dense_0"``),
    ``kind`` is the layer's own name (``"dense"``) and ``detail`` what is wrong.
    Combinators re-raise a child's error with their child key prepended, so the
    message a user sees points at the exact layer inside the model.
    """

    def __init__(self, detail: str, kind: str = "", path: Tuple[str, ...] = ()):
        self.detail = detail
        self.kind = kind
        self.path = tuple(path)
        super().__init__(self._message())

    def _message(self) -> str:
        if self.path:
            where = "/".join(self.path)
            kind = f" ({self.kind})" if self.kind and self.kind != self.path[-1] else ""
            return f"layer '{where}'{kind}: {self.detail}"
        if self.kind:
            return f"layer '{self.kind}': {self.detail}"
        return self.detail

    def named(self, kind: str) -> "LayerError":
        """This error attributed to a layer called ``kind`` (if not yet named)."""
        if self.kind:
            return self
        return LayerError(self.detail, kind, self.path)

    def within(self, parent_key: str) -> "LayerError":
        """This error as seen from the parent that holds the layer under ``parent_key``."""
        return LayerError(self.detail, self.kind, (parent_key,) + self.path)

    def __reduce__(self):  # keep the error picklable despite the custom __init__
        return (LayerError, (self.detail, self.kind, self.path))


class Layer(NamedTuple):
    """A layer: ``init``, ``apply`` and ``vjp`` as pure functions, and a ``name``.

    Models built by combinators are layers too.  ``children`` lists a
    combinator's ``(key, layer)`` pairs, keyed as in its params, for inspection
    (``fundl.summary``); running a layer never needs it.  ``fresh`` names the
    results that are arrays nobody else holds, which :func:`fundl.serial` may
    donate to the neighbouring layer (see the module docstring): ``"y"`` (the
    output of ``vjp``), ``"dx"`` (the input gradient of its pullback) and
    ``"dparams"`` (every array of the pullback's parameter gradients).
    ``keyless`` says the layer never uses its ``key`` (every layer built with
    :func:`stateless_layer`); combinators whose children are all keyless give
    them ``key=None`` instead of splitting keys at every step.
    ``traits`` states facts about the layer's function that let a combinator
    run it differently with exactly the same results: ``"relu"`` (the
    elementwise ``max(x, 0)``, gradient 0 where ``x <= 0``) and ``"max_pool"``
    (a max over windows within each channel); see :func:`fundl.serial`.
    """

    init: Callable[..., Tuple[Params, State, Any]]
    apply: Callable[..., Any]
    vjp: Callable[..., Tuple[Any, State, Pullback]]
    name: str
    children: Tuple[Tuple[str, "Layer"], ...] = ()
    fresh: Tuple[str, ...] = ()
    keyless: bool = False
    traits: FrozenSet[str] = frozenset()


def as_shape(shape: Any) -> Shape:
    """``shape`` as a tuple of ints (accepts an int for a 1-D shape)."""
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(d) for d in shape)


def is_shape(s: Any) -> bool:
    """Whether ``s`` is one shape (an int or a sequence of ints), not a tuple of shapes."""
    return isinstance(s, (int, np.integer)) or (
        isinstance(s, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in s))


def normalize_shapes(s: Any) -> Any:
    """A shape, or a nested tuple of shapes (multi-input layers), as tuples of ints."""
    if is_shape(s):
        return as_shape(s)
    return tuple(normalize_shapes(a) for a in s)


@functools.lru_cache(maxsize=None)
def accepts_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` can be called with the keyword argument ``name`` (cached per function)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = sig.parameters
    if name in params:
        return params[name].kind in (inspect.Parameter.KEYWORD_ONLY,
                                     inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def call_vjp(layer: Layer, params: Params, state: State, x: Any, key: Any = None,
             need_dx: bool = True, x_donated: bool = False,
             dy_donated: bool = False) -> Tuple[Any, State, Pullback]:
    """Run ``layer.vjp`` with the hints it accepts (:func:`vjp_hints`); with every
    hint at its default (``need_dx=True``, no donation) it is called without any."""
    if need_dx and not x_donated and not dy_donated:  # the common case
        return layer.vjp(params, state, x, key=key)
    hints = vjp_hints(hints_taken(layer.vjp), need_dx, x_donated, dy_donated)
    return layer.vjp(params, state, x, key=key, **hints)


@functools.lru_cache(maxsize=None)
def hints_taken(vjp: Callable) -> frozenset:
    """Which of the hints ``need_dx``, ``x_donated``, ``dy_donated`` ``vjp`` accepts."""
    return frozenset(h for h in ("need_dx", "x_donated", "dy_donated") if accepts_keyword(vjp, h))


def vjp_hints(taken: frozenset, need_dx: bool, x_donated: bool, dy_donated: bool) -> dict:
    """The keyword hints for a ``vjp`` that accepts ``taken``: ``need_dx`` as given,
    the donations only when made."""
    hints = {"need_dx": need_dx} if "need_dx" in taken else {}
    if x_donated and "x_donated" in taken:
        hints["x_donated"] = True
    if dy_donated and "dy_donated" in taken:
        hints["dy_donated"] = True
    return hints


# --- running children (for combinators) ------------------------------------------

def split_key(key: Any, n: int, keyless: bool = False) -> Tuple[Any, ...]:
    """``n`` independent child keys, or ``n`` Nones when ``key`` is None (inference)
    or ``keyless`` (the children are all :attr:`Layer.keyless`: nothing to split)."""
    return (None,) * n if key is None or keyless else random.split(key, n)


def init_child(child_key: str, layer: Layer, key: Any, in_shape: Any) -> Tuple[Params, State, Any]:
    """``layer.init``; a :class:`LayerError` gets ``child_key`` prepended to its path."""
    try:
        return layer.init(key, in_shape)
    except LayerError as err:
        raise err.within(child_key) from None


def apply_child(child_key: str, layer: Layer, params: Params, state: State, x: Any,
                key: Any = None, train: bool = False) -> Any:
    """``layer.apply``; a :class:`LayerError` gets ``child_key`` prepended to its path."""
    try:
        return layer.apply(params, state, x, key=key, train=train)
    except LayerError as err:
        raise err.within(child_key) from None


def vjp_child(child_key: str, layer: Layer, params: Params, state: State, x: Any,
              key: Any = None, need_dx: bool = True, x_donated: bool = False,
              dy_donated: bool = False) -> Tuple[Any, State, Pullback]:
    """:func:`call_vjp`; a :class:`LayerError` gets ``child_key`` prepended to its path."""
    try:
        return call_vjp(layer, params, state, x, key, need_dx, x_donated, dy_donated)
    except LayerError as err:
        raise err.within(child_key) from None


# --- input checks shared by layers -------------------------------------------------

def check_float_input(x: Any, what: str = "input") -> None:
    """Raise :class:`LayerError` unless ``x`` is a floating-point numpy array."""
    if not isinstance(x, np.ndarray):
        raise LayerError(f"expected {what} to be a numpy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise LayerError(
            f"expected a floating-point {what}, got dtype {x.dtype}; "
            f"cast it first, e.g. x.astype(np.float32)")


def check_param_dtype(x: Array, param: Array) -> None:
    """Raise :class:`LayerError` if ``x``'s dtype differs from the parameters' dtype."""
    if x.dtype != param.dtype:
        raise LayerError(
            f"input dtype {x.dtype} does not match the parameter dtype {param.dtype}; "
            f"cast the input (x.astype(np.{param.dtype})) or the params "
            f"(fundl.tree.cast(params, np.{x.dtype}))")


def check_trailing_shape(x: Array, expected: Shape, what: str = "input") -> None:
    """Raise :class:`LayerError` unless ``x`` is ``(batch, *expected)``.

    ``None`` entries in ``expected`` match any size.
    """
    expected = tuple(expected)
    want = "(batch, " + ", ".join("?" if d is None else str(d) for d in expected) + ")"
    if x.ndim != len(expected) + 1:
        raise LayerError(
            f"expected {what} of shape {want} (rank {len(expected) + 1}), "
            f"got shape {tuple(x.shape)}")
    for got, exp in zip(x.shape[1:], expected):
        if exp is not None and got != exp:
            raise LayerError(f"expected {what} of shape {want}, got shape {tuple(x.shape)}")


def check_sequence_in_shape(in_shape: Any) -> Shape:
    """``in_shape`` as a per-example ``(time, features)`` shape with ``features >= 1``
    (the ``init`` check of sequence layers); raises :class:`LayerError` otherwise."""
    in_shape = as_shape(in_shape)
    if len(in_shape) != 2 or in_shape[1] < 1:
        raise LayerError(f"expected an input shape (time, features), got {in_shape}")
    return in_shape


# --- helpers to build layers -----------------------------------------------------

def stateless_layer(
    name: str,
    init: Callable[[Any, Shape], Tuple[Params, Shape]],
    apply: Callable[[Params, Any], Any],
    vjp: Callable[..., Tuple[Any, Pullback]],
    fresh: Tuple[str, ...] = (),
) -> Layer:
    """Build a Layer with no state and no randomness from three plain functions.

    - ``init(key, in_shape) -> (params, out_shape)``
    - ``apply(params, x) -> y``
    - ``vjp(params, x) -> (y, pullback)`` with ``pullback(dy) -> (dparams, dx)``;
      it may take the keywords ``need_dx``, ``x_donated`` and ``dy_donated``
      (see :mod:`fundl.core`).

    ``fresh`` is the layer's :attr:`Layer.fresh`.  Any :class:`LayerError` they
    raise is attributed to ``name``.
    """
    if not set(fresh) <= {"y", "dx", "dparams"}:
        raise ValueError(f"{name}: fresh may name only 'y', 'dx' and 'dparams', "
                         f"got {tuple(fresh)!r}")
    taken = hints_taken(vjp)

    def layer_init(key, in_shape):
        try:
            params, out_shape = init(key, in_shape)
        except LayerError as err:
            raise err.named(name) from None
        return params, {}, out_shape

    def layer_apply(params, state, x, *, key=None, train=False):
        try:
            return apply(params, x)
        except LayerError as err:
            raise err.named(name) from None

    def layer_vjp(params, state, x, *, key=None, need_dx=True, x_donated=False,
                  dy_donated=False):
        try:
            y, pullback = vjp(params, x, **vjp_hints(taken, need_dx, x_donated, dy_donated))
        except LayerError as err:
            raise err.named(name) from None
        return y, state, pullback

    return Layer(layer_init, layer_apply, layer_vjp, name, (), tuple(fresh), keyless=True)


def elementwise_layer(
    name: str,
    forward: Callable[..., Array],
    backward: Callable[..., Array],
    saves: str = "xy",
    fresh: Tuple[str, ...] = (),
) -> Layer:
    """Build a parameter-free, shape-preserving layer from two functions.

    - ``forward(x) -> y`` with ``y.shape == x.shape`` and ``y.dtype == x.dtype``
    - ``backward(x, y, dy) -> dx`` with ``dx.shape == x.shape``; it must not
      write into ``x``, ``y`` or ``dy``.

    ``saves`` names the residuals the backward pass needs: ``"x"``, ``"y"`` or
    ``"xy"``; the other one is passed as ``None`` and is not kept alive (relu,
    tanh and sigmoid need only ``y``).

    Donation: if ``forward`` takes a keyword ``out``, a donated input is
    overwritten with the output (``forward(x, out=x)``; not when ``saves``
    keeps ``x``); if ``backward`` takes ``out``, a donated ``dy`` is
    overwritten with the input gradient (``backward(x, y, dy, out=dy)``).  Give
    ``fresh=("dx",)`` only if ``backward`` always returns a new array or ``out``
    (``"dparams"`` is always declared: there are no params).
    """
    if saves not in ("x", "y", "xy"):
        raise ValueError(f"saves must be 'x', 'y' or 'xy', got {saves!r}")
    keep_x, keep_y = "x" in saves, "y" in saves
    forward_in_place = accepts_keyword(forward, "out") and not keep_x
    backward_in_place = accepts_keyword(backward, "out")

    def init(key, in_shape):
        return {}, as_shape(in_shape)

    def apply(params, x):
        check_float_input(x)
        return forward(x)

    def vjp(params, x, x_donated=False, dy_donated=False):
        check_float_input(x)
        y = forward(x, out=x) if x_donated and forward_in_place else forward(x)
        x_saved = x if keep_x else None
        y_saved = y if keep_y else None
        if dy_donated and backward_in_place:
            return y, lambda dy: ({}, backward(x_saved, y_saved, dy, out=dy))
        return y, lambda dy: ({}, backward(x_saved, y_saved, dy))

    return stateless_layer(name, init, apply, vjp, tuple(fresh) + ("dparams",))
