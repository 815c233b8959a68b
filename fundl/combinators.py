"""Combinators: layers built from layers.  A model is just a Layer.

Children's params and state live in dicts keyed by readable names
(``dense_0``, ``relu_1``): ``params["dense_0"]["w"]`` means something.  A
child's :class:`~fundl.core.LayerError` is re-raised with the child's key
prepended, so errors name the layer's path in the model.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from . import random
from .core import Layer, LayerError, as_shape, call_vjp, stateless_layer

__all__ = ["serial", "identity", "child_keys"]


def child_keys(layers: Sequence[Layer]) -> List[str]:
    """Readable, unique dict keys for children: ``f"{layer.name}_{index}"``."""
    return [f"{layer.name}_{i}" for i, layer in enumerate(layers)]


def _split_or_none(key: Any, n: int) -> Tuple[Any, ...]:
    if key is None:
        return (None,) * n
    return random.split(key, n)


def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Run ``layers`` one after another; the output of each is the next one's input.

    Shapes are threaded through ``init``; the pullback runs the children's
    pullbacks in reverse.  Params and state are dicts keyed ``{name}_{index}``.
    """
    if not layers:
        raise ValueError("serial needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is a {type(layer).__name__}, not a fundl Layer "
                            "(did you forget to call it, e.g. relu() rather than relu?)")
    names = child_keys(layers)
    pairs = list(zip(names, layers))
    n = len(layers)

    def init(key, in_shape):
        params: Dict[str, Any] = {}
        state: Dict[str, Any] = {}
        shape = in_shape
        for (k, layer), sub in zip(pairs, random.split(key, n)):
            try:
                params[k], state[k], shape = layer.init(sub, shape)
            except LayerError as err:
                raise err.within(k) from None
        return params, state, shape

    def apply(params, state, x, *, key=None, train=False):
        for (k, layer), sub in zip(pairs, _split_or_none(key, n)):
            try:
                x = layer.apply(params[k], state[k], x, key=sub, train=train)
            except LayerError as err:
                raise err.within(k) from None
        return x

    def vjp(params, state, x, *, key=None, need_dx=True):
        pullbacks = []
        new_state: Dict[str, Any] = {}
        for i, ((k, layer), sub) in enumerate(zip(pairs, _split_or_none(key, n))):
            try:
                x, new_state[k], pb = call_vjp(layer, params[k], state[k], x, sub,
                                               need_dx=need_dx or i > 0)
            except LayerError as err:
                raise err.within(k) from None
            pullbacks.append(pb)

        def pullback(dy):
            grads: Dict[str, Any] = {}
            for k, pb in zip(reversed(names), reversed(pullbacks)):
                grads[k], dy = pb(dy)
            return {k: grads[k] for k in names}, dy

        return x, new_state, pullback

    return Layer(init, apply, vjp, name)


def identity() -> Layer:
    """Returns its input unchanged (any input, including tuples); no params."""

    def init(key, in_shape):
        return {}, in_shape

    def apply(params, x):
        return x

    def vjp(params, x):
        return x, lambda dy: ({}, dy)

    return stateless_layer("identity", init, apply, vjp)
