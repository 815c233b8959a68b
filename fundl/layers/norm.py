"""Normalisation layers: ``batch_norm`` (with running statistics), ``layer_norm``,
``group_norm``, ``instance_norm`` and ``rms_norm``.

All but ``rms_norm`` normalise ``xhat = (x - mean) / sqrt(var + eps)`` (biased variance) and
then apply ``y = xhat * scale + bias``.  With ``g = dy * scale`` the full
gradient through the mean and variance is the standard compact formula

    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)

with the means taken over the normalised axes; ``dscale = sum(dy * xhat)`` and
``dbias = sum(dy)`` over every axis but the feature axis.  ``rms_norm`` divides
by the root mean square only, ``xhat = x / sqrt(mean(x**2) + eps)``, and its
gradient lacks the ``mean(g)`` term: ``dx = (g - xhat * mean(g * xhat)) / rms``.

The sums run over C-ordered arrays (``np.ascontiguousarray``: no copy for the usual
C-contiguous input), so the results are bit-identical for inputs and ``dy`` in any memory
layout (numpy's and BLAS's summation order follows the layout).
"""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

from .. import kernels
from ..checks import (LayerError, as_shape, check_float_input, check_param_dtype, int_arg)
from ..core import Layer, Traits, builder, stateless_layer

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"]


def _feature_axis(axis: int, ndim: int) -> int:
    ax = axis + ndim if axis < 0 else axis
    if not 1 <= ax < ndim:
        raise LayerError(f"feature axis {axis} is not a non-batch axis of an input of rank {ndim}")
    return ax


def _channel_dot(a, b, ax, red):
    """``sum(a * b)`` over the axes ``red`` (all but ``ax``): shape ``(C,)``.

    For the last axis an einsum on the 2-D view: no full-size temporary.
    """
    if ax == a.ndim - 1:
        c = a.shape[-1]
        return np.einsum("ij,ij->j", a.reshape(-1, c), b.reshape(-1, c))
    return np.sum(a * b, axis=red)


def _channel_sum(a, ax, red):
    """``sum(a)`` over the axes ``red`` (all but ``ax``): shape ``(C,)``; for the last axis
    :func:`fundl.kernels.column_sums` (a BLAS gemv)."""
    if ax == a.ndim - 1:
        return kernels.column_sums(a)
    return np.sum(a, axis=red)


def _row_mean(a):
    """The mean over the last axis, keeping it (size 1): ``a @ (ones / F)``, a BLAS gemv
    (faster than ``a.mean(-1)`` on short rows)."""
    f = a.shape[-1]
    return (a @ np.full(f, 1.0 / f, a.dtype))[..., None]


def _row_dot(a, b):
    """``sum(a * b)`` over the last axis, keeping it (size 1)."""
    return np.einsum("...i,...i->...", a, b)[..., None]


def _scale_shift(xhat, params, bshape):
    """``xhat * scale + bias`` (each if present) as a new array, or ``xhat`` itself if neither."""
    if "scale" in params:
        y = xhat * params["scale"].reshape(bshape)
        if "bias" in params:
            y += params["bias"].reshape(bshape)
        return y
    if "bias" in params:
        return xhat + params["bias"].reshape(bshape)
    return xhat


def _check_batch_norm_input(axis: int, params: Any, state: Any, x: Any
                            ) -> Tuple[int, Tuple[int, ...], Tuple[int, ...]]:
    """``(feature axis, reduce axes, broadcast shape)`` of a batch norm's input, checked
    against its state and params (also :func:`fundl.distributed.sync_batch_norm`'s check)."""
    check_float_input(x)
    ax = _feature_axis(axis, x.ndim)
    c = state["mean"].shape[0]
    if x.shape[ax] != c:
        want = ["?"] * x.ndim
        want[0], want[ax] = "batch", str(c)
        raise LayerError(f"expected input of shape ({', '.join(want)}), "
                         f"got shape {tuple(x.shape)}")
    check_param_dtype(x, state["mean"])
    for p in params.values():
        check_param_dtype(x, p)
    reduce_axes = tuple(i for i in range(x.ndim) if i != ax)
    bshape = tuple(c if i == ax else 1 for i in range(x.ndim))
    return ax, reduce_axes, bshape


