"""Position encodings to ONNX: ``Add`` of a constant ``(time, features)`` table.

The time axis is fixed by the exported ``in_shape`` (only the batch is dynamic), so
the rows a sequence of that length uses are known at export.
"""

from __future__ import annotations

from typing import Any

from ..layers.positional import sinusoid_table
from .site import Site, converts


@converts("positional_embedding")
def positional_embedding(s: Site, x: Any) -> Any:
    """``x + pos[:time]`` (the learned table's first ``time`` rows, as an initializer)."""
    steps = s.in_shape[0]
    pos = s.param("pos", lambda p: p[:steps], tag=f"first_{steps}")
    return s.g.op("Add", x, pos)


@converts("sinusoidal_positions")
def sinusoidal_positions(s: Site, x: Any) -> Any:
    """``x + table`` with fundl's sine/cosine table (float64, cast to the model's dtype)."""
    steps, features = s.in_shape
    table = sinusoid_table(steps, features, float(s.config["base"])).astype(s.g.float_dtype)
    return s.g.op("Add", x, s.g.const(table, "sinusoid"))
