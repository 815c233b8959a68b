"""Transposed convolutions on NWC (1-D) and NHWC (2-D) data (PyTorch's ``ConvTranspose``).

``conv_transpose2d`` is the gradient of :func:`fundl.conv2d` with respect to its
input, as a layer: every input cell ``x[n, h, w]`` adds ``x[n, h, w] @ W[i, j]``
into the output cell ``(h * stride - pad + i * dilation, w * stride - pad + j * dilation)``.
The forward is one matmul per kernel offset scattered through strided slices
into the output (the col2im of :mod:`fundl.layers.conv`); the backward is a
plain strided convolution of ``dy``: one im2col of ``dy`` (``kh*kw*features``
columns per input cell) and two matmuls, for ``dx`` and ``dW``.
``conv_transpose1d`` is the 2-D core with a unit height.
"""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np

from ..checks import (LayerError, check_float_input, check_param_dtype, check_trailing_shape,
                      int_arg)
from ..core import Layer, builder, stateless_layer
from ..initializers import Initializer, he_normal, zeros
from .conv import _im2col, _input_grad, _kernel_params
from .windows import check_spatial_in_shape, int_tuple, pad_nhwc

__all__ = ["conv_transpose1d", "conv_transpose2d"]

PadSpec = Union[str, int, Tuple[int, ...]]


