"""Window geometry shared by convolutions and pools: padding specs, output sizes, offset views.

A ``d``-D layer (d = 1 or 2) works on 2-D NHWC data (1-D NWC data gets a unit
height); a window of ``kh x kw`` offsets slides with ``strides`` over the padded
input, and each offset ``(di, dj)`` sees the strided view :func:`offset_view` of
it -- never a copy per window, never a loop over examples or positions.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import numpy as np

from ..checks import LayerError, Shape, as_shape

__all__ = ["Padding", "Pads", "int_tuple", "parse_padding", "resolve_padding", "output_sizes",
           "window_geometry", "check_spatial_in_shape", "pad_nhwc", "offset_view", "offsets"]

Padding = Union[str, int, Sequence[Tuple[int, int]]]
Pads = Tuple[Tuple[int, int], ...]


def int_tuple(value: Any, d: int, what: str, kind: str) -> Tuple[int, ...]:
    """``value`` (an int or a length-``d`` sequence of ints >= 1) as a ``d``-tuple."""
    if isinstance(value, (int, np.integer)):
        out = (int(value),) * d
    else:
        try:
            out = () if isinstance(value, str) else tuple(int(v) for v in value)
        except (TypeError, ValueError):
            out = ()
    if len(out) != d or min(out) < 1:
        raise LayerError(f"{what} must be an int or {d} ints, each >= 1, got {value!r}", kind)
    return out


def parse_padding(padding: Padding, d: int, kind: str) -> Union[str, Pads]:
    """Check a padding spec: ``"valid"``, ``"same"``, an int (symmetric, every axis)
    or ``d`` pairs ``(lo, hi)`` (for ``d == 1`` a bare pair is accepted too)."""
    if isinstance(padding, str):
        if padding.lower() in ("valid", "same"):
            return padding.lower()
    elif isinstance(padding, (int, np.integer)):
        if padding >= 0:
            return ((int(padding), int(padding)),) * d
    else:
        try:
            pads = [tuple(int(v) for v in p) for p in padding]
        except (TypeError, ValueError):
            pads = []
            if d == 1 and isinstance(padding, (tuple, list)) and len(padding) == 2 \
                    and all(isinstance(v, (int, np.integer)) for v in padding):
                pads = [tuple(int(v) for v in padding)]  # a bare (lo, hi) pair for 1-D
        if (len(pads) == d and all(len(p) == 2 and min(p) >= 0 for p in pads)):
            return tuple(pads)  # type: ignore[return-value]
    raise LayerError(f"padding must be 'valid', 'same', an int >= 0 or {d} pairs "
                     f"(lo, hi) >= 0, got {padding!r}", kind)


def resolve_padding(padding: Union[str, Pads], sizes: Sequence[int], extents: Sequence[int],
                    strides: Sequence[int]) -> Pads:
    """Explicit ``(lo, hi)`` pads per axis.  ``"same"`` gives ``ceil(size / stride)``
    outputs, the total split with the odd one at the end (TF/JAX convention)."""
    if padding == "valid":
        return ((0, 0),) * len(sizes)
    if padding == "same":
        pads = []
        for n, k, s in zip(sizes, extents, strides):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return padding  # type: ignore[return-value]


def output_sizes(sizes: Sequence[int], extents: Sequence[int], strides: Sequence[int],
                 pads: Pads, what: str) -> Tuple[int, ...]:
    """Output size per axis; :class:`LayerError` if a window overhangs the padded input."""
    out = []
    for n, k, s, (lo, hi) in zip(sizes, extents, strides, pads):
        if n + lo + hi < k:
            raise LayerError(f"the {what} spans {tuple(extents)} but the padded input is only "
                             f"{tuple(m + a + b for m, (a, b) in zip(sizes, pads))} "
                             f"(input spatial shape {tuple(sizes)}, padding {tuple(pads)})")
        out.append((n + lo + hi - k) // s + 1)
    return tuple(out)


def window_geometry(pad_spec: Union[str, Pads], spatial: Sequence[int], extents: Sequence[int],
                    strides: Sequence[int], what: str):
    """``(pads, out_hw, out_d)`` of a window sliding over ``spatial`` (1 or 2 axes).

    ``pads`` and ``out_hw`` are lifted to 2-D (a unit height for 1-D data), as the
    2-D core uses them; ``out_d`` are the output sizes of the data's own axes.
    """
    pads_d = resolve_padding(pad_spec, spatial, extents, strides)
    out_d = output_sizes(spatial, extents, strides, pads_d, what)
    if len(spatial) == 1:
        return ((0, 0),) + pads_d, (1,) + out_d, out_d
    return pads_d, out_d, out_d


def check_spatial_in_shape(in_shape: Any, d: int) -> Shape:
    """``in_shape`` as a tuple, or :class:`LayerError` unless it is (width, channels) for
    ``d == 1`` or (height, width, channels) for ``d == 2``, every size >= 1."""
    in_shape = as_shape(in_shape)
    if len(in_shape) != d + 1 or min(in_shape) < 1:
        layout = "(width, channels)" if d == 1 else "(height, width, channels)"
        raise LayerError(f"expected a per-example input shape {layout}, got {in_shape}")
    return in_shape


def pad_nhwc(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """``x`` (N, H, W, C) padded on H and W; ``x`` itself when all pads are zero."""
    (t, b), (left, r) = pads
    if t == b == left == r == 0:
        return x
    n, h, w, c = x.shape
    xp = np.empty((n, h + t + b, w + left + r, c), x.dtype)
    for border in (xp[:, :t], xp[:, h + t:], xp[:, t:h + t, :left], xp[:, t:h + t, w + left:]):
        border[...] = value
    xp[:, t:h + t, left:w + left] = x
    return xp


def offset_view(xp: np.ndarray, i: int, j: int, out_hw: Tuple[int, int],
                strides: Tuple[int, int]) -> np.ndarray:
    """The (N, OH, OW, C) strided view of ``xp`` seen by window offset ``(i, j)``
    (``i``, ``j`` already multiplied by the dilation)."""
    (oh, ow), (sh, sw) = out_hw, strides
    return xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


def offsets(kernel: Tuple[int, int], dilation: Tuple[int, int] = (1, 1)):
    """``(index, di, dj)`` for each kernel offset in row-major order."""
    (kh, kw), (dh, dw) = kernel, dilation
    return [(a * kw + b, a * dh, b * dw) for a in range(kh) for b in range(kw)]
