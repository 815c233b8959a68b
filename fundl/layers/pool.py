"""Pooling on NWC (1-D) and NHWC (2-D) data: max, average, global average.

Every pool loops over the ``kh*kw`` window offsets (never over examples or
positions); each offset sees a strided view of the input, so no window is ever
copied.  When the windows do not overlap (``stride >= window``) and there is no
padding -- the common ``max_pool2d(2)`` -- the input is not copied at all and
the gradient is written straight into each offset's view of ``dx``; this is the
same as reducing ``x.reshape(N, H/2, 2, W/2, 2, C)`` over the window axes.
1-D pools are 2-D pools with a unit height.

Ties in max pooling: the whole gradient of a window goes to exactly one cell,
the first maximum in row-major window order (the one ``argmax`` of the
flattened window would pick; a window with a NaN has output NaN and its first
NaN gets the gradient, as ``argmax`` does).  Padded cells of a max pool are
``-inf`` and never win, even against real cells that are ``-inf`` too.  The
forward is only the maxima of the offset views; the pullback finds the winners
from the kept input and output (compare, then keep the first True per window: a
few bool ops on output-sized arrays, skipped when one count shows that no window
has a tie), which was faster per training step than tracking the winning offset
in the forward.  Inside :func:`fundl.serial` a ReLU directly before a max pool runs
after it (:func:`fundl.plan.run_order`): the same results, and the pool then
sees the ReLU's input, whose windows rarely tie.
Average pooling counts only real cells: with padding, a window near the border
is averaged over the cells it covers inside the input (PyTorch's
``count_include_pad=False``, TensorFlow's ``"SAME"`` average pool).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Tuple, Union

import numpy as np

from ..checks import LayerError, as_shape, check_float_input, check_trailing_shape
from ..core import Layer, builder, stateless_layer
from .windows import (Padding, check_spatial_in_shape, int_tuple, offset_view, offsets,
                      pad_nhwc, parse_padding, window_geometry)

__all__ = ["max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "global_avg_pool"]


def _equal_or_both_nan(v: np.ndarray, y: np.ndarray, y_has_nan: bool) -> np.ndarray:
    """Bool ``v == y`` (broadcast), where NaN counts as equal to NaN.

    ``y`` is the window maximum; ``np.maximum`` propagates NaN, so a window with a
    NaN has ``y = NaN`` and its maxima are its NaN cells (as ``argmax`` sees it).
    ``y_has_nan`` says whether any window is NaN (one cheap reduction, done once).
    """
    hit = np.equal(v, y)
    if y_has_nan:  # rare
        hit |= np.isnan(v) & np.isnan(y)
    return hit


def _first_true(masks) -> None:
    """In place: keep each True of ``masks[k]`` only where no earlier mask is True.

    With ``masks[k] = (window cell k is a maximum)`` in row-major window order, this
    leaves exactly the first maximum of each window.  ``np.greater`` on bools is
    ``a and not b``.
    """
    if len(masks) < 2:
        return
    seen = np.logical_or(masks[0], masks[1])
    np.greater(masks[1], masks[0], out=masks[1])
    for k in range(2, len(masks)):
        np.greater(masks[k], seen, out=masks[k])
        if k + 1 < len(masks):
            np.logical_or(seen, masks[k], out=seen)


class _Windows(NamedTuple):
    """The window machinery one pool layer needs (built by :func:`_windows`)."""

    init: Callable
    prepare: Callable      # x -> (x4, xp, pads, out_hw, y_shape): x as NHWC, padded
    scatter: Callable      # (x4_shape, pads, out_hw, dtype, write) -> dx of x4_shape
    offs: list             # (k, di, dj) per window offset
    strides: Tuple[int, int]
    window2: Tuple[int, int]
    overlap: bool


def _windows(name: str, d: int, window, stride, padding, pad_value: float) -> _Windows:
    """A ``d``-D pool's window geometry (d = 1 or 2) on the 2-D offset views."""
    win_d = int_tuple(window, d, "window", name)
    str_d = win_d if stride is None else int_tuple(stride, d, "stride", name)
    pad_spec = parse_padding(padding, d, name)
    if not isinstance(pad_spec, str) and any(max(p) >= w for p, w in zip(pad_spec, win_d)):
        raise LayerError(f"padding {padding!r} must be smaller than the window {win_d} "
                         f"(a window of padding only has no value)", name)
    lift = (lambda t: (1,) + t) if d == 1 else (lambda t: t)
    window2, strides = lift(win_d), lift(str_d)
    offs = offsets(window2)
    overlap = any(s < w for s, w in zip(str_d, win_d))

    def geometry(spatial):
        return window_geometry(pad_spec, spatial, win_d, str_d, "window")

    def init(key, in_shape):
        in_shape = check_spatial_in_shape(in_shape, d)
        return {}, geometry(in_shape[:-1])[2] + in_shape[-1:]

    def prepare(x):
        check_float_input(x)
        check_trailing_shape(x, (None,) * (d + 1))
        pads, out_hw, out_d = geometry(x.shape[1:-1])
        x4 = x[:, None] if d == 1 else x
        xp = pad_nhwc(x4, pads, pad_value)
        return x4, xp, pads, out_hw, (x.shape[0],) + out_d + x.shape[-1:]

    def scatter(x4_shape, pads, out_hw, dtype, write):
        """dx of shape ``x4_shape``: ``write(k, view, accumulate)`` puts offset k's share
        into ``view`` (adding when windows overlap, else assigning: each cell once)."""
        n, h, w, c = x4_shape
        (t, b), (left, r) = pads
        hp, wp = h + t + b, w + left + r
        covered = (strides == window2 and out_hw[0] * strides[0] == hp
                   and out_hw[1] * strides[1] == wp)
        if overlap or not covered:
            dxp = np.zeros((n, hp, wp, c), dtype)
        else:
            dxp = np.empty((n, hp, wp, c), dtype)  # every cell is written exactly once
        for k, di, dj in offs:
            write(k, offset_view(dxp, di, dj, out_hw, strides), overlap)
        return dxp[:, t:t + h, left:left + w]

    return _Windows(init, prepare, scatter, offs, strides, window2, overlap)