def _parse_padding(padding: PadSpec, d: int, kernel, strides, dilation, output_padding,
                   name: str) -> Tuple[int, ...]:
    """Symmetric pads per axis from ``"valid"`` (0), ``"same"``, an int or ``d`` ints."""
    if isinstance(padding, str) and padding.lower() == "valid":
        return (0,) * d
    if isinstance(padding, str) and padding.lower() == "same":
        pads = []
        for k, s, q, op in zip(kernel, strides, dilation, output_padding):
            twice = q * (k - 1) + 1 - s   # 2 * pad for out = in * stride, output_padding 0
            if twice < 0 or twice % 2 or op:
                raise LayerError(
                    f"padding='same' (out = in * stride) needs dilation * (kernel - 1) + 1 - "
                    f"stride even and >= 0 and output_padding 0, got kernel {tuple(kernel)}, "
                    f"stride {tuple(strides)}, dilation {tuple(dilation)}, output_padding "
                    f"{tuple(output_padding)}; give the padding as ints instead", name)
            pads.append(twice // 2)
        return tuple(pads)
    if isinstance(padding, str):
        raise LayerError(f"padding must be 'valid', 'same', an int >= 0 or {d} ints >= 0 "
                         f"(symmetric, as in torch), got {padding!r}", name)
    return int_tuple(padding, d, "padding (symmetric, as in torch; or 'valid', 'same')",
                     name, minimum=0)


def _geometry(name: str, d: int, kernel_size, stride, padding, output_padding, dilation):
    """A ``d``-D transposed conv's checked geometry: ``(k_d, s_d, dil_d, op_d, p_d)``, the
    kernel, strides, dilations, output paddings and symmetric pads per axis."""
    k_d = int_tuple(kernel_size, d, "kernel_size", name)
    s_d = int_tuple(stride, d, "stride", name)
    dil_d = int_tuple(dilation, d, "dilation", name)
    op_d = int_tuple(output_padding, d, "output_padding", name, minimum=0)
    if any(not op < max(s, q) for op, s, q in zip(op_d, s_d, dil_d)):
        raise LayerError(f"output_padding must be an int or {d} ints, each >= 0 and smaller "
                         f"than the stride or the dilation (stride {s_d}, dilation {dil_d}), "
                         f"got {output_padding!r}", name)
    return k_d, s_d, dil_d, op_d, _parse_padding(padding, d, k_d, s_d, dil_d, op_d, name)


def _conv_transpose(name: str, d: int, features: int, kernel_size, stride, padding,
                    output_padding, dilation, use_bias: bool, w_init: Initializer,
                    b_init: Initializer, dtype) -> Layer:
    features = int_arg(name, "features", features)
    k_d, s_d, dil_d, op_d, p_d = _geometry(name, d, kernel_size, stride, padding,
                                           output_padding, dilation)
    dtype = np.dtype(dtype)
    lift = (lambda t: (1,) + t) if d == 1 else (lambda t: t)
    kernel, strides, dil = lift(k_d), lift(s_d), lift(dil_d)
    pad = (0,) * (2 - d) + p_d  # a unit height has no padding

    def out_sizes(spatial):
        """Output spatial sizes (the data's own axes); LayerError if any is < 1."""
        out = tuple((n - 1) * s - 2 * p + q * (k - 1) + op + 1
                    for n, s, p, q, k, op in zip(spatial, s_d, p_d, dil_d, k_d, op_d))
        if min(out) < 1:
            raise LayerError(f"input spatial shape {tuple(spatial)} gives output size {out} "
                             f"(out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1)"
                             f" + output_padding + 1); reduce the padding {p_d}")
        return out

    def init(key, in_shape):
        in_shape = check_spatial_in_shape(in_shape, d)
        out_d = out_sizes(in_shape[:-1])
        return (_kernel_params(key, k_d + (in_shape[-1], features), use_bias, w_init, b_init,
                               dtype), out_d + (features,))

    def check(params, x):
        check_float_input(x)
        w = params["w"]
        check_trailing_shape(x, (None,) * d + (w.shape[-2],))
        check_param_dtype(x, w)
        return out_sizes(x.shape[1:-1])

    def forward(params, x, out_d):
        x4 = x[:, None] if d == 1 else x
        x4 = np.ascontiguousarray(x4)   # the matmuls then give the same bits for any layout
        n, h, wd, c = x4.shape
        out_hw = (1,) + out_d if d == 1 else out_d
        # y is conv2d's input gradient for "dy" = x and a kernel with in/out swapped
        w_swapped = params["w"].reshape(kernel + (c, features)).swapaxes(2, 3)
        pads = ((pad[0], 0), (pad[1], 0))  # only the leading pads are read
        y = _input_grad(x4.reshape(-1, c), w_swapped, (n,) + out_hw + (features,), pads,
                        kernel, dil, (h, wd), strides)
        if use_bias:
            y += params["b"]
        return y.reshape((x.shape[0],) + out_d + (features,))

    def apply(params, x):
        return forward(params, x, check(params, x))

    def vjp(params, x, need_dx=True):
        out_d = check(params, x)
        x = np.ascontiguousarray(x)     # kept for dW in the layout the forward used
        y = forward(params, x, out_d)
        w, x_shape = params["w"], x.shape

        def pullback(dy):
            dy = np.ascontiguousarray(dy)
            dy4 = dy[:, None] if d == 1 else dy
            n, h, wd, c = (x_shape[0], 1) + x_shape[1:] if d == 1 else x_shape
            # dy padded so that input cell (h, w) sees the window starting at (h*s, w*s)
            hi = tuple(max(0, (m - 1) * s + q * (k - 1) + 1 - p - o)
                       for m, s, q, k, p, o in zip((h, wd), strides, dil, kernel, pad,
                                                   dy4.shape[1:3]))
            dyp = pad_nhwc(dy4, ((pad[0], hi[0]), (pad[1], hi[1])))
            dcols = _im2col(dyp, kernel, dil, (h, wd), strides)  # (N*H*W, kh*kw*features)
            gw = x.reshape(-1, c).T @ dcols                         # (c_in, kh*kw*features)
            grads = {"w": gw.reshape((c,) + kernel + (features,))
                     .transpose(1, 2, 0, 3).reshape(k_d + (c, features))}
            if use_bias:
                grads["b"] = dy.reshape(-1, features).sum(axis=0)
            if not need_dx:
                return grads, None
            w2 = w.reshape(kernel + (c, features)).transpose(0, 1, 3, 2).reshape(-1, c)
            return grads, (dcols @ w2).reshape(x_shape)

        return y, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",),
                           fresh=("y", "dx", "dparams"))


