"""Combinators to ONNX: their children's graphs, wired as the combinator runs them.

A tuple of values stands for a multi-input or multi-output layer's data, so
``parallel``/``fan_out`` only route names and ``serial`` threads them.
"""

from __future__ import annotations

from typing import Any

from .site import Site, converts


@converts("serial")
def serial(s: Site, x: Any) -> Any:
    """Each child on the previous one's output, in order."""
    for key, _ in s.layer.children:
        x = s.child(key, x)
    return x


@converts("parallel")
def parallel(s: Site, x: Any) -> Any:
    """Child ``i`` on input ``i``: a tuple of outputs."""
    if not isinstance(x, tuple) or len(x) != len(s.layer.children):
        raise s.fail(f"expected a tuple of {len(s.layer.children)} inputs")
    return tuple(s.child(key, xi) for (key, _), xi in zip(s.layer.children, x))


@converts("fan_out")
def fan_out(s: Site, x: Any) -> Any:
    """``(x,) * n``: the same value n times (no node)."""
    return (x,) * int(s.config["n"])


@converts("fan_in_sum")
def fan_in_sum(s: Site, x: Any) -> Any:
    """``Sum`` of the inputs (exactly equal shapes, as fundl requires)."""
    return s.g.op("Sum", *x)


@converts("fan_in_concat")
def fan_in_concat(s: Site, x: Any) -> Any:
    """``Concat`` along the per-example ``axis`` (a non-negative one is data axis ``axis + 1``;
    a negative one counts from the end in both)."""
    axis = int(s.config["axis"])
    return s.g.op("Concat", *x, axis=axis + 1 if axis >= 0 else axis)


@converts("residual")
def residual(s: Site, x: Any) -> Any:
    """``Add(x, branch(x))``."""
    ((key, _),) = s.layer.children
    return s.g.op("Add", x, s.child(key, x))


@converts("take")
def take(s: Site, x: Any) -> Any:
    """Element ``index`` of the input tuple (no node)."""
    return x[int(s.config["index"])]


@converts("identity")
def identity(s: Site, x: Any) -> Any:
    """``x`` itself (no node)."""
    return x


@converts("shared", "eval_mode")
def transparent(s: Site, x: Any) -> Any:
    """``shared(layer)`` and ``eval_mode(layer)``: ``layer`` itself (the export is in eval
    mode already; a shared layer's params were filled in at each use and are stored once)."""
    return s.child("", x)
