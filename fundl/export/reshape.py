"""flatten and reshape to ONNX (the batch axis stays dynamic)."""

from __future__ import annotations

from typing import Any

from .site import Site, converts


@converts("flatten")
def flatten(s: Site, x: Any) -> Any:
    """``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``: ``Flatten(axis=1)``, row-major as
    numpy's reshape."""
    return s.g.op("Flatten", x, axis=1)


@converts("reshape")
def reshape(s: Site, x: Any) -> Any:
    """``Reshape`` to ``(-1, *out_shape)``: the per-example shape ``init`` resolved (its
    ``-1`` made concrete), the batch left to the runtime."""
    return s.g.reshape(x, s.out_shape)
