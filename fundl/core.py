"""The Layer contract, and the one way to build a layer.

A layer is an immutable record of three pure functions::

    params, state, out_shape = layer.init(key, in_shape)
    y                        = layer.apply(params, state, x, *, key=None, train=False)
    y, new_state, pullback   = layer.vjp(params, state, x, *, key=None, train=True)
    dparams, dx              = pullback(dy)

``in_shape``/``out_shape`` are per-example shapes (no batch axis); data carries
the batch on axis 0.  ``apply`` is inference and keeps nothing.  ``vjp`` is the
forward that returns the pullback, a closure over what the backward pass needs:
with ``train=True`` the training forward (dropout on, batch norm on the batch's
statistics, the new state returned); with ``train=False`` exactly ``apply``'s
function, the state returned unchanged, and its exact pullback (input gradients
of a deployed model).

A layer also says what it is: its ``kind`` (the builder, ``"dense"``), its
``config`` (the builder's arguments) and its ``children`` (``(key, layer)``
pairs, keyed as in its params), so ``repr(model)`` reads like the code that built
it and tools (summary, interop, export, the planner) read the record.

The functions a layer is built from (``init_fn``, ``apply_fn``, ``vjp_fn``) run
plainly.  ``layer.init``/``apply``/``vjp`` are the checked entries: they go
through :mod:`fundl.plan`, which checks params and state against what ``init``
made, runs the model as planned once per input signature, and names the failing
layer's path in any error.
"""

from __future__ import annotations

import functools
import inspect
from types import MappingProxyType
from typing import (Any, Callable, Dict, FrozenSet, Iterable, Mapping, NamedTuple, Optional,
                    Protocol, Sequence, Tuple)

import numpy as np

from .checks import LayerError, as_shape, check_float_input

Params = Any  # a pytree of nested dicts/lists/tuples with arrays at the leaves
State = Any
Key = Any
Children = Tuple[Tuple[str, "Layer"], ...]

__all__ = ["Layer", "Traits", "Params", "State", "Key", "InitFn", "ApplyFn", "VjpFn",
           "Pullback", "LayerError", "stateless_layer", "elementwise_layer", "builder", "BUILDERS",
           "HINTS", "FRESH"]

#: The ``vjp`` hints a layer may take (see :class:`Traits`).
HINTS = ("need_dx", "x_donated", "dy_donated")
#: The results a layer may declare fresh (see :class:`Traits`).
FRESH = ("y", "dx", "dparams")


class Pullback(Protocol):
    """``pullback(dy) -> (dparams, dx)``: the vector-Jacobian product at the forward's point."""

    def __call__(self, dy: Any) -> Tuple[Params, Any]: ...


class InitFn(Protocol):
    """``init(key, in_shape) -> (params, state, out_shape)``."""

    def __call__(self, key: Key, in_shape: Any) -> Tuple[Params, State, Any]: ...


class ApplyFn(Protocol):
    """``apply(params, state, x, *, key=None, train=False) -> y``."""

    def __call__(self, params: Params, state: State, x: Any, *, key: Key = None,
                 train: bool = False) -> Any: ...


class VjpFn(Protocol):
    """``vjp(params, state, x, *, key=None, train=True) -> (y, new_state, pullback)``."""

    def __call__(self, params: Params, state: State, x: Any, *, key: Key = None,
                 train: bool = True) -> Tuple[Any, State, Pullback]: ...


class Traits(NamedTuple):
    """What a layer states about itself for the planner (:mod:`fundl.plan`).

    Nothing here changes what a layer computes; a layer that states nothing is run
    plainly.  :func:`fundl.testing.check_layer` verifies every claim.

    - ``uses_key``: whether the layer ever reads its key (no key is split for a
      model whose layers all say no).
    - ``takes``: the optional ``vjp_fn`` keywords it accepts (:data:`HINTS`):
      ``need_dx=False`` (the caller needs no input gradient; the pullback may
      return ``None``), ``x_donated=True`` (it may overwrite its input ``x``),
      ``dy_donated=True`` (its pullback may overwrite the ``dy`` it receives).
    - ``fresh``: results that are arrays nobody else holds (:data:`FRESH`): ``"y"``,
      ``"dx"``, ``"dparams"``.  The planner donates a fresh ``y`` to the next layer
      of a ``serial`` and a fresh ``dx`` to the previous one's pullback.  For a
      combinator (``compose`` given), ``"dparams"`` means "if every child's are".
    - ``bind``: ``bind(**hints) -> vjp_fn`` with those hints fixed (leaves).
    - ``compose``: ``compose(children) -> (init_fn, apply_fn, vjp_fn)`` for a
      combinator: its functions over the given children, so that the planner can
      rebuild it over planned children.  A child keyed ``""`` shares its parent's
      params and path (a transparent wrapper such as ``shared``).
    - ``ties``: the shared layer (built by :func:`fundl.shared`) whose params this
      layer uses instead of its own (a tied output head).
    """

    uses_key: bool = True
    takes: FrozenSet[str] = frozenset()
    fresh: FrozenSet[str] = frozenset()
    bind: Optional[Callable[..., VjpFn]] = None
    compose: Optional[Callable[[Children], Tuple[InitFn, ApplyFn, VjpFn]]] = None
    ties: Optional["Layer"] = None


