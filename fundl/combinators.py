"""Combinators: layers built from layers.  A model is just a Layer.

Each combinator is its loop: ``init`` threads the shapes, ``apply``/``vjp`` run
the children, the pullback runs theirs in reverse.  Children's params and state
live in dicts keyed by readable names (``dense_0``, ``relu_1``), so
``params["dense_0"]["w"]`` means something.  Validation, speed decisions and
error locations are not here: :mod:`fundl.plan` makes them once per model and
input signature, and rebuilds a combinator over planned children through its
``compose`` (:class:`~fundl.core.Traits`).

Multi-input layers take a tuple of inputs (and, in ``init``, a tuple of
per-example shapes); multi-output layers return a tuple.  A typical branch::

    block = serial(fan_out(2), parallel(dense(64), serial(dense(64), tanh())), fan_in_sum())

Combinators never write into a child's output or a received cotangent: every
sum or concatenation is a new array.
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import numpy as np

from . import random
from .checks import LayerError, Shape, as_shape, check_float_input, is_shape, normalize_shapes
from .core import Children, Layer, Traits, builder, stateless_layer

__all__ = ["serial", "parallel", "residual", "fan_out", "fan_in_sum", "fan_in_concat", "take",
           "identity", "shared", "eval_mode", "combinator", "child_keys", "key_splitter"]


# --- what every combinator shares ----------------------------------------------------------

def child_keys(layers: Sequence[Layer]) -> List[str]:
    """Readable, unique dict keys for children: ``f"{layer.name}_{index}"``."""
    return [f"{layer.name}_{i}" for i, layer in enumerate(layers)]


def _named(who: str, layers: Sequence[Any]) -> Children:
    """``layers`` as ``(key, layer)`` pairs, or a TypeError for an argument that is no Layer."""
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{who}: argument {i} is a {type(layer).__name__}, not a fundl Layer "
                            "(did you forget to call it, e.g. relu() rather than relu?)")
    return tuple(zip(child_keys(layers), layers))


def combinator(compose: Callable[[Children], Any], children: Children, name: str,
               fresh: Sequence[str] = ("dparams",)) -> Layer:
    """The Layer of a combinator: its functions are ``compose(children)``; it uses a key
    when a child does; ``fresh`` as in :class:`~fundl.core.Traits`."""
    _named(name, [c for _, c in children])
    traits = Traits(uses_key=any(c.traits.uses_key for _, c in children),
                    fresh=frozenset(fresh), compose=compose)
    init, apply, vjp = compose(children)
    return Layer(init, apply, vjp, name, children, traits=traits)


def key_splitter(children: Children) -> Callable[[Any], Tuple[Any, ...]]:
    """``split(key)``: one key per child, or Nones when ``key`` is None (inference) or no
    child uses its key (nothing to split)."""
    n = len(children)
    nones = (None,) * n
    if not any(c.traits.uses_key for _, c in children):
        return lambda key: nones
    return lambda key: nones if key is None else random.split(key, n)


def _inputs(x: Any, n: int) -> Tuple[Any, ...]:
    """``x`` as a tuple of ``n`` inputs (a multi-input layer's data)."""
    if not isinstance(x, (tuple, list)):
        got = f"an array of shape {tuple(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
        raise LayerError(f"expected a tuple of {n} inputs, got {got}")
    if len(x) != n:
        raise LayerError(f"expected a tuple of {n} inputs, got {len(x)}")
    return tuple(x)


def _in_shapes(in_shape: Any, n: int) -> Tuple[Any, ...]:
    """``in_shape`` as a tuple of ``n`` input shapes (each may itself be a tuple of shapes)."""
    if is_shape(in_shape) or not isinstance(in_shape, (tuple, list)):
        raise LayerError(f"expected a tuple of {n} input shapes, got the single shape {in_shape!r}")
    if len(in_shape) != n:
        raise LayerError(f"expected a tuple of {n} input shapes, got {len(in_shape)}: "
                         f"{tuple(in_shape)!r}")
    return tuple(normalize_shapes(s) for s in in_shape)


def _sum(items: Sequence[Any]) -> Any:
    """The sum of ``items`` as one new array (tuples elementwise; ``None`` counts as zero)."""
    items = [t for t in items if t is not None]
    if not items:
        return None
    if len(items) == 1:
        return items[0]
    if isinstance(items[0], (tuple, list)):
        return tuple(_sum(parts) for parts in zip(*items))
    total = np.add(items[0], items[1])  # fresh: ours to accumulate into
    for t in items[2:]:
        total += t
    return total


# --- serial ------------------------------------------------------------------------------------

@builder(children=("layers",))
def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Run ``layers`` one after another; the output of each is the next one's input.

    Shapes are threaded through ``init``; the pullback runs the children's
    pullbacks in reverse.  Params and state are dicts keyed ``{name}_{index}``
    (``params["dense_0"]["w"]``).  ``x`` and ``y`` are whatever the first layer
    takes and the last one returns.
    """
    if not layers:
        raise ValueError("serial needs at least one layer")
    return combinator(_serial, _named("serial", layers), name)


def _serial(children: Children):
    keys = [k for k, _ in children]
    split = key_splitter(children)

    def init(key, in_shape):
        params, state, shape = {}, {}, in_shape
        for (k, child), sub in zip(children, random.split(key, len(children))):
            params[k], state[k], shape = child.init_fn(sub, shape)
        return params, state, shape

    def apply(params, state, x, *, key=None, train=False):
        for (k, child), sub in zip(children, split(key)):
            x = child.apply_fn(params[k], state[k], x, key=sub, train=train)
        return x

    vjps = [child.vjp_fn for _, child in children]
    backwards = keys[::-1]

    def vjp(params, state, x, *, key=None, train=True):
        new_state, pullbacks = dict.fromkeys(keys), []
        for k, child_vjp, sub in zip(keys, vjps, split(key)):
            x, new_state[k], child_pullback = child_vjp(params[k], state[k], x, key=sub,
                                                        train=train)
            pullbacks.append(child_pullback)
        pullbacks.reverse()

        def pullback(dy):
            grads = dict.fromkeys(keys)
            for k, child_pullback in zip(backwards, pullbacks):
                grads[k], dy = child_pullback(dy)
            return grads, dy

        return x, new_state, pullback

    return init, apply, vjp


# --- parallel ----------------------------------------------------------------------------------

@builder(children=("layers",))
def parallel(*layers: Layer, name: str = "parallel") -> Layer:
    """Apply ``layers[i]`` to input ``i``: a tuple of n inputs gives a tuple of n outputs.

    Shapes: ``init(key, (shape_0, ..., shape_{n-1}))`` returns the tuple of the
    children's output shapes; each ``shape_i`` may itself be a tuple (a child that
    takes ``(x, mask)``).  ``x`` is ``(x_0, ..., x_{n-1})`` and ``y`` is
    ``(layers[0](x_0), ..., layers[n-1](x_{n-1}))``.  Params and state are dicts
    keyed as in :func:`serial`; each child gets its own key.  The pullback takes a
    tuple of n cotangents and returns the tuple of the children's input gradients.
    """
    if not layers:
        raise ValueError("parallel needs at least one layer")
    return combinator(_parallel, _named("parallel", layers), name)


def _parallel(children: Children):
    n = len(children)
    split = key_splitter(children)

    def init(key, in_shape):
        params, state, out_shapes = {}, {}, []
        for (k, child), sub, shape in zip(children, random.split(key, n), _in_shapes(in_shape, n)):
            params[k], state[k], out = child.init_fn(sub, shape)
            out_shapes.append(out)
        return params, state, tuple(out_shapes)

    def apply(params, state, x, *, key=None, train=False):
        return tuple(child.apply_fn(params[k], state[k], xi, key=sub, train=train)
                     for (k, child), sub, xi in zip(children, split(key), _inputs(x, n)))

    def vjp(params, state, x, *, key=None, train=True):
        ys, new_state, pullbacks = [], {}, []
        for (k, child), sub, xi in zip(children, split(key), _inputs(x, n)):
            y, new_state[k], pullback = child.vjp_fn(params[k], state[k], xi, key=sub, train=train)
            ys.append(y)
            pullbacks.append(pullback)

        def pullback(dy):
            grads, dxs = {}, []
            for (k, _), child_pullback, dyi in zip(children, pullbacks, _inputs(dy, n)):
                grads[k], dx = child_pullback(dyi)
                dxs.append(dx)
            return grads, tuple(dxs)

        return tuple(ys), new_state, pullback

    return init, apply, vjp


# --- residual ----------------------------------------------------------------------------------

@builder(children=("layer",))
def residual(layer: Layer, *, name: str = "residual") -> Layer:
    """``x + layer(x)``: a skip connection around ``layer``.

    Shapes: ``layer`` must map the per-example shape ``s`` to ``s`` (a
    :class:`LayerError` at init names both shapes otherwise); ``x`` and ``y``
    are ``(batch, *s)`` of one float dtype.  Params and state are
    ``{"<layer.name>_0": <layer's params/state>}`` (e.g. ``params["serial_0"]``).
    The sum and the pullback's ``dx = dy + dx_branch`` are new arrays.
    """
    return combinator(_residual, _named("residual", [layer]), name,
                      fresh=("y", "dparams"))


def _residual(children: Children):
    ((k, branch),) = children
    split = key_splitter(children)

    def init(key, in_shape):
        params, state, out_shape = branch.init_fn(random.split(key, 1)[0], in_shape)
        if not (is_shape(in_shape) and is_shape(out_shape)
                and as_shape(in_shape) == as_shape(out_shape)):
            raise LayerError(f"the branch '{k}' maps shape {in_shape} to {out_shape}; "
                             "x + branch(x) needs them equal")
        return {k: params}, {k: state}, out_shape

    def add(x, b):
        check_float_input(x)
        if not isinstance(b, np.ndarray) or b.shape != x.shape or b.dtype != x.dtype:
            got = (f"shape {tuple(b.shape)}, dtype {b.dtype}" if isinstance(b, np.ndarray)
                   else type(b).__name__)
            raise LayerError(f"the branch '{k}' maps input of shape {tuple(x.shape)}, dtype "
                             f"{x.dtype} to {got}; x + branch(x) needs them equal")
        return np.add(x, b)  # a new array: never write into the branch's output

    def apply(params, state, x, *, key=None, train=False):
        (sub,) = split(key)
        return add(x, branch.apply_fn(params[k], state[k], x, key=sub, train=train))

    def vjp(params, state, x, *, key=None, train=True):
        (sub,) = split(key)
        b, new_state, branch_pullback = branch.vjp_fn(params[k], state[k], x, key=sub,
                                                      train=train)

        def pullback(dy):
            grads, dx = branch_pullback(dy)  # None: the caller needs no input gradient
            return {k: grads}, None if dx is None else np.add(dy, dx)

        return add(x, b), {k: new_state}, pullback

    return init, apply, vjp


# --- wrappers: shared, eval_mode -------------------------------------------------------------

@builder(children=("layer",))
def shared(layer: Layer, *, name: str = "shared") -> Layer:
    """``layer`` with one set of params wherever this object is used in a model.

    Use the returned object at several places (``enc = shared(serial(...))``;
    ``parallel(enc, enc)``, a Siamese encoder): its params live at its first
    place (``params["parallel_0"]["shared_0"]``; ``{}`` at the others), every use
    runs with them, and their gradient is the sum of the uses' gradients.
    :func:`fundl.tied_output` ties an output projection to a shared embedding.
    Otherwise transparent: the params, state and shapes are ``layer``'s.  A layer
    with state (batch norm) cannot be shared.
    """
    return combinator(_transparent, (("", layer),), name)


def _transparent(children: Children):
    ((_, inner),) = children
    return inner.init_fn, inner.apply_fn, inner.vjp_fn


@builder(children=("layer",))
def eval_mode(layer: Layer, *, name: str = "eval_mode") -> Layer:
    """``layer`` always run in eval mode (``train=False``), in ``apply`` and ``vjp`` alike.

    Its state (batch norm's running statistics) never changes and dropout is off,
    while its params still receive their exact gradients: a pretrained body
    fine-tuned with frozen statistics.  (Freezing its params is the optimizer's
    job: :func:`fundl.optim.freeze`.)  Params, state and shapes are ``layer``'s.
    """
    return combinator(_eval_mode, (("", layer),), name)


def _eval_mode(children: Children):
    ((_, inner),) = children

    def apply(params, state, x, *, key=None, train=False):
        return inner.apply_fn(params, state, x, key=key, train=False)

    def vjp(params, state, x, *, key=None, train=True):
        y, _, pullback = inner.vjp_fn(params, state, x, key=key, train=False)
        return y, state, pullback

    return inner.init_fn, apply, vjp


# --- fan out / fan in (leaves) ----------------------------------------------------------------

@builder
def fan_out(n: int, *, name: str = "fan_out") -> Layer:
    """One input to a tuple of ``n`` references to it (no copies; nobody writes into them).

    Shapes: ``in_shape -> (in_shape,) * n``; ``x -> (x,) * n``.  No params.
    The pullback sums the n cotangents into a new array (tuples elementwise).
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
            return {}, _sum(_inputs(dy, n)) if need_dx else None

        return (x,) * n, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",), fresh=("dparams",))


def _data_shapes(xs: Sequence[Any]) -> str:
    return ", ".join(str(tuple(np.shape(a))) for a in xs)


def _shape_list(in_shape: Any) -> Tuple[Shape, ...]:
    """``in_shape`` as a non-empty tuple of single shapes (a fan-in's init)."""
    if is_shape(in_shape) or not isinstance(in_shape, (tuple, list)):
        raise LayerError(f"expected a tuple of input shapes, got the single shape {in_shape!r}")
    if not all(is_shape(s) for s in in_shape):
        raise LayerError(f"expected a tuple of input shapes, got {in_shape!r}")
    if not in_shape:
        raise LayerError("expected at least one input shape, got ()")
    return tuple(as_shape(s) for s in in_shape)


def _nonempty_inputs(x: Any) -> Tuple[Any, ...]:
    if not isinstance(x, (tuple, list)):
        got = f"an array of shape {tuple(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
        raise LayerError(f"expected a tuple of several inputs, got {got}")
    if not x:
        raise LayerError("expected at least one input, got ()")
    return tuple(x)


@builder
def fan_in_sum(*, name: str = "fan_in_sum") -> Layer:
    """A tuple of same-shape float inputs to their sum (a new array).

    Shapes: ``(s, s, ..., s) -> s``; ``(x_0, ..., x_{n-1}) -> x_0 + ... + x_{n-1}``.
    Shapes and dtypes must match exactly (no broadcasting).  No params.  The
    pullback hands ``dy`` to every input.
    """

    def init(key, in_shape):
        shapes = _shape_list(in_shape)
        if any(s != shapes[0] for s in shapes):
            raise LayerError("expected inputs of one shape to sum, got shapes "
                             + ", ".join(str(s) for s in shapes))
        return {}, shapes[0]

    def check(x):
        xs = _nonempty_inputs(x)
        for i, xi in enumerate(xs):
            check_float_input(xi, f"input {i}")
        if any(xi.shape != xs[0].shape for xi in xs):
            raise LayerError(f"expected inputs of one shape to sum, got shapes {_data_shapes(xs)}")
        if any(xi.dtype != xs[0].dtype for xi in xs):
            raise LayerError("expected inputs of one dtype to sum, got dtypes "
                             + ", ".join(str(xi.dtype) for xi in xs))
        return xs

    def forward(xs):
        return xs[0].copy() if len(xs) == 1 else _sum(xs)

    def apply(params, x):
        return forward(check(x))

    def vjp(params, x, need_dx=True):
        xs = check(x)
        return forward(xs), lambda dy: ({}, (dy,) * len(xs) if need_dx else None)

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",), fresh=("dparams",))


@builder
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
        xs = _nonempty_inputs(x)
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

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",), fresh=("dparams",))


def _zero_cotangent(x: Any) -> Any:
    """The zero gradient of an input that the output does not depend on (``None`` for an
    integer or boolean array, tuples elementwise)."""
    if isinstance(x, (tuple, list)):
        return tuple(_zero_cotangent(a) for a in x)
    return np.zeros_like(x) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else None


@builder
def take(index: int, *, name: str = "take") -> Layer:
    """Element ``index`` of a tuple input: ``(x_0, ..., x_{n-1}) -> x_index``.  No params.

    Shapes: ``(s_0, ..., s_{n-1}) -> s_index`` (each ``s_i`` a shape or a tuple of them).
    The pullback gives ``dy`` at ``index`` and zeros at the other float inputs (``None`` at
    integer ones, such as a mask).  With
    ``fan_out`` and ``parallel`` it routes a tuple through a model, e.g. a padding mask
    kept beside the residual stream from block to block::

        block = serial(fan_out(2), parallel(serial(take(0), dense(8)), take(1)))  # (h, m) -> (h', m)
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"take: index must be an int, got {type(index).__name__} {index!r}")
    index = int(index)

    def pick(x, what):
        if not isinstance(x, (tuple, list)) or not -len(x) <= index < len(x):
            got = f"a tuple of {len(x)}" if isinstance(x, (tuple, list)) else repr(x) \
                if what == "input shapes" else type(x).__name__
            raise LayerError(f"expected a tuple of {what} with an element {index}, got {got}")
        return x[index]

    def init(key, in_shape):
        if is_shape(in_shape):
            raise LayerError(f"expected a tuple of input shapes, got the single shape {in_shape!r}")
        return {}, pick(in_shape, "input shapes")

    def apply(params, x):
        return pick(x, "inputs")

    def vjp(params, x):
        y = pick(x, "inputs")
        chosen = index % len(x)

        def pullback(dy):
            return {}, tuple(dy if i == chosen else _zero_cotangent(xi) for i, xi in enumerate(x))

        return y, pullback

    return stateless_layer(name, init, apply, vjp, fresh=("dparams",))


@builder
def identity() -> Layer:
    """Returns its input unchanged (any input, including tuples); no params."""

    def init(key, in_shape):
        return {}, in_shape

    def apply(params, x):
        return x

    def vjp(params, x):
        return x, lambda dy: ({}, dy)

    return stateless_layer("identity", init, apply, vjp, fresh=("dparams",))