def _frozen_affine(params: Any, state: Any, eps: float, use_scale: bool, use_bias: bool
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, inv)``, the ``(C,)`` arrays of batch norm's eval mode ``y = x * a + b`` with the
    running statistics: ``inv = 1 / sqrt(var + eps)``, ``a = scale * inv``, ``b = bias - mean *
    a``, in the params' dtype (``eps`` a Python float, never a numpy scalar that would promote
    them).  Also the ONNX export's folded constants, so the two agree to the bit."""
    inv = state["var"] + float(eps)
    np.sqrt(inv, out=inv)
    np.divide(1.0, inv, out=inv)
    a = inv * params["scale"] if use_scale else inv
    b = state["mean"] * a
    np.negative(b, out=b)
    if use_bias:
        b += params["bias"]
    return a, b, inv


@builder
def batch_norm(axis: int = -1, momentum: float = 0.99, eps: float = 1e-5, use_scale: bool = True,
               use_bias: bool = True, dtype: Any = np.float32, name: str = "batch_norm") -> Layer:
    """Batch normalisation over every axis except the feature ``axis`` (a data axis; default last).

    Works for ``(N, C)``, ``(N, W, C)``, ``(N, H, W, C)``...; output shape = input shape.
    Params: ``scale`` (ones) and ``bias`` (zeros) of shape ``(C,)`` (each only if
    enabled).  State: running ``mean`` (zeros) and ``var`` (ones) of shape ``(C,)``.
    All of ``dtype`` (float32).

    Training (``vjp`` and ``apply(train=True)``) normalises with the batch mean and
    biased batch variance; ``vjp`` returns the new state
    ``momentum * old + (1 - momentum) * batch``, where the running ``var`` is
    updated with the UNBIASED batch variance ``var * M / (M - 1)`` (``M`` values per
    channel; the biased one if ``M == 1``), as in PyTorch.  Eval mode
    (``apply(train=False)``, ``vjp(train=False)``) is the affine map with the running
    statistics, the state unchanged; so is training on an empty batch (no statistics).
    ``apply`` never changes state.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm needs 0 <= momentum <= 1, got {momentum}")
    if not (math.isfinite(float(eps)) and eps > 0):
        raise ValueError(f"batch_norm needs a finite eps > 0, got {eps}")
    axis, momentum, eps = int(axis), float(momentum), float(eps)
    dtype = np.dtype(dtype)

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        c = in_shape[_feature_axis(axis, len(in_shape) + 1) - 1]
        params = {}
        if use_scale:
            params["scale"] = np.ones((c,), dtype)
        if use_bias:
            params["bias"] = np.zeros((c,), dtype)
        state = {"mean": np.zeros((c,), dtype), "var": np.ones((c,), dtype)}
        return params, state, in_shape

    def normalise(params, x, ax, red, bshape):
        """``(y, xc, inv, mean, var)`` with the batch statistics (kept dims) and the centred
        input ``xc = x - mean``; ``xhat = xc * inv`` is never formed: ``y = xc * (inv *
        scale) + bias`` takes one pass fewer."""
        m = x.size // x.shape[ax]
        mean = _channel_sum(x, ax, red).reshape(bshape)
        mean *= 1.0 / m
        xc = x - mean
        var = _channel_dot(xc, xc, ax, red).reshape(bshape)
        var *= 1.0 / m                          # biased batch variance
        inv = var + eps
        np.sqrt(inv, out=inv)
        np.divide(1.0, inv, out=inv)
        a = inv * params["scale"].reshape(bshape) if use_scale else inv
        y = xc * a
        if use_bias:
            y += params["bias"].reshape(bshape)
        return y, xc, inv, mean, var

    def frozen(params, state, x, bshape):
        """``(y, a, inv)``: ``y = x * a + b`` per channel with the running statistics (see
        :func:`_frozen_affine`)."""
        a, b, inv = _frozen_affine(params, state, eps, use_scale, use_bias)
        y = x * a.reshape(bshape)
        y += b.reshape(bshape)
        return y, a, inv

    def apply(params, state, x, *, key=None, train=False):
        ax, red, bshape = _check_batch_norm_input(axis, params, state, x)
        x = np.ascontiguousarray(x)  # the reductions' rounding then never depends on the layout
        if train and x.shape[0]:
            return normalise(params, x, ax, red, bshape)[0]
        return frozen(params, state, x, bshape)[0]

    def vjp(params, state, x, *, key=None, train=True):
        ax, red, bshape = _check_batch_norm_input(axis, params, state, x)
        x = np.ascontiguousarray(x)
        if not train or not x.shape[0]:
            # eval mode (and an empty batch, which has no statistics): the affine map with
            # the running statistics, the state unchanged
            y, a, inv = frozen(params, state, x, bshape)

            def frozen_pullback(dy):
                dy = np.ascontiguousarray(dy)
                grads = {}
                if use_scale:
                    xc = x - state["mean"].reshape(bshape)
                    grads["scale"] = _channel_dot(dy, xc, ax, red) * inv
                if use_bias:
                    grads["bias"] = _channel_sum(dy, ax, red)
                return grads, dy * a.reshape(bshape)

            return y, state, frozen_pullback

        y, xc, inv, mean, var = normalise(params, x, ax, red, bshape)
        m = x.size // state["mean"].shape[0]
        unbiased = var.reshape(-1) * (m / (m - 1) if m > 1 else 1.0)
        new_state = {
            "mean": state["mean"] * momentum + mean.reshape(-1) * (1.0 - momentum),
            "var": state["var"] * momentum + unbiased * (1.0 - momentum),
        }

        def pullback(dy):
            dy = np.ascontiguousarray(dy)
            dbias = _channel_sum(dy, ax, red).reshape(bshape)
            dscale = _channel_dot(dy, xc, ax, red).reshape(bshape)
            dscale *= inv                       # sum(dy * xhat)
            # dx = scale * inv * (dy - mean(dy) - xhat * mean(dy * xhat)), xhat = xc * inv
            dx = xc * (dscale * inv * (-1.0 / m))
            dx += dy
            dx -= dbias * (1.0 / m)
            dx *= inv * params["scale"].reshape(bshape) if use_scale else inv
            grads = {}
            if use_scale:
                grads["scale"] = dscale.reshape(-1)
            if use_bias:
                grads["bias"] = dbias.reshape(-1)
            return grads, dx

        return y, new_state, pullback

    # y, dx and dparams are new arrays that no pullback keeps
    return Layer(init, apply, vjp, name,
                 traits=Traits(uses_key=False, fresh=frozenset({"y", "dx", "dparams"})))


@builder
def layer_norm(eps: float = 1e-5, use_scale: bool = True, use_bias: bool = True,
               dtype: Any = np.float32, name: str = "layer_norm") -> Layer:
    """Layer normalisation over the last axis of each example (and each position).

    Shapes: ``x`` and ``y`` are ``(batch, ..., features)``.  Params: ``scale``
    (ones) and ``bias`` (zeros) of shape ``(features,)`` and ``dtype`` (float32),
    each only if enabled.  No state; training and inference are the same.
    """
    if not (math.isfinite(float(eps)) and eps > 0):
        raise ValueError(f"layer_norm needs a finite eps > 0, got {eps}")
    eps = float(eps)
    dtype = np.dtype(dtype)

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        if len(in_shape) == 0 or in_shape[-1] < 1:
            raise LayerError(f"expected an input shape (..., features) with features >= 1, "
                             f"got {in_shape}")
        f = in_shape[-1]
        params = {}
        if use_scale:
            params["scale"] = np.ones((f,), dtype)
        if use_bias:
            params["bias"] = np.zeros((f,), dtype)
        return params, in_shape

    def check(params, x):
        check_float_input(x)
        for p in params.values():
            if x.ndim < 2 or x.shape[-1] != p.shape[0]:
                raise LayerError(f"expected input of shape (batch, ..., {p.shape[0]}), "
                                 f"got shape {tuple(x.shape)}")
            check_param_dtype(x, p)
        if x.ndim < 2:
            raise LayerError(f"expected input of shape (batch, ..., features), "
                             f"got shape {tuple(x.shape)}")

    def forward(params, x):
        x = np.ascontiguousarray(x)
        mean = _row_mean(x)
        xhat = x - mean
        var = _row_dot(xhat, xhat)
        var *= 1.0 / x.shape[-1]
        var += eps
        inv = np.sqrt(var, out=var)
        np.divide(1.0, inv, out=inv)
        xhat *= inv
        y = _scale_shift(xhat, params, (xhat.shape[-1],))
        return y, xhat, inv

    def apply(params, x):
        check(params, x)
        return forward(params, x)[0]

    def vjp(params, x):
        check(params, x)
        y, xhat, inv = forward(params, x)

        def pullback(dy):
            dy = np.ascontiguousarray(dy)
            g = dy * params["scale"] if use_scale else dy.copy()
            # dx = inv * (g - mean(g) - xhat * mean(g * xhat)), means over features
            gx = _row_dot(g, xhat)
            gx *= 1.0 / x.shape[-1]
            g -= _row_mean(g)
            g -= xhat * gx
            g *= inv
            lead = tuple(range(x.ndim - 1))
            grads = {}
            if use_scale:
                grads["scale"] = _channel_dot(dy, xhat, x.ndim - 1, lead)
            if use_bias:
                grads["bias"] = _channel_sum(dy, x.ndim - 1, lead)
            return grads, g

        return y, pullback

    # y is xhat itself (kept) when there is neither scale nor bias
    return stateless_layer(name, init, apply, vjp,
                           fresh=("dx", "dparams") + (("y",) if use_scale or use_bias else ()))


# --- group, instance and RMS normalisation (channels last, torch semantics) -----------

def _check_eps(eps: Any, name: str) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise LayerError(f"eps must be finite and > 0, got {eps!r}", name)
    return value


def _affine_params(affine: bool, bias: bool, c: int, dtype) -> dict:
    params = {}
    if affine:
        params["scale"] = np.ones((c,), dtype)
        if bias:
            params["bias"] = np.zeros((c,), dtype)
    return params


def _grouped_norm(name: str, groups: Any, eps: float, affine: bool, dtype: Any,
                  min_rank: int) -> Layer:
    """Normalise ``x`` (N, ..., C) viewed as (N, S, G, C/G) over the axes (S, C/G).

    ``groups`` is an int, or ``None`` for one group per channel (instance norm).
    """
    eps = _check_eps(eps, name)
    dtype = np.dtype(dtype)
    per_example = "(..., channels)" if min_rank == 2 else "(..., spatial, channels)"
    layout = "(batch, " + per_example[1:]

    def n_groups(c: int) -> int:
        g = c if groups is None else groups
        if c % g:
            raise LayerError(f"channels ({c}) must be divisible by num_groups ({g})")
        return g

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        if len(in_shape) < min_rank - 1 or min(in_shape, default=0) < 1:
            raise LayerError(f"expected a per-example input shape {per_example} "
                             f"with sizes >= 1, got {in_shape}")
        n_groups(in_shape[-1])
        return _affine_params(affine, True, in_shape[-1], dtype), in_shape

    def check(params, x):
        check_float_input(x)
        if x.ndim < min_rank:
            raise LayerError(f"expected input of shape {layout}, got shape {tuple(x.shape)}")
        for p in params.values():
            if x.shape[-1] != p.shape[0]:
                raise LayerError(f"expected input of shape (batch, ..., {p.shape[0]}), "
                                 f"got shape {tuple(x.shape)}")
            check_param_dtype(x, p)
        g = n_groups(x.shape[-1])
        s = math.prod(x.shape[1:-1])
        if groups is None and s < 2:
            raise LayerError(f"instance norm needs more than one spatial position per channel, "
                             f"got shape {tuple(x.shape)}")
        return (x.shape[0], s, g, x.shape[-1] // g)

    def forward(params, x, view):
        x4 = np.ascontiguousarray(x).reshape(view)
        m = view[1] * view[3]
        mean = x4.mean(axis=(1, 3), keepdims=True)
        xhat = x4 - mean
        var = np.einsum("nsgc,nsgc->ng", xhat, xhat)[:, None, :, None]
        var *= 1.0 / m
        var += eps
        inv = np.sqrt(var, out=var)
        np.divide(1.0, inv, out=inv)
        xhat *= inv
        xhat = xhat.reshape(x.shape)
        y = _scale_shift(xhat, params, (x.shape[-1],))
        return y, xhat, inv

    def apply(params, x):
        view = check(params, x)
        return forward(params, x, view)[0]

    def vjp(params, x, need_dx=True):
        view = check(params, x)
        y, xhat, inv = forward(params, x, view)
        m = view[1] * view[3]

        def pullback(dy):
            dy = np.ascontiguousarray(dy)
            lead = tuple(range(x.ndim - 1))
            grads = {}
            if affine:
                grads["scale"] = _channel_dot(dy, xhat, x.ndim - 1, lead)
                grads["bias"] = dy.sum(axis=lead)
            if not need_dx:
                return grads, None
            # g4 is our own (N, S, G, C/G) array, written in place and returned reshaped
            # (a reshape of a non-C array would be a copy, and writing it a lost write)
            g4 = (dy * params["scale"] if affine else dy.copy()).reshape(view)
            xh4 = xhat.reshape(view)
            # dx = inv * (g - mean(g) - xhat * mean(g * xhat)), means over (S, C/G)
            gx = np.einsum("nsgc,nsgc->ng", g4, xh4)[:, None, :, None]
            gx *= 1.0 / m
            g4 -= g4.mean(axis=(1, 3), keepdims=True)
            g4 -= xh4 * gx
            g4 *= inv
            return grads, g4.reshape(x.shape)

        return y, pullback

    # without affine params y is xhat, which the pullback keeps: not fresh then
    fresh = ("y", "dx", "dparams") if affine else ("dx", "dparams")
    return stateless_layer(name, init, apply, vjp, takes=("need_dx",), fresh=fresh)


@builder
def group_norm(num_groups: int, eps: float = 1e-5, affine: bool = True,
               dtype: Any = np.float32, name: str = "group_norm") -> Layer:
    """Group normalisation (Wu & He, 2018) over channels-last data: PyTorch's ``GroupNorm``.

    Shapes: ``x`` and ``y`` are ``(batch, ..., channels)`` (``(N, C)``, ``(N, W, C)``,
    ``(N, H, W, C)``...), ``channels`` divisible by ``num_groups``.  Each example's
    channels are split into ``num_groups`` consecutive groups (group ``g`` holds
    channels ``g * C/G ... (g + 1) * C/G - 1``, as torch) and each group is normalised
    with the mean and biased variance over all its positions and channels; then
    ``y = xhat * scale + bias`` per channel.  Params (``affine=True``, as torch): ``scale``
    (ones) and ``bias`` (zeros) of shape ``(C,)`` and ``dtype`` -- torch's ``weight`` and
    ``bias``; ``affine=False``: none.  No state; training and inference are the same.
    ``eps`` must be finite and > 0 (a :class:`LayerError` otherwise).
    Same numbers as ``torch.nn.GroupNorm(num_groups, C, eps, affine)`` on NC... data
    moved to channels first.
    """
    return _grouped_norm(name, int_arg(name, "num_groups", num_groups), eps, affine, dtype,
                         min_rank=2)


@builder
def instance_norm(eps: float = 1e-5, affine: bool = False, dtype: Any = np.float32,
                  name: str = "instance_norm") -> Layer:
    """Instance normalisation (Ulyanov et al., 2016) over channels-last data:
    PyTorch's ``InstanceNorm1d/2d/3d`` with ``track_running_stats=False``.

    Shapes: ``x`` and ``y`` are ``(batch, ..., spatial, channels)`` (at least one spatial
    axis, more than one spatial position in all -- torch refuses one too).  Each
    channel of each example is normalised with its own mean and biased variance over
    the spatial positions (a :func:`group_norm` with one group per channel), then
    ``y = xhat * scale + bias`` per channel if ``affine`` (default False, as torch).
    Params with ``affine=True``: ``scale`` (ones) and ``bias`` (zeros) of shape ``(C,)``,
    torch's ``weight`` and ``bias``.  No state: the same in training and inference.
    ``eps`` must be finite and > 0 (a :class:`LayerError` otherwise).
    """
    return _grouped_norm(name, None, eps, affine, dtype, min_rank=3)


@builder
def rms_norm(eps: float = 1e-6, affine: bool = True, dtype: Any = np.float32,
             name: str = "rms_norm") -> Layer:
    """Root-mean-square normalisation (Zhang & Sennrich, 2019) over the last axis:
    PyTorch's ``RMSNorm(features, eps)``.

    Shapes: ``x`` and ``y`` are ``(batch, ..., features)``;
    ``y = x / sqrt(mean(x**2, last axis) + eps) * scale`` (no mean subtraction, no
    bias).  Params with ``affine=True`` (torch's ``elementwise_affine``): ``scale`` (ones)
    of shape ``(features,)`` and ``dtype``, torch's ``weight``; none otherwise.
    ``eps`` must be finite and > 0 (a :class:`LayerError` otherwise; torch's
    ``eps=None`` default, the dtype's machine epsilon, has no counterpart: pass it).
    """
    eps = _check_eps(eps, name)
    dtype = np.dtype(dtype)

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        if len(in_shape) == 0 or min(in_shape) < 1:
            raise LayerError(f"expected an input shape (..., features) with sizes >= 1, "
                             f"got {in_shape}")
        return _affine_params(affine, False, in_shape[-1], dtype), in_shape

    def check(params, x):
        check_float_input(x)
        if x.ndim < 2:
            raise LayerError(f"expected input of shape (batch, ..., features), "
                             f"got shape {tuple(x.shape)}")
        for p in params.values():
            if x.shape[-1] != p.shape[0]:
                raise LayerError(f"expected input of shape (batch, ..., {p.shape[0]}), "
                                 f"got shape {tuple(x.shape)}")
            check_param_dtype(x, p)

    def forward(params, x):
        x = np.ascontiguousarray(x)
        inv = _row_dot(x, x)
        inv *= 1.0 / x.shape[-1]
        inv += eps
        np.sqrt(inv, out=inv)
        np.divide(1.0, inv, out=inv)
        xhat = x * inv
        y = xhat * params["scale"] if affine else xhat
        return y, xhat, inv

    def apply(params, x):
        check(params, x)
        return forward(params, x)[0]

    def vjp(params, x, need_dx=True):
        check(params, x)
        y, xhat, inv = forward(params, x)

        def pullback(dy):
            dy = np.ascontiguousarray(dy)
            lead = tuple(range(x.ndim - 1))
            grads = {"scale": _channel_dot(dy, xhat, x.ndim - 1, lead)} if affine else {}
            if not need_dx:
                return grads, None
            g = dy * params["scale"] if affine else dy.copy()
            # dx = inv * (g - xhat * mean(g * xhat)), mean over features
            gx = _row_dot(g, xhat)
            gx *= 1.0 / x.shape[-1]
            g -= xhat * gx
            g *= inv
            return grads, g

        return y, pullback

    fresh = ("y", "dx", "dparams") if affine else ("dx", "dparams")
    return stateless_layer(name, init, apply, vjp, takes=("need_dx",), fresh=fresh)
