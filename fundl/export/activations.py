"""Activations to ONNX: one op each where ONNX has it, else its formula in ONNX ops.

``relu``, ``leaky_relu``, ``elu``, ``softplus``, ``sigmoid``, ``tanh``, ``softmax`` and
``log_softmax`` are single ops; ``silu`` is ``x * Sigmoid(x)``; ``gelu`` is
``0.5 x (1 + Erf(x / sqrt 2))`` (exact) or its tanh form, written out (ONNX's Gelu op
needs opset 20).
"""

from __future__ import annotations

import math
from typing import Any

from .site import Site, converts

_SINGLE = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus"}


@converts(*_SINGLE)
def elementwise(s: Site, x: Any) -> Any:
    """``relu`` -> ``Relu``, ``sigmoid`` -> ``Sigmoid``, ``tanh`` -> ``Tanh``, ``softplus`` ->
    ``Softplus``: the same functions, elementwise."""
    return s.g.op(_SINGLE[s.kind], x)


@converts("leaky_relu")
def leaky_relu(s: Site, x: Any) -> Any:
    """``LeakyRelu(alpha=negative_slope)``: ``x`` where ``x >= 0``, else ``alpha * x``."""
    return s.g.op("LeakyRelu", x, alpha=float(s.config["negative_slope"]))


@converts("elu")
def elu(s: Site, x: Any) -> Any:
    """``Elu(alpha)``: ``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``."""
    return s.g.op("Elu", x, alpha=float(s.config["alpha"]))


@converts("silu")
def silu(s: Site, x: Any) -> Any:
    """``x * Sigmoid(x)``."""
    return s.g.op("Mul", x, s.g.op("Sigmoid", x))


@converts("gelu")
def gelu(s: Site, x: Any) -> Any:
    """Exact: ``x * 0.5 * (1 + Erf(x / sqrt 2))``; ``approximate=True``:
    ``x * 0.5 * (1 + Tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))``."""
    g = s.g
    if s.config["approximate"]:
        cube = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Add", x, g.op("Mul", cube, g.floats(0.044715)))
        t = g.op("Tanh", g.op("Mul", inner, g.floats(math.sqrt(2.0 / math.pi))))
    else:
        t = g.op("Erf", g.op("Mul", x, g.floats(1.0 / math.sqrt(2.0))))
    half = g.op("Mul", g.op("Add", t, g.floats(1.0)), g.floats(0.5))
    return g.op("Mul", x, half)


@converts("softmax", "log_softmax")
def softmax(s: Site, x: Any) -> Any:
    """``Softmax``/``LogSoftmax`` along ``axis``: fundl's axis counts the data's axes as
    ONNX's does (a negative one from the end; axis 0, the batch, is refused by fundl)."""
    op = "Softmax" if s.kind == "softmax" else "LogSoftmax"
    return s.g.op(op, x, axis=int(s.config["axis"]))
