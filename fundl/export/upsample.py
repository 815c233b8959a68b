"""upsample2d to ONNX: ``Resize`` by integer factors.

- nearest: ``Resize(mode="nearest", coordinate_transformation_mode="asymmetric",
  nearest_mode="floor")`` on NHWC with scales ``(1, sh, sw, 1)``: output cell ``o``
  reads input ``floor(o / s)``, fundl's block repeat.
- bilinear: ``Resize(mode="linear")`` on NCHW, ``coordinate_transformation_mode``
  ``"align_corners"`` or ``"pytorch_half_pixel"`` (source ``(dst + 0.5) / s - 0.5``,
  clamped at the border by the linear mode), fundl's and PyTorch's two rules.
"""

from __future__ import annotations

from typing import Any

from ..layers.windows import int_tuple
from .conv import channels_first, channels_last
from .site import Site, converts


@converts("upsample2d")
def upsample2d(s: Site, x: Any) -> Any:
    """``Resize`` by ``scale`` (see the module docstring for the modes)."""
    sh, sw = int_tuple(s.config["scale"], 2, "scale", s.kind)
    g = s.g
    if s.config["method"] == "nearest":
        scales = g.const([1.0, sh, sw, 1.0], "scales", "float32")
        return g.op("Resize", x, None, scales, mode="nearest", nearest_mode="floor",
                    coordinate_transformation_mode="asymmetric")
    mode = "align_corners" if s.config["align_corners"] else "pytorch_half_pixel"
    scales = g.const([1.0, 1.0, sh, sw], "scales", "float32")
    y = g.op("Resize", channels_first(s, x, 2), None, scales, mode="linear",
             coordinate_transformation_mode=mode)
    return channels_last(s, y, 2)
