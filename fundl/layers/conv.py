"""Convolutions on NWC (1-D) and NHWC (2-D) data: im2col and one BLAS matmul.

Both layers share one 2-D core; ``conv1d`` is ``conv2d`` with a unit height.
The forward pads the input once, copies its windows (a strided
``sliding_window_view``, never a loop over examples or positions; for inputs of
up to four channels one row per kernel offset and channel, transposed) into an
im2col matrix ``cols`` of shape ``(N*OH*OW, kh*kw*c_in [+ 1])`` and multiplies it
by the kernel reshaped to ``(kh*kw*c_in, c_out)``.  With a bias, ``cols`` has a last
column of ones and the kernel matrix a last row ``b``: the matmul adds the bias,
and the backward's ``cols.T @ dy`` gives ``dW`` and, in its last row, ``db``
(a pass over ``y`` and one over ``dy`` saved).  The input gradient is one matmul ``dy @ W[i, j].T`` per kernel
offset (a Python loop over the ``kh*kw`` offsets), added into ``dx`` through a
strided slice.

With ``groups > 1`` (grouped / depthwise conv) the im2col is built per group,
``(G, N*OH*OW, kh*kw*C/G)``, and multiplied by the per-group kernels in one
batched ``np.matmul`` over the group axis (the bias added after); the input
gradient is one batched matmul and a strided add per kernel offset.

The window geometry (padding, output sizes, offset views) is in
:mod:`fundl.layers.windows`, shared with :mod:`fundl.layers.pool`.
"""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import random
from ..checks import (LayerError, check_float_input, check_param_dtype, check_trailing_shape,
                      int_arg)
from ..core import Layer, builder, stateless_layer
from ..initializers import Initializer, he_normal, zeros
from .windows import (Padding, Pads, check_spatial_in_shape, int_tuple, offset_view, offsets,
                      pad_nhwc, parse_padding, window_geometry)

__all__ = ["conv1d", "conv2d"]

# --- the 2-D core --------------------------------------------------------------------

#: Up to this many input channels, im2col is built transposed (see :func:`_im2col`).
FEW_CHANNELS = 4


def _im2col(xp: np.ndarray, kernel, dilation, out_hw, strides,
            ones_column: bool = False) -> np.ndarray:
    """``cols`` of shape (N*OH*OW, kh*kw*C), row-major over (n, oh, ow) x (i, j, c);
    with ``ones_column`` one more last column of ones (the bias's input).

    Many channels: one strided copy of a window view, so ``cols`` is written once,
    front to back with C-long pieces (not a copy per kernel offset, which sweeps
    ``cols`` kh*kw times).  At most :data:`FEW_CHANNELS` channels: those pieces are
    a few floats, so ``cols`` is built transposed instead, one contiguous row of
    N*OH*OW per kernel offset and channel, and returned as the (Fortran-ordered)
    transpose; both matmuls take it as it is.
    """
    n, c = xp.shape[0], xp.shape[3]
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, strides
    width = kh * kw * c
    total = width + int(ones_column)
    if c <= FEW_CHANNELS:
        cols_t = np.empty((total, n) + tuple(out_hw), xp.dtype)
        per_offset = cols_t[:width].reshape((kh * kw, c, n) + tuple(out_hw))
        for k, di, dj in offsets(kernel, dilation):
            per_offset[k] = np.moveaxis(offset_view(xp, di, dj, out_hw, strides), -1, 0)
        if ones_column:
            cols_t[width] = 1.0
        return cols_t.reshape(total, -1).T
    extent = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    win = sliding_window_view(xp, extent, axis=(1, 2))  # (N, ., ., C, eh, ew)
    win = win[:, ::sh, ::sw, :, ::dh, ::dw][:, :out_hw[0], :out_hw[1]]
    cols = np.empty((n, out_hw[0], out_hw[1], total), xp.dtype)
    patches = cols[..., :width].reshape(n, out_hw[0], out_hw[1], kh, kw, c)  # a view
    patches[...] = win.transpose(0, 1, 2, 4, 5, 3)
    if ones_column:
        cols[..., width] = 1.0
    return cols.reshape(-1, total)


