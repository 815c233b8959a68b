"""Combinators: layers built from layers.  A model is just a Layer.

Children's params and state live in dicts keyed by readable names
(``dense_0``, ``relu_1``): ``params["dense_0"]["w"]`` means something.  A
child's :class:`~fundl.core.LayerError` is re-raised with the child's key
prepended, so errors name the layer's path in the model.

Multi-input layers take a tuple of arrays (and, in ``init``, a tuple of
per-example shapes); multi-output layers return a tuple.  A typical branch::

    block = serial(fan_out(2), parallel(dense(64), serial(dense(64), tanh())), fan_in_sum())

Combinators never write into a child's output or a received cotangent: every
sum or concatenation is a new array.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from . import fusion, random
from .validate import ModelGuard
from .checks import LayerError, Shape, as_shape, check_float_input, is_shape
from .core import Layer, stateless_layer

__all__ = ["serial", "parallel", "residual", "fan_out", "fan_in_sum", "fan_in_concat",
           "identity", "child_keys", "split_key", "init_child", "apply_child", "vjp_child"]


# --- running children ------------------------------------------------------------------

def split_key(key: Any, n: int, uses_key: bool = True) -> Tuple[Any, ...]:
    """``n`` independent child keys, or ``n`` Nones when ``key`` is None (inference)
    or no child uses its key (nothing to split)."""
    return (None,) * n if key is None or not uses_key else random.split(key, n)


def init_child(child_key: str, layer: Layer, key: Any, in_shape: Any) -> Tuple[Any, Any, Any]:
    """``layer.init``; a :class:`LayerError` gets ``child_key`` prepended to its path."""
    try:
        return layer.init(key, in_shape)
    except LayerError as err:
        raise err.within(child_key) from None


def apply_child(child_key: str, layer: Layer, params: Any, state: Any, x: Any,
                key: Any = None, train: bool = False) -> Any:
    """``layer.apply``; a :class:`LayerError` gets ``child_key`` prepended to its path."""
    try:
        return layer.apply(params, state, x, key=key, train=train)
    except LayerError as err:
        raise err.within(child_key) from None


def vjp_child(child_key: str, run: fusion.VjpRunner, params: Any, state: Any, x: Any,
              key: Any = None, need_dx: bool = True, x_donated: bool = False,
              dy_donated: bool = False) -> Tuple[Any, Any, Any]:
    """A child's vjp through its :func:`fundl.fusion.runner` ``run``; a
    :class:`LayerError` gets ``child_key`` prepended to its path."""
    try:
        return run(params, state, x, key, need_dx, x_donated, dy_donated)
    except LayerError as err:
        raise err.within(child_key) from None


def child_keys(layers: Sequence[Layer]) -> List[str]:
    """Readable, unique dict keys for children: ``f"{layer.name}_{index}"``."""
    return [f"{layer.name}_{i}" for i, layer in enumerate(layers)]


def _check_layers(who: str, layers: Sequence[Any]) -> None:
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{who}: argument {i} is a {type(layer).__name__}, not a fundl Layer "
                            "(did you forget to call it, e.g. relu() rather than relu?)")


def _shape_list(in_shape: Any, n: Any = None) -> Tuple[Shape, ...]:
    """``in_shape`` as a tuple of per-example shapes (a multi-input layer's init)."""
    if is_shape(in_shape) or not isinstance(in_shape, (tuple, list)):
        raise LayerError(f"expected a tuple of input shapes, got the single shape {in_shape!r}")
    if n is not None and len(in_shape) != n:
        raise LayerError(f"expected a tuple of {n} input shapes, got {len(in_shape)}: "
                         f"{tuple(in_shape)!r}")
    if not all(is_shape(s) for s in in_shape):
        raise LayerError(f"expected a tuple of input shapes, got {in_shape!r}")
    return tuple(as_shape(s) for s in in_shape)


def _inputs(x: Any, n: Any = None) -> Tuple[Any, ...]:
    """``x`` as a tuple of inputs (a multi-input layer's data)."""
    if not isinstance(x, (tuple, list)):
        got = f"an array of shape {tuple(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
        raise LayerError(f"expected a tuple of {n if n is not None else 'several'} inputs, got {got}")
    if n is not None and len(x) != n:
        raise LayerError(f"expected a tuple of {n} inputs, got {len(x)}")
    return tuple(x)


def _data_shapes(xs: Sequence[Any]) -> str:
    return ", ".join(str(tuple(np.shape(a))) for a in xs)


def _add(a: Any, b: Any) -> Any:
    """``a + b`` as a new array (tuples elementwise); ``None`` counts as zero."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, (tuple, list)):
        return tuple(_add(p, q) for p, q in zip(a, b))
    return np.add(a, b)


def _sum(items: Sequence[Any]) -> Any:
    """The sum of ``items`` in one fresh array (``None`` entries skipped; all None -> None)."""
    items = [t for t in items if t is not None]
    if not items:
        return None
    if len(items) == 1:
        return items[0]
    if not isinstance(items[0], np.ndarray):
        total = items[0]
        for t in items[1:]:
            total = _add(total, t)
        return total
    total = np.add(items[0], items[1])  # fresh: safe to accumulate into
    for t in items[2:]:
        total += t
    return total


# --- serial ------------------------------------------------------------------------

def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Run ``layers`` one after another; the output of each is the next one's input.

    Shapes are threaded through ``init``; the pullback runs the children's
    pullbacks in reverse.  Params and state are dicts keyed ``{name}_{index}``
    (``params["dense_0"]["w"]``).  ``x`` and ``y`` are whatever the first layer
    takes and the last one returns.  What the children declare in
    :mod:`fundl.fusion` is planned once, here (:func:`fundl.fusion.serial_plan`):
    fresh intermediate arrays are donated to their consumer, and a ReLU directly
    followed by a max pool runs after the pool, with the same results.
    """
    if not layers:
        raise ValueError("serial needs at least one layer")
    _check_layers("serial", layers)
    names = child_keys(layers)
    plan = fusion.serial_plan(layers)
    runs = [(j, names[j], layers[j], fusion.runner(layers[j])) for j in plan.order]
    last = len(layers) - 1

    def init(key, in_shape):
        params, state, shape = {}, {}, in_shape
        for k, layer, sub in zip(names, layers, random.split(key, len(layers))):
            params[k], state[k], shape = init_child(k, layer, sub, shape)
        guard.record(in_shape, params, state)
        return params, state, shape

    guard = ModelGuard(init)

    def apply(params, state, x, *, key=None, train=False):
        guard.check(params, state, x)
        keys = split_key(key, len(layers), plan.speed.uses_key)
        for p, (j, k, layer, _) in enumerate(runs):
            if plan.moved_relu[p] is not None:
                _check_moved_relu(plan.moved_relu[p], names, layers, x)
            x = apply_child(k, layer, params[k], state[k], x, keys[j], train)
        return x

    bound: Dict[Tuple[bool, bool, bool], List[Any]] = {}

    def bound_runs(hints: Tuple[bool, bool, bool]) -> List[Any]:
        """Per run position: (index, key, moved ReLU, the child's vjp with its hints bound)
        for this call's ``(need_dx, x_donated, dy_donated)``; built once per signature."""
        need_dx, x_donated, dy_donated = hints
        return [(j, k, plan.moved_relu[p], fusion.bound_runner(
                    layer, need_dx or p > 0, plan.x_donated[p] or (p == 0 and x_donated),
                    plan.dy_donated[p] or (p == last and dy_donated)))
                for p, (j, k, layer, _) in enumerate(runs)]

    in_order = list(plan.order) == list(range(len(layers)))  # no ReLU moved after a pool
    no_keys, uses_key = (None,) * len(layers), plan.speed.uses_key

    def vjp(params, state, x, *, key=None, need_dx=True, x_donated=False, dy_donated=False):
        guard.check(params, state, x)
        keys = no_keys if key is None or not uses_key else random.split(key, len(layers))
        signature = (need_dx, x_donated, dy_donated)
        calls = bound.get(signature)
        if calls is None:
            calls = bound[signature] = bound_runs(tuple(bool(h) for h in signature))
        new_state, pullbacks = {}, []
        for j, k, moved, call in calls:
            if moved is not None:
                _check_moved_relu(moved, names, layers, x)
            try:
                x, new_state[k], pb = call(params[k], state[k], x, key=keys[j])
            except LayerError as err:
                raise err.within(k) from None
            pullbacks.append((k, pb))
        pullbacks.reverse()

        def pullback(dy):
            grads = dict.fromkeys(names)  # the children's order, filled in reverse
            for k, pb in pullbacks:
                grads[k], dy = pb(dy)
            return grads, dy

        # Run in order, new_state has the children's order already (the rebuild was 0.5 us
        # of a tiny MLP's step; the pullback's dict.fromkeys saves another).
        return x, new_state if in_order else {k: new_state[k] for k in names}, pullback

    return Layer(init, apply, vjp, name, tuple(zip(names, layers)), plan.speed)


def _check_moved_relu(j: int, names: List[str], layers: Sequence[Layer], x: Any) -> None:
    """The input check of ReLU ``j``, which runs after its pool: before the pool, so that
    an error names the ReLU."""
    try:
        check_float_input(x)
    except LayerError as err:
        raise err.named(layers[j].name).within(names[j]) from None


# --- parallel ----------------------------------------------------------------------

def parallel(*layers: Layer, name: str = "parallel") -> Layer:
    """Apply ``layers[i]`` to input ``i``: a tuple of n inputs gives a tuple of n outputs.

    Shapes: ``init(key, (shape_0, ..., shape_{n-1}))`` returns the tuple of the
    children's output shapes; ``x`` is a tuple ``(x_0, ..., x_{n-1})`` and ``y``
    is ``(layers[0](x_0), ..., layers[n-1](x_{n-1}))``.  Params and state are
    dicts keyed ``{child name}_{index}`` as in :func:`serial`.  Each child gets
    its own key.  The pullback takes a tuple of n cotangents and returns the
    tuple of the children's input gradients (``None`` when ``need_dx=False``).
    """
    if not layers:
        raise ValueError("parallel needs at least one layer")
    _check_layers("parallel", layers)
    names = child_keys(layers)
    pairs = list(zip(names, layers))
    n = len(layers)
    uses_key = any(fusion.speed_of(layer).uses_key for layer in layers)
    runs = [fusion.runner(layer) for layer in layers]

    def init(key, in_shape):
        try:
            shapes = _shape_list(in_shape, n)
        except LayerError as err:
            raise err.named(name) from None
        params: Dict[str, Any] = {}
        state: Dict[str, Any] = {}
        out_shapes = []
        for (k, layer), sub, shape in zip(pairs, random.split(key, n), shapes):
            params[k], state[k], out = init_child(k, layer, sub, shape)
            out_shapes.append(out)
        guard.record(in_shape, params, state)
        return params, state, tuple(out_shapes)

    guard = ModelGuard(init)

    def split_inputs(x):
        try:
            return _inputs(x, n)
        except LayerError as err:
            raise err.named(name) from None

    def apply(params, state, x, *, key=None, train=False):
        guard.check(params, state, x)
        xs = split_inputs(x)
        ys = []
        for (k, layer), sub, xi in zip(pairs, split_key(key, n, uses_key), xs):
            ys.append(apply_child(k, layer, params[k], state[k], xi, sub, train))
        return tuple(ys)

    def vjp(params, state, x, *, key=None, need_dx=True):
        guard.check(params, state, x)
        xs = split_inputs(x)
        ys, pullbacks = [], []
        new_state: Dict[str, Any] = {}
        for k, run, sub, xi in zip(names, runs, split_key(key, n, uses_key), xs):
            yi, new_state[k], pb = vjp_child(k, run, params[k], state[k], xi, sub, need_dx)
            ys.append(yi)
            pullbacks.append(pb)

        def pullback(dy):
            dys = _inputs(dy, n)
            grads: Dict[str, Any] = {}
            dxs = []
            for k, pb, dyi in zip(names, pullbacks, dys):
                grads[k], dxi = pb(dyi)
                dxs.append(dxi)
            return grads, (tuple(dxs) if need_dx else None)

        return tuple(ys), new_state, pullback

    return Layer(init, apply, vjp, name, tuple(pairs),
                 fusion.Speed(uses_key=uses_key, takes=frozenset({"need_dx"})))


# --- fan out / fan in --------------------------------------------------------------

def fan_out(n: int, *, name: str = "fan_out") -> Layer:
    """One input to a tuple of ``n`` references to it (no copies; nobody writes into them).

    Shapes: ``in_shape -> (in_shape,) * n``; ``x -> (x,) * n``.  No params.
    The pullback sums the n cotangents into a new array.
    """
    if int(n) < 1:
        raise ValueError(f"fan_out needs n >= 1, got {n}")
    n = int(n)

    def init(key, in_shape):
        return {}, (in_shape,) * n

    def apply(params, x):
        return (x,) * n

    def vjp(params, x, need_dx=True):
        def pullback(dy):
            if not need_dx:
                return {}, None
            return {}, _sum(_inputs(dy, n))

        return (x,) * n, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",))


def fan_in_sum(*, name: str = "fan_in_sum") -> Layer:
    """A tuple of same-shape float inputs to their sum (a new array).

    Shapes: ``(s, s, ..., s) -> s``; ``(x_0, ..., x_{n-1}) -> x_0 + ... + x_{n-1}``.
    Shapes and dtypes must match exactly (no broadcasting).  No params.  The
    pullback hands ``dy`` to every input.
    """

    def init(key, in_shape):
        shapes = _shape_list(in_shape)
        if not shapes:
            raise LayerError("expected at least one input shape, got ()")
        if any(s != shapes[0] for s in shapes):
            raise LayerError("expected inputs of one shape to sum, got shapes "
                             + ", ".join(str(s) for s in shapes))
        return {}, shapes[0]

    def check(x):
        xs = _inputs(x)
        if not xs:
            raise LayerError("expected at least one input, got ()")
        for i, xi in enumerate(xs):
            check_float_input(xi, f"input {i}")
        if any(xi.shape != xs[0].shape for xi in xs):
            raise LayerError(f"expected inputs of one shape to sum, got shapes {_data_shapes(xs)}")
        if any(xi.dtype != xs[0].dtype for xi in xs):
            raise LayerError("expected inputs of one dtype to sum, got dtypes "
                             + ", ".join(str(xi.dtype) for xi in xs))
        return xs

    def forward(xs):
        if len(xs) == 1:
            return xs[0].copy()
        return _sum(xs)

    def apply(params, x):
        return forward(check(x))

    def vjp(params, x, need_dx=True):
        xs = check(x)
        k = len(xs)

        def pullback(dy):
            return {}, ((dy,) * k if need_dx else None)

        return forward(xs), pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",))


def fan_in_concat(axis: int = -1, *, name: str = "fan_in_concat") -> Layer:
    """A tuple of inputs to their concatenation along a per-example ``axis``.

    ``axis`` never counts the batch axis: a negative axis counts from the end
    (the same for shapes and data, e.g. ``-1`` = features/channels); a
    non-negative axis counts over the per-example shape (``axis=0`` is the
    first per-example axis, i.e. data axis 1), as in stax's ``FanInConcat``.
    Shapes: ``((..., a, ...), (..., b, ...)) -> (..., a + b, ...)``; all other
    dims, the ranks and the dtypes must match.  No params.  The pullback splits
    ``dy`` back into pieces (views of ``dy``); integer inputs get ``None``.
    """
    axis = int(axis)

    def per_example_axis(rank):
        ax = axis if axis >= 0 else rank + axis
        if not 0 <= ax < rank:
            raise LayerError(f"concat axis {axis} is out of range for per-example rank {rank}")
        return ax

    def init(key, in_shape):
        shapes = _shape_list(in_shape)
        if not shapes:
            raise LayerError("expected at least one input shape, got ()")
        rank = len(shapes[0])
        ax = per_example_axis(rank)
        rest = [s[:ax] + s[ax + 1:] for s in shapes]
        if any(len(s) != rank for s in shapes) or any(r != rest[0] for r in rest):
            raise LayerError(f"expected inputs that match except on concat axis {axis}, got shapes "
                             + ", ".join(str(s) for s in shapes))
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return {}, tuple(out)

    def check(x):
        xs = _inputs(x)
        if not xs:
            raise LayerError("expected at least one input, got ()")
        for i, xi in enumerate(xs):
            if not isinstance(xi, np.ndarray):
                raise LayerError(f"expected input {i} to be a numpy array, got {type(xi).__name__}")
        rank = xs[0].ndim
        if rank < 1:
            raise LayerError(f"expected inputs with a batch axis, got shapes {_data_shapes(xs)}")
        d = per_example_axis(rank - 1) + 1  # the data axis
        ref = xs[0].shape[:d] + xs[0].shape[d + 1:]
        if any(xi.ndim != rank or xi.shape[:d] + xi.shape[d + 1:] != ref for xi in xs):
            raise LayerError(f"expected inputs that match except on concat axis {axis}, "
                             f"got shapes {_data_shapes(xs)}")
        if any(xi.dtype != xs[0].dtype for xi in xs):
            raise LayerError("expected inputs of one dtype to concatenate, got dtypes "
                             + ", ".join(str(xi.dtype) for xi in xs))
        return xs, d

    def apply(params, x):
        xs, d = check(x)
        return np.concatenate(xs, axis=d)

    def vjp(params, x, need_dx=True):
        xs, d = check(x)
        float_in = xs[0].dtype.kind == "f"
        cuts = np.cumsum([xi.shape[d] for xi in xs[:-1]]).tolist()

        def pullback(dy):
            if not (need_dx and float_in):
                return {}, None
            return {}, tuple(np.split(dy, cuts, axis=d))

        return np.concatenate(xs, axis=d), pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",))


# --- residual ----------------------------------------------------------------------

def residual(layer: Layer, *, name: str = "residual") -> Layer:
    """``x + layer(x)``: a skip connection around ``layer``.

    Shapes: ``layer`` must map the per-example shape ``s`` to ``s`` (a
    :class:`LayerError` at init names both shapes otherwise); ``x`` and ``y``
    are ``(batch, *s)`` of one float dtype.  Params and state are
    ``{"<layer.name>_0": <layer's params/state>}`` (e.g. ``params["serial_0"]``).
    The sum and the pullback's ``dx = dy + dx_branch`` are new arrays.
    """
    _check_layers("residual", [layer])
    (k,) = child_keys([layer])
    uses_key, run = fusion.speed_of(layer).uses_key, fusion.runner(layer)

    def init(key, in_shape):
        params, state, out_shape = init_child(k, layer, random.split(key, 1)[0], in_shape)
        if not (is_shape(in_shape) and is_shape(out_shape)
                and as_shape(in_shape) == as_shape(out_shape)):
            raise LayerError(f"the branch '{k}' maps shape {in_shape} to {out_shape}; "
                             "x + branch(x) needs them equal", name)
        guard.record(in_shape, {k: params}, {k: state})
        return {k: params}, {k: state}, out_shape

    guard = ModelGuard(init)

    def add(x, b):
        check_float_input(x)
        if not isinstance(b, np.ndarray) or b.shape != x.shape or b.dtype != x.dtype:
            got = (f"shape {tuple(b.shape)}, dtype {b.dtype}" if isinstance(b, np.ndarray)
                   else type(b).__name__)
            raise LayerError(f"the branch '{k}' maps input of shape {tuple(x.shape)}, dtype "
                             f"{x.dtype} to {got}; x + branch(x) needs them equal")
        return np.add(x, b)  # a new array: never write into the branch's output

    def apply(params, state, x, *, key=None, train=False):
        guard.check(params, state, x)
        b = apply_child(k, layer, params[k], state[k], x, split_key(key, 1, uses_key)[0], train)
        try:
            return add(x, b)
        except LayerError as err:
            raise err.named(name) from None

    def vjp(params, state, x, *, key=None, need_dx=True):
        guard.check(params, state, x)
        b, new_state, pb = vjp_child(k, run, params[k], state[k], x,
                                     split_key(key, 1, uses_key)[0], need_dx)
        try:
            y = add(x, b)
        except LayerError as err:
            raise err.named(name) from None

        def pullback(dy):
            grads, dx_branch = pb(dy)
            if not need_dx:
                return {k: grads}, None
            return {k: grads}, (np.add(dy, dx_branch) if dx_branch is not None else dy)

        return y, {k: new_state}, pullback

    return Layer(init, apply, vjp, name, ((k, layer),),
                 fusion.Speed(uses_key=uses_key, takes=frozenset({"need_dx"})))


def identity() -> Layer:
    """Returns its input unchanged (any input, including tuples); no params."""

    def init(key, in_shape):
        return {}, in_shape

    def apply(params, x):
        return x

    def vjp(params, x):
        return x, lambda dy: ({}, dy)

    return stateless_layer("identity", init, apply, vjp)