def _max_pool(name: str, d: int, window, stride, padding) -> Layer:
    """A ``d``-D max pool: the max of the window's offset views; see the module docstring."""
    win = _windows(name, d, window, stride, padding, -np.inf)
    offs, strides, window2 = win.offs, win.strides, win.window2

    def forward(x):
        """``(y, x4, xp, pads, out_hw, y_shape)``: the max of the offset views."""
        x4, xp, pads, out_hw, y_shape = win.prepare(x)
        views = [offset_view(xp, di, dj, out_hw, strides) for _, di, dj in offs]
        y = np.maximum(views[0], views[1]) if len(views) > 1 else views[0].copy()
        for v in views[2:]:
            np.maximum(y, v, out=y)
        return y, x4, xp, pads, out_hw, y_shape

    def apply(params, x):
        y, *_, y_shape = forward(x)
        return y.reshape(y_shape)

    def vjp(params, x, need_dx=True):
        if not need_dx:
            return apply(params, x), lambda dy: ({}, None)
        # No winner bookkeeping in the forward: the pullback finds each window's
        # first maximum from (xp, y), which are kept anyway (xp is x when unpadded).
        y, x4, xp, pads, out_hw, y_shape = forward(x)
        x4_shape, x_shape = x4.shape, x.shape
        n, h, w, c = x4_shape
        (kh, kw), (oh, ow) = window2, out_hw
        # Non-overlapping windows that tile the whole unpadded input (max_pool2d(2)
        # on even sizes): x is (N, OH, kh, OW, kw, C) and one broadcast compare /
        # multiply covers every offset (the per-offset form was ~15% slower).
        tiled = (strides == window2 and not any(lo or hi for lo, hi in pads)
                 and oh * kh == h and ow * kw == w)

        def pullback(dy):
            dy4 = dy.reshape(y.shape)
            y_has_nan = bool(np.isnan(np.max(y, initial=-np.inf)))
            if tiled:
                x6 = xp.reshape(n, oh, kh, ow, kw, c)
                hit = _equal_or_both_nan(x6, y[:, :, None, :, None, :], y_has_nan)
                if np.count_nonzero(hit) > y.size:  # some window has tied maxima
                    _first_true([hit[:, :, i, :, j] for i in range(kh) for j in range(kw)])
                dx = np.empty(x4_shape, dy.dtype)
                dx6 = dx.reshape(n, oh, kh, ow, kw, c)
                # Broadcast dy, then multiply by the mask in place: both passes are
                # contiguous (multiplying the bool mask by the broadcast dy in one
                # go casts in small buffers and was ~20% slower).
                dx6[...] = dy4[:, :, None, :, None, :]
                dx6 *= hit
                return {}, dx.reshape(x_shape)
            hits = [_equal_or_both_nan(offset_view(xp, di, dj, out_hw, strides), y, y_has_nan)
                    for _, di, dj in offs]
            if xp is not x4 and np.min(y, initial=np.inf) == -np.inf:
                # A window whose real cells are all -inf ties with its (-inf) padding:
                # only real cells may win, or the gradient would go to the padding.
                real = pad_nhwc(np.ones((1, h, w, 1), bool), pads, False)
                for hit, (_, di, dj) in zip(hits, offs):
                    hit &= offset_view(real, di, dj, out_hw, strides)
            if sum(np.count_nonzero(hit) for hit in hits) > y.size:
                _first_true(hits)

            def write(k, view, accumulate):
                if accumulate:
                    view += dy4 * hits[k]
                else:
                    np.multiply(dy4, hits[k], out=view)

            dx = win.scatter(x4_shape, pads, out_hw, dy.dtype, write)
            return {}, dx.reshape(x_shape)

        return y.reshape(y_shape), pullback

    # The pullback returns a new dx; it keeps the output to find the winners, so y
    # is not declared fresh.
    return stateless_layer(name, win.init, apply, vjp, takes=("need_dx",),
                           fresh=("dx", "dparams"))