def _checked_names(who: str, what: str, names: Iterable[str], allowed: Sequence[str]
                   ) -> FrozenSet[str]:
    names = frozenset(names)
    if not names <= set(allowed):
        raise ValueError(f"{who}: {what} may name only {tuple(allowed)}, got {tuple(sorted(names))}")
    return names


class Layer:
    """A layer: its functions, what it is (``kind``, ``config``, ``children``), its ``traits``.

    ``Layer(init, apply, vjp, name, children)`` wraps three functions of the
    contract's shapes (see the module docstring); ``name`` is the base of the key
    a combinator files it under (``dense`` -> ``params["dense_0"]``).  Builders
    made with :func:`builder` record ``kind`` and ``config``; ``kind`` defaults to
    ``name``.  Immutable: :meth:`replace` returns a changed copy.
    """

    __slots__ = ("init_fn", "apply_fn", "vjp_fn", "name", "children", "kind", "config",
                 "traits", "_plan")

    init_fn: InitFn
    apply_fn: ApplyFn
    vjp_fn: VjpFn
    name: str
    children: Children
    kind: str
    config: Mapping[str, Any]
    traits: Traits
    _plan: Any   # the layer's plan (fundl.plan.of), made at its first checked use

    def __init__(self, init: InitFn, apply: ApplyFn, vjp: VjpFn, name: str = "layer",
                 children: Iterable[Tuple[str, "Layer"]] = (), *, kind: str = "",
                 config: Optional[Mapping[str, Any]] = None, traits: Traits = Traits()) -> None:
        children = tuple((str(k), c) for k, c in children)
        for k, c in children:
            if not isinstance(c, Layer):
                raise TypeError(f"{name}: child {k!r} is a {type(c).__name__}, not a fundl Layer")
        fields = {"init_fn": init, "apply_fn": apply, "vjp_fn": vjp, "name": str(name),
                  "children": children, "kind": kind or str(name),
                  "config": MappingProxyType(dict(config or {})), "traits": traits,
                  "_plan": None}
        for field, value in fields.items():
            object.__setattr__(self, field, value)

    def __setattr__(self, field: str, value: Any) -> None:
        raise AttributeError(f"a Layer is immutable; use layer.replace({field}=...)")

    def replace(self, **changes: Any) -> "Layer":
        """A copy with some fields changed (``init_fn``, ``apply_fn``, ``vjp_fn``,
        ``name``, ``children``, ``kind``, ``config``, ``traits``)."""
        fields = {f: getattr(self, f) for f in ("init_fn", "apply_fn", "vjp_fn", "name",
                                                "children", "kind", "config", "traits")}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"Layer.replace: unknown fields {sorted(unknown)}")
        fields.update(changes)
        return Layer(fields.pop("init_fn"), fields.pop("apply_fn"), fields.pop("vjp_fn"),
                     **fields)

    # --- the checked entries (fundl.plan) -----------------------------------------------

    def init(self, key: Key, in_shape: Any) -> Tuple[Params, State, Any]:
        """``(params, state, out_shape)`` for per-example ``in_shape``, from ``key``."""
        return plan.of(self).init(key, in_shape)

    def apply(self, params: Params, state: State, x: Any, *, key: Key = None,
              train: bool = False) -> Any:
        """The forward ``y`` for a batch ``x``; ``train=True`` runs the training forward
        (e.g. dropout with ``key``) without keeping anything or changing ``state``."""
        return plan.of(self).apply(params, state, x, key=key, train=train)

    def vjp(self, params: Params, state: State, x: Any, *, key: Key = None, train: bool = True,
            need_dx: bool = True) -> Tuple[Any, State, Pullback]:
        """``(y, new_state, pullback)``: the training forward (``train=False``: ``apply``'s
        forward, ``state`` unchanged) and its exact vector-Jacobian product.
        ``need_dx=False``: the caller needs no input gradient (the pullback may give None)."""
        return plan.of(self).vjp(params, state, x, key=key, train=train, need_dx=need_dx)

    def __repr__(self) -> str:
        return format_call(self)


# --- building layers -----------------------------------------------------------------------

