"""Window geometry shared by convolutions and pools: padding specs, output sizes, offset views.

A ``d``-D layer (d = 1 or 2) works on 2-D NHWC data (1-D NWC data gets a unit
height); a window of ``kh x kw`` offsets slides with ``strides`` over the padded
input, and each offset ``(di, dj)`` sees the strided view :func:`offset_view` of
it -- never a copy per window, never a loop over examples or positions.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..checks import LayerError, Shape, as_shape, int_or_none

__all__ = ["Padding", "Pads", "int_tuple", "parse_padding", "resolve_padding", "output_sizes",
           "window_geometry", "check_spatial_in_shape", "pad_nhwc", "offset_view", "offsets"]

Padding = Union[str, int, Sequence[Tuple[int, int]]]
Pads = Tuple[Tuple[int, int], ...]


def _has_non_int_number(value: Any) -> bool:
    """Whether a number that is not an int -- a float (even ``2.0``) or a bool -- sits in
    ``value`` (a number, or sequences of them, nested)."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return any(_has_non_int_number(v) for v in value)
    return isinstance(value, (bool, np.bool_, float, np.floating, complex))


def _refuse_non_ints(value: Any, what: str, form: str, kind: str) -> None:
    """A ``TypeError`` naming the layer ``kind`` and ``what`` if ``value`` holds a float
    or a bool where ints belong (other wrong forms are a :class:`LayerError`)."""
    if _has_non_int_number(value):
        raise TypeError(f"layer '{kind}': {what} must be {form}, got {type(value).__name__} "
                        f"{value!r} (floats and bools are refused: fundl does not round sizes)")


def _int_rows(value: Any, width: int) -> Optional[List[tuple]]:
    """``value`` as a list of ``width``-tuples of ints if it is a sequence of such, else None."""
    if not isinstance(value, (tuple, list)):
        return None
    rows = []
    for row in value:
        if not isinstance(row, (tuple, list, np.ndarray)) or len(row) != width:
            return None
        ints = [int_or_none(v) for v in row]
        if None in ints:
            return None
        rows.append(tuple(ints))
    return rows


def int_tuple(value: Any, d: int, what: str, kind: str, minimum: int = 1) -> Tuple[int, ...]:
    """``value`` (an int or a length-``d`` sequence of ints, each ``>= minimum``) as a
    ``d``-tuple.  Python and numpy ints only, as :func:`fundl.checks.int_arg`: a float,
    bool or string is a ``TypeError``; a wrong length or a too-small value a
    :class:`LayerError`; both name ``what`` and the layer ``kind``."""
    form = f"an int or {d} ints, each >= {minimum}"
    _refuse_non_ints(value, what, form, kind)
    single = int_or_none(value)
    if single is not None:
        out: Tuple[int, ...] = (single,) * d
    else:
        row = _int_rows([value], len(value)) if isinstance(
            value, (tuple, list, np.ndarray)) else None
        out = row[0] if row else ()
    if len(out) != d or min(out) < minimum:
        raise LayerError(f"{what} must be {form}, got {value!r}", kind)
    return out


def parse_padding(padding: Padding, d: int, kind: str) -> Union[str, Pads]:
    """Check a padding spec: ``"valid"``, ``"same"``, an int (symmetric, every axis)
    or ``d`` pairs ``(lo, hi)`` (for ``d == 1`` a bare pair is accepted too), all ints
    ``>= 0`` (a float or bool is a ``TypeError``, as in :func:`int_tuple`)."""
    form = f"'valid', 'same', an int >= 0 or {d} pairs (lo, hi) >= 0"
    if isinstance(padding, str):
        if padding.lower() in ("valid", "same"):
            return padding.lower()
        raise LayerError(f"padding must be {form}, got {padding!r}", kind)
    _refuse_non_ints(padding, "padding", form, kind)
    single = int_or_none(padding)
    if single is not None:
        pads: List[tuple] = [(single, single)] * d
    else:
        pair = _int_rows([padding], 2) if d == 1 else None   # a bare (lo, hi) pair for 1-D
        pads = pair or _int_rows(padding, 2) or []
    if len(pads) != d or min(min(p) for p in pads) < 0:
        raise LayerError(f"padding must be {form}, got {padding!r}", kind)
    return tuple(pads)


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