def _in_bounds(size: int, pad_lo: int, offset: int, stride: int, out: int):
    """Outputs ``o`` whose input ``o * stride + offset - pad_lo`` lies in ``[0, size)``:
    ``(output slice, input slice)``, or ``None`` if there are none."""
    o0 = max(0, -(-(pad_lo - offset) // stride))
    o1 = min(out, (size - 1 + pad_lo - offset) // stride + 1)
    if o0 >= o1:
        return None
    i0 = o0 * stride + offset - pad_lo
    return slice(o0, o1), slice(i0, i0 + stride * (o1 - o0 - 1) + 1, stride)


def _input_grad(dy2: np.ndarray, w: np.ndarray, x_shape, pads: Pads, kernel, dilation,
                out_hw, strides) -> np.ndarray:
    """dx (N, H, W, C) from dy2 (N*OH*OW, c_out): the adjoint of pad + im2col + matmul.

    One matmul per kernel offset, ``dy2 @ W[i, j].T`` (N*OH*OW, C), into a small
    reused buffer whose outputs with a real input cell are added into ``dx`` through
    a strided slice (no padded buffer).  An offset that reaches every input cell
    from every output (the centre of an odd kernel with stride 1 and "same"
    padding) is multiplied straight into ``dx``, so ``dx`` needs no zeroing.  (One
    big ``dcols = dy2 @ W.T``, kh*kw times the size of ``dx``, misses the cache on
    every read of it for the adds.)
    """
    n, h, wd, c = x_shape
    (oh, ow), (sh, sw) = out_hw, strides
    wk = w.reshape(kernel[0] * kernel[1], c, -1)           # (kh*kw, C, c_out)
    parts = []
    for k, di, dj in offsets(kernel, dilation):
        rows, cols = _in_bounds(h, pads[0][0], di, sh, oh), _in_bounds(wd, pads[1][0], dj, sw, ow)
        if rows is not None and cols is not None:
            parts.append((k, rows, cols))
    every = ((slice(0, oh), slice(0, h, 1)), (slice(0, ow), slice(0, wd, 1)))
    first = next((p for p in parts if (oh, ow) == (h, wd) and p[1:] == every), None)
    if first is None:
        dx = np.zeros(x_shape, dy2.dtype)
    else:  # this offset maps the outputs one-to-one onto the input cells
        parts.remove(first)
        dx = np.empty(x_shape, dy2.dtype)
        np.matmul(dy2, wk[first[0]].T, out=dx.reshape(-1, c))
    buf = np.empty((n, oh, ow, c), dy2.dtype)
    for k, (o_r, i_r), (o_c, i_c) in parts:
        np.matmul(dy2, wk[k].T, out=buf.reshape(-1, c))
        dx[:, i_r, i_c] += buf[:, o_r, o_c]
    return dx


def _grouped_cols(xp: np.ndarray, groups: int, kernel, dilation, out_hw, strides) -> np.ndarray:
    """``cols`` of shape (G, N*OH*OW, kh*kw*C/G): group ``g``'s im2col matrix, row-major
    over (n, oh, ow) x (i, j, c within the group) -- one strided copy of a window view."""
    n, c = xp.shape[0], xp.shape[3]
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, strides
    oh, ow = out_hw
    extent = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    win = sliding_window_view(xp, extent, axis=(1, 2))  # (N, ., ., C, eh, ew)
    win = win[:, ::sh, ::sw, :, ::dh, ::dw][:, :oh, :ow]
    win = win.reshape(n, oh, ow, groups, c // groups, kh, kw)
    cols = np.empty((groups, n, oh, ow, kh, kw, c // groups), xp.dtype)
    cols[...] = win.transpose(3, 0, 1, 2, 5, 6, 4)
    return cols.reshape(groups, n * oh * ow, kh * kw * (c // groups))  # no -1: n may be 0


def _grouped_input_grad(dcols: np.ndarray, x_shape, pads: Pads, kernel, dilation, out_hw,
                        strides) -> np.ndarray:
    """dx (N, H, W, C) from ``dcols`` (G, N*OH*OW, kh*kw*C/G): the adjoint of pad +
    :func:`_grouped_cols` (col2im: one strided add per kernel offset, over every group)."""
    n, h, wd, c = x_shape
    (kh, kw), (oh, ow) = kernel, out_hw
    groups = dcols.shape[0]
    per = dcols.reshape(groups, n, oh, ow, kh * kw, c // groups)
    dx = np.zeros(x_shape, dcols.dtype)
    dx5 = dx.reshape(n, h, wd, groups, c // groups)  # a view
    for k, di, dj in offsets(kernel, dilation):
        rows = _in_bounds(h, pads[0][0], di, strides[0], oh)
        cols = _in_bounds(wd, pads[1][0], dj, strides[1], ow)
        if rows is None or cols is None:
            continue
        (o_r, i_r), (o_c, i_c) = rows, cols
        dx5[:, i_r, i_c] += per[:, :, o_r, o_c, k].transpose(1, 2, 3, 0, 4)
    return dx


def _kernel_params(key: Any, w_shape: Tuple[int, ...], use_bias: bool, w_init: Initializer,
                   b_init: Initializer, dtype: Any) -> dict:
    """A convolution's params: ``w`` of ``w_shape`` (``(*kernel, c_in, c_out)``) and ``b``."""
    k_w, k_b = random.split(key)
    params = {"w": w_init(k_w, w_shape, dtype)}
    if use_bias:
        params["b"] = b_init(k_b, (w_shape[-1],), dtype)
    return params


def _geometry(name: str, d: int, kernel_size, stride, padding, dilation):
    """A ``d``-D conv's checked geometry, and its 2-D view (a 1-D conv has a unit height):
    ``(k_d, s_d, dil_d, pad_spec, kernel, strides, dil, extents_d)``."""
    k_d = int_tuple(kernel_size, d, "kernel_size", name)
    s_d = int_tuple(stride, d, "stride", name)
    dil_d = int_tuple(dilation, d, "dilation", name)
    pad_spec = parse_padding(padding, d, name)
    lift = (lambda t: (1,) + t) if d == 1 else (lambda t: t)
    extents_d = tuple((k - 1) * q + 1 for k, q in zip(k_d, dil_d))
    return k_d, s_d, dil_d, pad_spec, lift(k_d), lift(s_d), lift(dil_d), extents_d


def _conv(name: str, d: int, features: int, kernel_size, stride, padding, dilation,
          use_bias: bool, w_init: Initializer, b_init: Initializer, dtype,
          groups: int = 1) -> Layer:
    """A ``d``-D convolution (d = 1 or 2) built on the 2-D core."""
    features = int_arg(name, "features", features)
    groups = int_arg(name, "groups", groups)
    if features % groups:
        raise LayerError(f"features ({features}) must be divisible by groups ({groups})", name)
    if groups > 1:
        return _grouped_conv(name, d, features, kernel_size, stride, padding, dilation,
                             use_bias, w_init, b_init, dtype, groups)
    k_d, s_d, dil_d, pad_spec, kernel, strides, dil, extents_d = _geometry(
        name, d, kernel_size, stride, padding, dilation)
    dtype = np.dtype(dtype)

    def geometry(spatial: Tuple[int, ...]):
        return window_geometry(pad_spec, spatial, extents_d, s_d, "kernel (with dilation)")

    def init(key, in_shape):
        in_shape = check_spatial_in_shape(in_shape, d)
        _, _, out_d = geometry(in_shape[:-1])
        return (_kernel_params(key, k_d + (in_shape[-1], features), use_bias, w_init, b_init,
                               dtype), out_d + (features,))

    def forward(params, x):
        """Checks ``x`` and returns ``(y, cols, geometry)``."""
        check_float_input(x)
        w = params["w"]
        check_trailing_shape(x, (None,) * d + (w.shape[-2],))
        check_param_dtype(x, w)
        pads, out_hw, out_d = geometry(x.shape[1:-1])
        x4 = x[:, None] if d == 1 else x
        xp = pad_nhwc(x4, pads)
        cols = _im2col(xp, kernel, dil, out_hw, strides, ones_column=use_bias)
        w2 = w.reshape(-1, features)
        if use_bias:
            w2 = np.concatenate([w2, params["b"].reshape(1, features)], dtype=w2.dtype)
        y = cols @ w2
        return y.reshape((x.shape[0],) + out_d + (features,)), cols, (x4.shape, pads, out_hw)

    def apply(params, x):
        return forward(params, x)[0]

    def vjp(params, x, need_dx=True):
        y, cols, (x4_shape, pads, out_hw) = forward(params, x)
        w = params["w"] if need_dx else None
        x_shape = x.shape

        def pullback(dy):
            dy2 = dy.reshape(-1, features)
            g = cols.T @ dy2  # (kh*kw*c_in [+ 1 bias row], features)
            grads = {"w": (g[:-1] if use_bias else g).reshape(k_d + (x_shape[-1], features))}
            if use_bias:
                grads["b"] = g[-1].copy()  # its own array, not a view into dW's buffer
            if not need_dx:
                return grads, None
            dx = _input_grad(dy2, w, x4_shape, pads, kernel, dil, out_hw, strides)
            return grads, dx.reshape(x_shape)

        return y, pullback

    # y, dx and the gradients are new arrays nobody keeps (the pullback keeps cols):
    # they may be donated.
    return stateless_layer(name, init, apply, vjp, takes=("need_dx",),
                           fresh=("y", "dx", "dparams"))


def _grouped_conv(name: str, d: int, features: int, kernel_size, stride, padding, dilation,
                  use_bias: bool, w_init: Initializer, b_init: Initializer, dtype,
                  groups: int) -> Layer:
    """``groups > 1``: im2col per group and one batched matmul over the group axis."""
    k_d, s_d, dil_d, pad_spec, kernel, strides, dil, extents_d = _geometry(
        name, d, kernel_size, stride, padding, dilation)
    dtype = np.dtype(dtype)
    f_g = features // groups

    def geometry(spatial: Tuple[int, ...]):
        return window_geometry(pad_spec, spatial, extents_d, s_d, "kernel (with dilation)")

    def check_channels(c: int):
        if c % groups:
            raise LayerError(f"input channels ({c}) must be divisible by groups ({groups})")

    def init(key, in_shape):
        in_shape = check_spatial_in_shape(in_shape, d)
        check_channels(in_shape[-1])
        _, _, out_d = geometry(in_shape[:-1])
        return (_kernel_params(key, k_d + (in_shape[-1] // groups, features), use_bias, w_init,
                               b_init, dtype), out_d + (features,))

    def forward(params, x):
        """Checks ``x`` and returns ``(y, cols, w_g, geometry)``."""
        check_float_input(x)
        w = params["w"]
        check_trailing_shape(x, (None,) * d + (w.shape[-2] * groups,))
        check_param_dtype(x, w)
        pads, out_hw, out_d = geometry(x.shape[1:-1])
        x4 = x[:, None] if d == 1 else x
        cols = _grouped_cols(pad_nhwc(x4, pads), groups, kernel, dil, out_hw, strides)
        w_g = w.reshape(-1, groups, f_g).transpose(1, 0, 2)   # (G, kh*kw*C/G, F/G)
        y_g = np.matmul(cols, w_g)                             # (G, M, F/G)
        y = y_g.transpose(1, 0, 2).reshape((x.shape[0],) + out_d + (features,))  # a copy
        if use_bias:
            y += params["b"]
        return y, cols, w_g, (x4.shape, pads, out_hw)

    def apply(params, x):
        return forward(params, x)[0]

    def vjp(params, x, need_dx=True):
        y, cols, w_g, (x4_shape, pads, out_hw) = forward(params, x)
        x_shape = x.shape

        def pullback(dy):
            # a C-ordered dy: the batched matmuls then run the same kernels for any layout
            dy = np.ascontiguousarray(dy)
            dy_g = dy.reshape(cols.shape[1], groups, f_g).transpose(1, 0, 2)  # (G, M, F/G)
            g = np.matmul(cols.transpose(0, 2, 1), dy_g)           # (G, kh*kw*C/G, F/G)
            grads = {"w": g.transpose(1, 0, 2).reshape(k_d + (x_shape[-1] // groups, features))}
            if use_bias:
                grads["b"] = dy.reshape(cols.shape[1], features).sum(axis=0)
            if not need_dx:
                return grads, None
            dcols = np.matmul(dy_g, w_g.transpose(0, 2, 1))       # (G, M, kh*kw*C/G)
            dx = _grouped_input_grad(dcols, x4_shape, pads, kernel, dil, out_hw, strides)
            return grads, dx.reshape(x_shape)

        return y, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",),
                           fresh=("y", "dx", "dparams"))


@builder
def conv1d(features: int, kernel_size: Union[int, Tuple[int]], *,
           stride: Union[int, Tuple[int]] = 1, padding: Padding = "valid",
           dilation: Union[int, Tuple[int]] = 1, use_bias: bool = True,
           w_init: Initializer = he_normal, b_init: Initializer = zeros,
           dtype: Any = np.float32, groups: int = 1) -> Layer:
    """1-D convolution (cross-correlation, as in every DL library) on NWC data.

    Shapes: ``x`` is ``(batch, width, c_in)``, ``y`` is ``(batch, out_width, features)``
    with ``out_width = (width + lo + hi - (k - 1) * dilation - 1) // stride + 1``.
    Params: ``w`` of shape ``(k, c_in, features)`` initialised by ``w_init``
    (default He-normal, ``N(0, 2 / fan_in)`` with ``fan_in = k * c_in``) and
    ``b`` of shape ``(features,)`` (default zeros; absent if ``use_bias=False``),
    both of ``dtype``.  ``padding`` is ``"valid"``, ``"same"`` (``ceil(width / stride)``
    outputs; an odd total pad puts the extra cell at the end, as TF/JAX),
    an int (both sides) or ``[(lo, hi)]``.

    Groups (PyTorch's ``Conv1d(groups=...)``): ``c_in`` and ``features`` divisible by
    ``groups``; ``w`` is ``(k, c_in // groups, features)`` and output channel ``f``
    sees only input channels ``g * c_in/groups ... (g + 1) * c_in/groups - 1`` of its
    group ``g = f // (features / groups)``; ``groups == c_in`` is a depthwise conv.
    Same numbers as ``torch.nn.Conv1d`` on NCW data, whose weight ``(out, in/groups, k)``
    is ``w.transpose(2, 1, 0)`` (and ``padding`` int = torch's symmetric padding).

    Memory: ``vjp`` keeps the im2col matrix for dW, ``k`` times the (padded) input.
    """
    return _conv("conv1d", 1, features, kernel_size, stride, padding, dilation,
                 use_bias, w_init, b_init, dtype, groups)


@builder
def conv2d(features: int, kernel_size: Union[int, Tuple[int, int]], *,
           stride: Union[int, Tuple[int, int]] = 1, padding: Padding = "valid",
           dilation: Union[int, Tuple[int, int]] = 1, use_bias: bool = True,
           w_init: Initializer = he_normal, b_init: Initializer = zeros,
           dtype: Any = np.float32, groups: int = 1) -> Layer:
    """2-D convolution (cross-correlation, as in every DL library) on NHWC data.

    Shapes: ``x`` is ``(batch, height, width, c_in)``, ``y`` is
    ``(batch, out_h, out_w, features)``, per axis
    ``out = (size + lo + hi - (k - 1) * dilation - 1) // stride + 1``.
    ``kernel_size``, ``stride`` and ``dilation`` are an int or an ``(h, w)`` pair.
    Params: ``w`` of shape ``(kh, kw, c_in, features)`` initialised by ``w_init``
    (default He-normal, ``N(0, 2 / fan_in)`` with ``fan_in = kh * kw * c_in``) and
    ``b`` of shape ``(features,)`` (default zeros; absent if ``use_bias=False``),
    both of ``dtype``.  ``padding`` is ``"valid"``, ``"same"`` (``ceil(size / stride)``
    outputs; an odd total pad puts the extra cell at the end, as TF/JAX),
    an int (every side) or ``[(top, bottom), (left, right)]``.

    Groups (grouped / depthwise convolution, PyTorch's ``Conv2d(groups=...)``):
    ``c_in`` and ``features`` must be divisible by ``groups``; ``w`` is then
    ``(kh, kw, c_in // groups, features)`` (as TF/JAX store it) and output channel
    ``f`` sees only the input channels of its group ``g = f // (features / groups)``;
    ``groups == c_in`` is a depthwise conv (``features = multiplier * c_in``).  It is
    one im2col per group and one batched matmul over the group axis (no loop over
    channels); ``groups=1`` is the plain path below.  Same numbers as
    ``torch.nn.Conv2d`` on NCHW data, whose weight ``(out, in/groups, kh, kw)`` is
    ``w.transpose(3, 2, 0, 1)`` (``w = torch_w.permute(2, 3, 1, 0)``).

    Memory: ``vjp`` keeps the im2col matrix for dW, ``kh * kw`` times the size of
    the (padded) input, plus a column of ones with a bias (14 MB for
    64 x 14 x 14 x 32 and a 3x3 kernel, float32), which is faster than
    recomputing it in the backward.
    """
    return _conv("conv2d", 2, features, kernel_size, stride, padding, dilation,
                 use_bias, w_init, b_init, dtype, groups)
