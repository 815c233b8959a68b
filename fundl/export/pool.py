"""Pools to ONNX: ``MaxPool``/``AveragePool`` on channels-first data, ``ReduceMean``.

fundl's padded cells never win a max (ONNX's MaxPool ignores its pads too) and
an average counts only real cells (``AveragePool(count_include_pad=0)``, PyTorch's
``count_include_pad=False``); ``"same"``/``"valid"`` are resolved to fundl's
explicit pads for the layer's input shape.
"""

from __future__ import annotations

from typing import Any

from ..layers.windows import int_tuple, parse_padding
from .conv import channels_first, channels_last, window_pads
from .site import Site, converts


@converts("max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d")
def pool(s: Site, x: Any) -> Any:
    """``MaxPool`` or ``AveragePool(count_include_pad=0)`` with fundl's window, stride
    (default the window) and pads; floor output sizes (``ceil_mode=0``) as fundl's."""
    d = 1 if s.kind.endswith("1d") else 2
    window = int_tuple(s.config["window"], d, "window", s.kind)
    stride = s.config["stride"]
    strides = window if stride is None else int_tuple(stride, d, "stride", s.kind)
    attrs = dict(kernel_shape=list(window), strides=list(strides),
                 pads=window_pads(s, parse_padding(s.config["padding"], d, s.kind), window,
                                  strides))
    if s.kind.startswith("max"):
        y = s.g.op("MaxPool", channels_first(s, x, d), **attrs)
    else:
        y = s.g.op("AveragePool", channels_first(s, x, d), count_include_pad=0, **attrs)
    return channels_last(s, y, d)


@converts("global_avg_pool")
def global_avg_pool(s: Site, x: Any) -> Any:
    """``ReduceMean`` over every spatial axis: ``(batch, *spatial, C) -> (batch, C)``."""
    rank = len(s.in_shape) + 1
    return s.g.reduce("ReduceMean", x, list(range(1, rank - 1)), keepdims=False)
