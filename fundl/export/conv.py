"""Convolutions to ONNX: ``Conv`` on channels-first data, between two Transposes.

fundl's data is channels-last (NWC, NHWC) and ONNX's ``Conv`` channels-first, so
each convolution is ``Transpose -> Conv -> Transpose``; ONNX Runtime's transpose
optimizer cancels the back-to-back pairs between consecutive layers.  The kernel
``(*kernel, c_in / groups, c_out)`` becomes ``(c_out, c_in / groups, *kernel)``.
"""

from __future__ import annotations

from typing import Any, List, Sequence

import numpy as np

from ..layers.conv import _geometry
from ..layers.windows import resolve_padding
from .site import Site, converts


def channels_first(s: Site, x: Any, d: int) -> Any:
    """``(N, *spatial, C) -> (N, C, *spatial)`` for ``d`` spatial axes."""
    return s.g.transpose(x, [0, d + 1] + list(range(1, d + 1)))


def channels_last(s: Site, y: Any, d: int) -> Any:
    """``(N, C, *spatial) -> (N, *spatial, C)``."""
    return s.g.transpose(y, [0] + list(range(2, d + 2)) + [1])


def onnx_pads(pads: Sequence[Sequence[int]]) -> List[int]:
    """fundl's ``((lo, hi), ...)`` per axis as ONNX's ``[lo_1, ..., lo_d, hi_1, ..., hi_d]``."""
    return [int(lo) for lo, _ in pads] + [int(hi) for _, hi in pads]


def window_pads(s: Site, pad_spec: Any, extents: Sequence[int], strides: Sequence[int]
                ) -> List[int]:
    """The explicit pads fundl uses for this layer's input: its checked padding spec
    (``"same"``/``"valid"`` or pairs) resolved for its spatial shape by
    :func:`fundl.layers.windows.resolve_padding`, as the layer does."""
    return onnx_pads(resolve_padding(pad_spec, tuple(s.in_shape[:-1]), extents, strides))


@converts("conv1d", "conv2d")
def conv(s: Site, x: Any) -> Any:
    """``Conv`` with fundl's strides, dilations, groups and explicit pads (``"same"`` puts
    the odd cell at the end, as fundl's TF/JAX convention: given as explicit pads, not
    ``auto_pad``); the bias is Conv's third input.  The geometry is the layer's own
    (:func:`fundl.layers.conv._geometry`)."""
    d = 1 if s.kind == "conv1d" else 2
    c = s.config
    kernel, strides, dilations, pad_spec, *_, extents = _geometry(
        s.kind, d, c["kernel_size"], c["stride"], c["padding"], c["dilation"])
    perm = (d + 1, d) + tuple(range(d))           # (*k, c_in/g, c_out) -> (c_out, c_in/g, *k)
    w = s.param("w", lambda a: np.transpose(a, perm), tag="onnx")
    b = s.param("b") if c["use_bias"] else None
    y = s.g.op("Conv", channels_first(s, x, d), w, b, kernel_shape=list(kernel),
               strides=list(strides), dilations=list(dilations), group=int(c["groups"]),
               pads=window_pads(s, pad_spec, extents, strides))
    return channels_last(s, y, d)
