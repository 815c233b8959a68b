"""Shape layers: ``flatten`` and ``reshape``.  Parameter-free; the batch axis is kept.

Both return views of the input where numpy can (a view is not a write), and
their backward reshapes ``dy`` back to the input's shape.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Union

import numpy as np

from ..checks import LayerError, Shape, as_shape, int_or_none
from ..core import Layer, builder, stateless_layer

__all__ = ["flatten", "reshape"]


def _check_array(x: Any) -> None:
    if not isinstance(x, np.ndarray):
        raise LayerError(f"expected a numpy array, got {type(x).__name__}")
    if x.ndim < 2:
        raise LayerError(f"expected an input of shape (batch, ...) with at least one axis after "
                         f"the batch, got shape {x.shape}")


@builder
def flatten() -> Layer:
    """``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``.  Any dtype; no params."""

    def init(key, in_shape):
        return {}, (math.prod(as_shape(in_shape)),)

    def apply(params, x):
        _check_array(x)
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def vjp(params, x):
        y = apply(params, x)
        shape = x.shape
        return y, lambda dy: ({}, dy.reshape(shape))

    return stateless_layer("flatten", init, apply, vjp, fresh=("dparams",))


def _resolve(target: Shape, in_shape: Shape) -> Shape:
    """``target`` (one ``-1`` allowed) made concrete for per-example ``in_shape``."""
    size = math.prod(in_shape)
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or size % known:
            raise LayerError(f"cannot reshape per-example shape {in_shape} (size {size}) "
                             f"to {target}")
        target = tuple(size // known if d == -1 else d for d in target)
    if math.prod(target) != size:
        raise LayerError(f"cannot reshape per-example shape {in_shape} (size {size}) to "
                         f"{target} (size {math.prod(target)})")
    return target


@builder
def reshape(shape: Union[int, Sequence[int]]) -> Layer:
    """``(batch, *in_shape) -> (batch, *shape)``; ``shape`` is per-example, one ``-1`` allowed.

    Sizes must match: ``prod(shape) == prod(in_shape)``, else a LayerError naming both.
    Any dtype; no params.
    """
    single = int_or_none(shape)
    if single is not None:
        shape = (single,)
    if not isinstance(shape, (tuple, list)) or any(int_or_none(d) is None for d in shape):
        raise TypeError(f"layer 'reshape': shape must be a sequence of ints (one may be -1), "
                        f"got {type(shape).__name__} {shape!r} (floats and bools are refused)")
    target = as_shape(shape)
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise ValueError(f"reshape: shape may hold one -1 and otherwise sizes >= 0, got {target}")

    def init(key, in_shape):
        return {}, _resolve(target, as_shape(in_shape))

    def apply(params, x):
        _check_array(x)
        return x.reshape((x.shape[0],) + _resolve(target, tuple(x.shape[1:])))

    def vjp(params, x):
        y = apply(params, x)
        shape_in = x.shape
        return y, lambda dy: ({}, dy.reshape(shape_in))

    return stateless_layer("reshape", init, apply, vjp, fresh=("dparams",))