def _avg_pool(name: str, d: int, window, stride, padding) -> Layer:
    """A ``d``-D average pool over the real (non-padded) cells of each window."""
    win = _windows(name, d, window, stride, padding, 0.0)
    offs, strides = win.offs, win.strides

    def scale_of(x4_shape, pads, out_hw, dtype):
        """1 / (number of real cells) per output position: a scalar or (1, OH, OW, 1)."""
        if not any(lo or hi for lo, hi in pads):
            return dtype.type(1.0 / len(offs))
        real = pad_nhwc(np.ones((1,) + x4_shape[1:3] + (1,), dtype), pads)
        count = np.zeros((1,) + out_hw + (1,), dtype)
        for _, di, dj in offs:
            count += offset_view(real, di, dj, out_hw, strides)
        return np.reciprocal(count, out=count)

    def average(x):
        x4, xp, pads, out_hw, y_shape = win.prepare(x)
        y = offset_view(xp, 0, 0, out_hw, strides).copy()
        for _, di, dj in offs[1:]:
            y += offset_view(xp, di, dj, out_hw, strides)
        scale = scale_of(x4.shape, pads, out_hw, x.dtype)
        y *= scale
        return y.reshape(y_shape), (x4.shape, pads, out_hw, scale)

    def apply(params, x):
        return average(x)[0]

    def vjp(params, x, need_dx=True):
        y, (x4_shape, pads, out_hw, scale) = average(x)
        x_shape = x.shape

        def pullback(dy):
            if not need_dx:
                return {}, None
            g = dy.reshape((x4_shape[0],) + out_hw + x4_shape[-1:]) * scale

            def write(k, view, accumulate):
                if accumulate:
                    view += g
                else:
                    view[...] = g

            dx = win.scatter(x4_shape, pads, out_hw, dy.dtype, write)
            return {}, dx.reshape(x_shape)

        return y, pullback

    return stateless_layer(name, win.init, apply, vjp, takes=("need_dx",),
                           fresh=("y", "dx", "dparams"))


