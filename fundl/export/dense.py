"""Dense to ONNX: ``x @ w + b`` as MatMul and Add (``w`` ``(in, out)`` is MatMul's layout)."""

from __future__ import annotations

from typing import Any

from .site import Site, converts


@converts("dense")
def dense(s: Site, x: Any) -> Any:
    """``MatMul(x, w)`` (+ ``Add b``) on ``(batch, ..., in)``: MatMul broadcasts over the
    leading axes as fundl's dense does."""
    y = s.g.op("MatMul", x, s.param("w"))
    if s.config["use_bias"]:
        y = s.g.op("Add", y, s.param("b"))
    return y