def stateless_layer(
    name: str,
    init: Callable[[Key, Any], Tuple[Params, Any]],
    apply: Callable[..., Any],
    vjp: Callable[..., Tuple[Any, Pullback]],
    *,
    uses_key: bool = False,
    takes: Iterable[str] = (),
    fresh: Iterable[str] = (),
) -> Layer:
    """A Layer with no state, from three plain functions:

    - ``init(key, in_shape) -> (params, out_shape)``
    - ``apply(params, x) -> y``
    - ``vjp(params, x) -> (y, pullback)``, with ``pullback(dy) -> (dparams, dx)``

    A layer whose forward is random (``uses_key=True``, dropout) gets the key and
    the mode as keywords: ``apply(params, x, *, key, train)`` and ``vjp(params, x,
    *, key, train)``; ``vjp(..., train=False)`` must be ``apply``'s forward.
    ``takes`` names the hints ``vjp`` accepts as keywords and ``fresh`` the results
    it never keeps (:class:`Traits`).
    """
    takes = _checked_names(name, "takes", takes, HINTS)
    fresh = _checked_names(name, "fresh", fresh, FRESH)

    def layer_init(key, in_shape):
        params, out_shape = init(key, in_shape)
        return params, {}, out_shape

    if uses_key:
        def layer_apply(params, state, x, *, key=None, train=False):
            return apply(params, x, key=key, train=train)

        def bind(**hints: bool) -> VjpFn:
            def layer_vjp(params: Params, state: State, x: Any, *, key: Key = None,
                          train: bool = True) -> Tuple[Any, State, Any]:
                y, pullback = vjp(params, x, key=key, train=train, **hints)
                return y, state, pullback
            return layer_vjp
    else:
        def layer_apply(params, state, x, *, key=None, train=False):
            return apply(params, x)

        def bind(**hints: bool) -> VjpFn:
            if not hints:
                def layer_vjp(params, state, x, *, key=None, train=True):
                    y, pullback = vjp(params, x)
                    return y, state, pullback
            else:
                def layer_vjp(params, state, x, *, key=None, train=True):
                    y, pullback = vjp(params, x, **hints)
                    return y, state, pullback
            return layer_vjp

    traits = Traits(uses_key=bool(uses_key), takes=takes, fresh=fresh, bind=bind)
    return Layer(layer_init, layer_apply, bind(), name, traits=traits)

def elementwise_layer(
    name: str,
    forward: Callable[..., np.ndarray],
    backward: Callable[..., np.ndarray],
    saves: str = "xy",
    *,
    in_place: Iterable[str] = (),
    fresh: Iterable[str] = (),
) -> Layer:
    """A parameter-free, shape-preserving layer from two functions.

    - ``forward(x) -> y`` with ``y.shape == x.shape`` and ``y.dtype == x.dtype``
    - ``backward(x, y, dy) -> dx`` with ``dx.shape == x.shape``; it must not
      write into ``x``, ``y`` or ``dy``.

    ``saves`` names the residuals the backward pass needs: ``"x"``, ``"y"`` or
    ``"xy"``; the other one is passed as ``None`` and is not kept alive (relu,
    tanh and sigmoid need only ``y``).  ``in_place`` names the functions that take
    ``out=`` (``"forward"``, ``"backward"``): a donated input is then overwritten
    with the output (``forward(x, out=x)``; not when ``saves`` keeps ``x``) and a
    donated ``dy`` with the input gradient (``backward(x, y, dy, out=dy)``).
    ``fresh`` as in :func:`~fundl.stateless_layer` (``"dparams"`` always is).
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
    return stateless_layer(name, init, apply, vjp, takes=takes, fresh=tuple(fresh) + ("dparams",))


#: Every builder registered with :func:`builder`, by kind.
BUILDERS: Dict[str, Callable[..., Layer]] = {}


def builder(fn: Optional[Callable[..., Layer]] = None, *, children: Sequence[str] = ()) -> Any:
    """Register ``fn`` as a layer builder: the Layer it returns records ``kind=fn.__name__``
    and ``config``, the call's arguments with defaults filled in (those named in
    ``children``, which hold child layers, excluded).  Used as ``@builder`` or
    ``@builder(children=("layers",))``."""
    def register(fn: Callable[..., Layer]) -> Callable[..., Layer]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def build(*args: Any, **kwargs: Any) -> Layer:
            layer = fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            config = {k: v for k, v in bound.arguments.items() if k not in children}
            return layer.replace(kind=fn.__name__, config=config)

        BUILDERS[fn.__name__] = build
        return build

    return register(fn) if fn is not None else register


# --- repr: a layer as the code that built it -------------------------------------------------

def _format_value(v: Any) -> str:
    if isinstance(v, Layer):
        return repr(v)
    if isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic)):
        return f"np.{np.dtype(v).name}"
    if callable(v):
        return getattr(v, "__name__", type(v).__name__)
    if isinstance(v, np.ndarray):
        return f"{v.dtype.name}{list(v.shape)}"
    return repr(v)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - arrays and other values without a plain ==
        return False


def format_call(layer: Layer) -> str:
    """``kind(child, ..., required, ..., option=value)``: the arguments that differ from the
    builder's defaults, children first (``serial(dense(16), relu(), dense(10))``)."""
    parts = [repr(c) for _, c in layer.children]
    build = BUILDERS.get(layer.kind)
    params = inspect.signature(build).parameters if build is not None else {}
    for name, value in layer.config.items():
        p = params.get(name)
        if p is None or p.kind is inspect.Parameter.VAR_POSITIONAL:
            parts.append(f"{name}={_format_value(value)}")
        elif p.default is inspect.Parameter.empty:
            parts.append(_format_value(value))
        elif not _same(value, p.default):
            parts.append(f"{name}={_format_value(value)}")
    return f"{layer.kind}({', '.join(parts)})"


from . import plan  # noqa: E402  (plan reads the Layer record defined above)