@builder
def conv_transpose1d(features: int, kernel_size: Union[int, Tuple[int]], *,
                     stride: Union[int, Tuple[int]] = 1, padding: PadSpec = 0,
                     output_padding: Union[int, Tuple[int]] = 0,
                     dilation: Union[int, Tuple[int]] = 1, use_bias: bool = True,
                     w_init: Initializer = he_normal, b_init: Initializer = zeros,
                     dtype: Any = np.float32) -> Layer:
    """1-D transposed convolution on NWC data (PyTorch's ``ConvTranspose1d``, groups=1).

    Shapes: ``x`` is ``(batch, width, c_in)``, ``y`` is ``(batch, out_width, features)``
    with ``out_width = (width - 1) * stride - 2 * padding + dilation * (k - 1)
    + output_padding + 1``, exactly as torch.  Params: ``w`` ``(k, c_in, features)``
    (default He-normal with ``fan_in = k * c_in``; torch's own default init differs) and
    ``b`` ``(features,)`` (zeros; absent if ``use_bias=False``).  Torch's weight
    ``(in, out, k)`` is ``w.transpose(1, 2, 0)`` (``w = torch_w.permute(2, 0, 1)``).
    ``padding``, ``output_padding`` and the rest as in :func:`conv_transpose2d`.
    """
    return _conv_transpose("conv_transpose1d", 1, features, kernel_size, stride, padding,
                           output_padding, dilation, use_bias, w_init, b_init, dtype)


@builder
def conv_transpose2d(features: int, kernel_size: Union[int, Tuple[int, int]], *,
                     stride: Union[int, Tuple[int, int]] = 1, padding: PadSpec = 0,
                     output_padding: Union[int, Tuple[int, int]] = 0,
                     dilation: Union[int, Tuple[int, int]] = 1, use_bias: bool = True,
                     w_init: Initializer = he_normal, b_init: Initializer = zeros,
                     dtype: Any = np.float32) -> Layer:
    """2-D transposed convolution on NHWC data (PyTorch's ``ConvTranspose2d``, groups=1).

    The gradient of :func:`fundl.conv2d` with respect to its input, as a layer
    (sometimes called a "deconvolution").  Shapes: ``x`` is
    ``(batch, height, width, c_in)``, ``y`` is ``(batch, out_h, out_w, features)``, per axis
    ``out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``
    -- exactly torch's formula, so the size is never ambiguous.  ``kernel_size``,
    ``stride``, ``dilation``, ``output_padding`` are an int or an ``(h, w)`` pair.

    ``padding`` is symmetric per axis as in torch: an int or ``(ph, pw)``;
    ``"valid"`` means 0; ``"same"`` means ``out = in * stride`` and is accepted only when
    that fixes the padding: ``dilation * (kernel - 1) + 1 - stride`` even and >= 0 and
    ``output_padding == 0`` (e.g. kernel 3 stride 1, kernel 4 stride 2 -> padding 1);
    otherwise a :class:`LayerError` asks for explicit ints.  ``output_padding`` (added at
    the bottom/right, 0 <= it < max(stride, dilation) as torch requires) picks among the
    input sizes a strided conv2d maps to the same output size.

    Params: ``w`` of shape ``(kh, kw, c_in, features)`` (default He-normal with
    ``fan_in = kh * kw * c_in``; torch's default init differs) and ``b`` ``(features,)``
    (zeros; absent if ``use_bias=False``).  Torch's ``ConvTranspose2d`` weight
    ``(in, out, kh, kw)`` is ``w.transpose(2, 3, 0, 1)`` (``w = torch_w.permute(2, 3, 0, 1)``);
    on NCHW data it gives the same numbers.
    """
    return _conv_transpose("conv_transpose2d", 2, features, kernel_size, stride, padding,
                           output_padding, dilation, use_bias, w_init, b_init, dtype)
