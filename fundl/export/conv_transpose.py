"""Transposed convolutions to ONNX: ``ConvTranspose`` on channels-first data.

fundl's output size is PyTorch's, ``(in - 1) * stride - 2 * padding + dilation *
(kernel - 1) + output_padding + 1``, which is ONNX's with symmetric ``pads`` and
``output_padding``; the kernel ``(*kernel, c_in, c_out)`` becomes ONNX's
``(c_in, c_out, *kernel)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layers.conv_transpose import _geometry
from .conv import channels_first, channels_last
from .site import Site, converts


@converts("conv_transpose1d", "conv_transpose2d")
def conv_transpose(s: Site, x: Any) -> Any:
    """``ConvTranspose`` with fundl's strides, dilations, symmetric pads (``"same"`` and
    ``"valid"`` resolved as fundl does) and ``output_padding`` (the layer's own
    :func:`fundl.layers.conv_transpose._geometry`); the bias is its third input."""
    d = 1 if s.kind == "conv_transpose1d" else 2
    c = s.config
    kernel, strides, dilations, out_pad, pads = _geometry(
        s.kind, d, c["kernel_size"], c["stride"], c["padding"], c["output_padding"],
        c["dilation"])
    perm = (d, d + 1) + tuple(range(d))           # (*k, c_in, c_out) -> (c_in, c_out, *k)
    w = s.param("w", lambda a: np.transpose(a, perm), tag="onnx")
    b = s.param("b") if c["use_bias"] else None
    y = s.g.op("ConvTranspose", channels_first(s, x, d), w, b, kernel_shape=list(kernel),
               strides=list(strides), dilations=list(dilations),
               output_padding=list(out_pad), pads=list(pads) * 2)
    return channels_last(s, y, d)
