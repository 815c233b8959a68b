"""Upsampling of NHWC data by integer factors: nearest and bilinear (PyTorch's F.interpolate).

Bilinear interpolation is separable: along each spatial axis every output row is
``(1 - l) * x[i0] + l * x[i1]`` with per-row source indices ``i0 <= i1`` and weight
``l`` (torch's index rule).  Both index arrays are non-decreasing, so the exact
transpose (the VJP) sums the weighted output rows of each source index with one
``np.add.reduceat`` per index array -- no loop over rows or pixels.
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np

from ..checks import LayerError, as_shape, check_float_input
from ..core import Layer, builder, stateless_layer
from .windows import int_tuple

__all__ = ["upsample2d"]


def _source(n_in: int, scale: int, align_corners: bool):
    """``(i0, i1, l)`` of an axis of ``n_in`` cells upsampled ``scale`` times (float64 l)."""
    n_out = n_in * scale
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum((dst + 0.5) / scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def _segment_sum(v: np.ndarray, idx: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``out[k] = sum of v[o] over o with idx[o] == k`` along ``axis`` (``idx`` sorted)."""
    starts = np.searchsorted(idx, np.arange(size))
    out = np.add.reduceat(v, np.minimum(starts, len(idx) - 1), axis=axis)
    empty = np.bincount(idx, minlength=size) == 0
    if empty.any():
        shape = [1] * v.ndim
        shape[axis] = size
        out *= ~empty.reshape(shape)
    return out


def _interp(x, axis, i0, i1, frac):
    shape = [1] * x.ndim
    shape[axis] = len(frac)
    lw = frac.astype(x.dtype).reshape(shape)
    lo = np.take(x, i0, axis=axis)
    lo *= 1 - lw
    lo += np.take(x, i1, axis=axis) * lw
    return lo


def _interp_t(dy, axis, i0, i1, frac, size):
    shape = [1] * dy.ndim
    shape[axis] = len(frac)
    lw = frac.astype(dy.dtype).reshape(shape)
    return _segment_sum(dy * (1 - lw), i0, size, axis) + _segment_sum(dy * lw, i1, size, axis)


@builder
def upsample2d(scale: Union[int, Tuple[int, int]], method: str = "nearest",
               align_corners: bool = False, name: str = "upsample2d") -> Layer:
    """Upsample NHWC data by integer factors: ``torch.nn.functional.interpolate``.

    Shapes: ``x`` is ``(batch, h, w, c)``, ``y`` is ``(batch, h * sh, w * sw, c)`` for
    ``scale = s`` or ``(sh, sw)`` (ints >= 1).  No params.
    ``method="nearest"``: each cell repeated into an ``sh x sw`` block (torch's
    ``mode="nearest"``); its VJP sums each block.  ``method="bilinear"``: torch's
    ``mode="bilinear"`` with the same ``align_corners`` -- ``False`` (torch's default):
    source coordinate ``(dst + 0.5) / s - 0.5`` clamped at 0; ``True``:
    ``dst * (in - 1) / (out - 1)``; the VJP is the exact transposed interpolation.
    ``align_corners`` is ignored by ``"nearest"`` (torch refuses it there).
    """
    sh, sw = int_tuple(scale, 2, "scale", name)
    if method not in ("nearest", "bilinear"):
        raise LayerError(f"method must be 'nearest' or 'bilinear', got {method!r}", name)
    align_corners = bool(align_corners)

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise LayerError(f"expected a per-example input shape (height, width, channels), "
                             f"got {in_shape}")
        h, w, c = in_shape
        return {}, (h * sh, w * sw, c)

    def check(x):
        check_float_input(x)
        if x.ndim != 4:
            raise LayerError(f"expected input of shape (batch, height, width, channels), "
                             f"got shape {tuple(x.shape)}")

    def forward(x):
        n, h, w, c = x.shape
        if method == "nearest":
            y = np.empty((n, h, sh, w, sw, c), x.dtype)
            y[...] = x[:, :, None, :, None, :]
            return y.reshape(n, h * sh, w * sw, c), None
        rows, cols = _source(h, sh, align_corners), _source(w, sw, align_corners)
        return _interp(_interp(x, 1, *rows), 2, *cols), (rows, cols)

    def apply(params, x):
        check(x)
        return forward(x)[0]

    def vjp(params, x, need_dx=True):
        check(x)
        y, geometry = forward(x)
        n, h, w, c = x.shape

        def pullback(dy):
            if not need_dx:
                return {}, None
            dy = np.ascontiguousarray(dy)   # the sums then add in one order for any layout
            if method == "nearest":
                return {}, dy.reshape(n, h, sh, w, sw, c).sum(axis=(2, 4))
            rows, cols = geometry
            return {}, _interp_t(_interp_t(dy, 2, *cols, w), 1, *rows, h)

        return y, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",), fresh=("y", "dx"))