@builder
def max_pool1d(window: Union[int, Tuple[int]], stride: Union[int, Tuple[int], None] = None,
               padding: Padding = "valid") -> Layer:
    """Max over windows of ``window`` cells along the width of NWC data; no params.

    ``x`` is ``(batch, width, C)``, ``y`` is ``(batch, out_width, C)`` with
    ``out_width = (width + lo + hi - window) // stride + 1``; ``stride`` defaults to
    ``window``.  ``padding``: ``"valid"``, ``"same"`` (``ceil(width / stride)``
    outputs), an int or ``[(lo, hi)]``; padded cells are ``-inf`` and each pad must
    be smaller than the window.  Gradient: all of a window's ``dy`` goes to its
    first maximum (one cell per window, also on ties).
    """
    return _max_pool("max_pool1d", 1, window, stride, padding)


@builder
def max_pool2d(window: Union[int, Tuple[int, int]],
               stride: Union[int, Tuple[int, int], None] = None,
               padding: Padding = "valid") -> Layer:
    """Max over ``window`` (int or ``(h, w)``) patches of NHWC data; no params.

    ``x`` is ``(batch, H, W, C)``, ``y`` is ``(batch, OH, OW, C)`` with, per axis,
    ``out = (size + lo + hi - window) // stride + 1``; ``stride`` defaults to
    ``window``.  ``padding``: ``"valid"``, ``"same"`` (``ceil(size / stride)``
    outputs), an int or ``[(top, bottom), (left, right)]``; padded cells are
    ``-inf`` and each pad must be smaller than the window.  Gradient: all of a
    window's ``dy`` goes to its first maximum in row-major window order (one cell
    per window, also on ties).
    """
    return _max_pool("max_pool2d", 2, window, stride, padding)


@builder
def avg_pool1d(window: Union[int, Tuple[int]], stride: Union[int, Tuple[int], None] = None,
               padding: Padding = "valid") -> Layer:
    """Mean over windows of ``window`` cells along the width of NWC data; no params.

    Shapes and ``stride``/``padding`` as :func:`max_pool1d`.  With padding, each
    window is averaged over its real (non-padded) cells only.
    """
    return _avg_pool("avg_pool1d", 1, window, stride, padding)


@builder
def avg_pool2d(window: Union[int, Tuple[int, int]],
               stride: Union[int, Tuple[int, int], None] = None,
               padding: Padding = "valid") -> Layer:
    """Mean over ``window`` patches of NHWC data; no params.

    Shapes and ``stride``/``padding`` as :func:`max_pool2d`.  With padding, each
    window is averaged over its real (non-padded) cells only (PyTorch's
    ``count_include_pad=False``).
    """
    return _avg_pool("avg_pool2d", 2, window, stride, padding)


@builder
def global_avg_pool() -> Layer:
    """Mean over every spatial axis: ``(batch, *spatial, C) -> (batch, C)``; no params.

    Works for NWC and NHWC (any number of spatial axes >= 1).  Gradient:
    ``dy / prod(spatial)`` broadcast over the spatial axes.
    """

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        if len(in_shape) < 2 or min(in_shape) < 1:
            raise LayerError(f"expected a per-example input shape (*spatial, channels) "
                             f"with at least one spatial axis, got {in_shape}")
        return {}, in_shape[-1:]

    def check(x):
        check_float_input(x)
        if x.ndim < 3:
            raise LayerError(f"expected input of shape (batch, *spatial, channels) "
                             f"(rank >= 3), got shape {tuple(x.shape)}")

    def apply(params, x):
        check(x)   # C-ordered: numpy's summation order follows the layout
        return np.ascontiguousarray(x).mean(axis=tuple(range(1, x.ndim - 1)), dtype=x.dtype)

    def vjp(params, x, need_dx=True):
        check(x)
        x_shape = x.shape
        y = apply(params, x)

        def pullback(dy):
            if not need_dx:
                return {}, None
            dx = np.empty(x_shape, dy.dtype)
            count = int(np.prod(x_shape[1:-1]))
            dx[...] = (dy * dy.dtype.type(1.0 / count)).reshape(
                (x_shape[0],) + (1,) * (len(x_shape) - 2) + x_shape[-1:])
            return {}, dx

        return y, pullback

    return stateless_layer("global_avg_pool", init, apply, vjp, takes=("need_dx",),
                           fresh=("y", "dx", "dparams"))
