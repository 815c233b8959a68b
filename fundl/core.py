"""The Layer contract and the helpers that build layers.

A layer is an immutable named tuple of three pure functions::

    params, state, out_shape = layer.init(key, in_shape)
    y                        = layer.apply(params, state, x, *, key=None, train=False)
    y, new_state, pullback   = layer.vjp(params, state, x, *, key=None)
    dparams, dx              = pullback(dy)

``in_shape``/``out_shape`` are per-example shapes (no batch axis); data carries
the batch on axis 0.  ``vjp`` is the training-mode forward.  Speed tricks live
below this contract, in :mod:`fundl.fusion`: a layer may declare there what lets
combinators run it faster with the same results (``Layer.speed``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Optional, Tuple

import numpy as np

from . import fusion
from .checks import LayerError, Shape, as_shape, check_float_input

Params = Any  # a pytree of nested dicts/lists/tuples with arrays at the leaves
State = Any
Pullback = Callable[[Any], Tuple[Params, Any]]

__all__ = ["Layer", "Params", "State", "Pullback", "stateless_layer", "keyed_layer",
           "elementwise_layer"]


class Layer(NamedTuple):
    """A layer: ``init``, ``apply`` and ``vjp`` as pure functions, and a ``name``.

    Models built by combinators are layers too; ``children`` lists a
    combinator's ``(key, layer)`` pairs, keyed as in its params, for inspection
    (``fundl.summary``).  ``speed`` is an optional :class:`fundl.fusion.Speed`
    declaration; ``None`` means a plain layer that uses its key.
    """

    init: Callable[..., Tuple[Params, State, Any]]
    apply: Callable[..., Any]
    vjp: Callable[..., Tuple[Any, State, Pullback]]
    name: str
    children: Tuple[Tuple[str, "Layer"], ...] = ()
    speed: Optional[fusion.Speed] = None


def stateless_layer(
    name: str,
    init: Callable[[Any, Shape], Tuple[Params, Shape]],
    apply: Callable[[Params, Any], Any],
    vjp: Callable[..., Tuple[Any, Pullback]],
    *,
    takes: Iterable[str] = (),
    fresh: Iterable[str] = (),
    kind: str = "",
) -> Layer:
    """Build a Layer with no state and no randomness from three plain functions.

    - ``init(key, in_shape) -> (params, out_shape)``
    - ``apply(params, x) -> y``
    - ``vjp(params, x) -> (y, pullback)`` with ``pullback(dy) -> (dparams, dx)``

    Any :class:`LayerError` they raise is attributed to ``name``.  ``takes``,
    ``fresh`` and ``kind`` are the layer's :class:`fundl.fusion.Speed`
    declaration (``vjp`` then accepts the keywords named in ``takes``); the
    layer never uses a key.
    """
    speed = fusion.declare(uses_key=False, takes=takes, fresh=fresh, kind=kind, who=name)
    return _named_layer(name, init, apply, vjp, speed, keyed=False)


def keyed_layer(
    name: str,
    init: Callable[[Any, Shape], Tuple[Params, Shape]],
    apply: Callable[[Params, Any, Any, bool], Any],
    vjp: Callable[..., Tuple[Any, Pullback]],
    *,
    takes: Iterable[str] = (),
    fresh: Iterable[str] = (),
) -> Layer:
    """Build a Layer with no state whose training forward uses its key (dropout).

    - ``init(key, in_shape) -> (params, out_shape)``
    - ``apply(params, x, key, train) -> y`` (``key`` may be None when not training)
    - ``vjp(params, x, key) -> (y, pullback)``, taking the hints named in ``takes``

    Errors are attributed to ``name`` as in :func:`stateless_layer`.
    """
    speed = fusion.declare(uses_key=True, takes=takes, fresh=fresh, who=name)
    return _named_layer(name, init, apply, vjp, speed, keyed=True)


def _named_layer(name: str, init: Callable, apply: Callable, vjp: Callable,
                 speed: fusion.Speed, keyed: bool) -> Layer:
    """The Layer of a stateless or keyed layer: state ``{}``, errors attributed to ``name``;
    ``keyed`` layers' ``apply``/``vjp`` also get the key (and ``apply`` the train flag)."""

    def layer_init(key, in_shape):
        try:
            params, out_shape = init(key, in_shape)
        except LayerError as err:
            raise err.named(name) from None
        return params, {}, out_shape

    def layer_apply(params, state, x, *, key=None, train=False):
        try:
            return apply(params, x, key, train) if keyed else apply(params, x)
        except LayerError as err:
            raise err.named(name) from None

    def layer_vjp(params, state, x, *, key=None, **hints):
        try:
            y, pullback = vjp(params, x, key, **hints) if keyed else vjp(params, x, **hints)
        except LayerError as err:
            raise err.named(name) from None
        return y, state, pullback

    def bind(**hints):
        """``layer_vjp`` with ``hints`` fixed (``fusion.Speed.bind``): no partial's keywords."""
        def layer_vjp_bound(params, state, x, *, key=None):
            try:
                y, pullback = vjp(params, x, key, **hints) if keyed else vjp(params, x, **hints)
            except LayerError as err:
                raise err.named(name) from None
            return y, state, pullback
        return layer_vjp_bound

    return Layer(layer_init, layer_apply, layer_vjp, name, (), speed._replace(bind=bind))


def elementwise_layer(
    name: str,
    forward: Callable[..., np.ndarray],
    backward: Callable[..., np.ndarray],
    saves: str = "xy",
    *,
    in_place: Iterable[str] = (),
    fresh: Iterable[str] = (),
    kind: str = "",
) -> Layer:
    """Build a parameter-free, shape-preserving layer from two functions.

    - ``forward(x) -> y`` with ``y.shape == x.shape`` and ``y.dtype == x.dtype``
    - ``backward(x, y, dy) -> dx`` with ``dx.shape == x.shape``; it must not
      write into ``x``, ``y`` or ``dy``.

    ``saves`` names the residuals the backward pass needs: ``"x"``, ``"y"`` or
    ``"xy"``; the other one is passed as ``None`` and is not kept alive (relu,
    tanh and sigmoid need only ``y``).

    ``in_place`` names the functions that take ``out=`` (``"forward"``,
    ``"backward"``): inside :func:`fundl.serial` a donated input is then
    overwritten with the output (``forward(x, out=x)``; not when ``saves`` keeps
    ``x``) and a donated ``dy`` with the input gradient
    (``backward(x, y, dy, out=dy)``).  ``fresh`` and
    ``kind`` as in :func:`stateless_layer` (``"dparams"`` is always fresh: there
    are no params).
    """
    if saves not in ("x", "y", "xy"):
        raise ValueError(f"saves must be 'x', 'y' or 'xy', got {saves!r}")
    in_place = set(in_place)
    if not in_place <= {"forward", "backward"}:
        raise ValueError(f"in_place may name only 'forward' and 'backward', got {sorted(in_place)}")
    keep_x, keep_y = "x" in saves, "y" in saves
    forward_in_place = "forward" in in_place and not keep_x
    backward_in_place = "backward" in in_place

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

    takes = ("x_donated",) * forward_in_place + ("dy_donated",) * backward_in_place
    return stateless_layer(name, init, apply, vjp, takes=takes,
                           fresh=tuple(fresh) + ("dparams",), kind=kind)
