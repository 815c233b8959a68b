"""Activations: parameter-free layers.  Shapes and float dtypes are unchanged.

Elementwise: relu, leaky_relu, elu, gelu (exact or tanh form), silu, softplus,
sigmoid, tanh.  Along one axis: softmax, log_softmax.  Each layer's forward and
backward sit side by side below; the array kernels that other layers and losses
share (sigmoid, softmax, log-softmax, relu) are in :mod:`fundl.kernels`, erf in
:mod:`fundl.special`.  Constants are Python floats, so float32 stays float32.

Speed note: ``np.where`` / ``np.copyto(where=)`` with a data-dependent mask
measured 20-100x slower than plain arithmetic here, so branches are written as
``max``/``min`` or as a blend with a 0/1 float mask.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import numpy as np

from .. import kernels
from ..checks import (Array, LayerError, as_shape, check_float_input, int_arg)
from ..core import Layer, builder, elementwise_layer, stateless_layer
from ..special import erfcx_nonneg, exp_neg_half_sq, exp_neg_half_sq_f32, normal_tailx_f32


__all__ = ["relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "sigmoid", "tanh",
           "softmax", "log_softmax"]


def _local_grad_layer(name: str, forward: Callable[[Array], Array],
                      forward_and_grad: Callable[[Array], Tuple[Array, Array]]) -> Layer:
    """An elementwise layer whose vjp keeps only the local derivative ``g = f'(x)``.

    ``forward(x) -> y``; ``forward_and_grad(x) -> (y, g)``; the pullback is ``dy * g``.
    Used where the derivative shares work with the forward (gelu, silu).  Both run
    in cache-sized blocks (:func:`fundl.kernels.blockwise`): the same bits, faster.
    """
    def init(key, in_shape):
        return {}, as_shape(in_shape)

    def apply(params, x):
        check_float_input(x)
        return kernels.blockwise(forward, x)

    def vjp(params, x):
        check_float_input(x)
        y, g = kernels.blockwise(forward_and_grad, x)
        return y, lambda dy: ({}, dy * g)

    # y and dx are new arrays that the pullback does not keep (it keeps g)
    return stateless_layer(name, init, apply, vjp, fresh=("y", "dx", "dparams"))


def _mask(cond_fn, a, b):
    """``cond_fn(a, b)`` as a 0/1 array of ``a``'s dtype (fast: no bool temporary)."""
    m = np.empty_like(a)
    cond_fn(a, b, out=m)
    return m


# --- relu ---------------------------------------------------------------------------

def _relu_backward(x, y, dy, out=None):
    # y > 0 exactly where x > 0; the gradient at 0 is taken as 0.  ``dy * (y > 0)``
    # with a bool mask (1 byte per element) moves the least memory: inside a CNN
    # training step it beat writing the mask into the float output and multiplying
    # in place (faster on a hot cache, in isolation), and np.where is ~10x slower.
    return np.multiply(dy, np.greater(y, 0), out=out)


@builder
def relu() -> Layer:
    """``max(x, 0)``; gradient 1 where ``x > 0``, else 0.  Any shape.

    Inside :func:`fundl.serial`, after a layer whose output is fresh (dense,
    conv) it works in place on that output, and its pullback in place on a
    fresh ``dy`` (see :mod:`fundl.plan`).  A ReLU followed by a max pool runs
    after the pool there (the same results, on a 4x smaller array for 2x2 pools).
    """
    # In place: about 1 ms per step of the benchmark CNN, 0.3 ms of the MLP at batch 512.
    return elementwise_layer("relu", kernels.relu, _relu_backward, saves="y",
                             in_place=("forward", "backward"), fresh=("dx",))


# --- leaky relu ---------------------------------------------------------------------

@builder
def leaky_relu(negative_slope: float = 0.01) -> Layer:
    """``x`` where ``x > 0``, else ``negative_slope * x``.  Any shape.

    The gradient at 0 is ``negative_slope``.  For ``negative_slope >= 0`` the
    backward needs only ``y`` (``y > 0`` iff ``x > 0``), otherwise ``x``.
    """
    s = float(negative_slope)

    def forward(x):
        # max(x, s x) is x for x > 0 and s x for x < 0 when s <= 1; min when s > 1.
        y = x * s
        return np.maximum(x, y, out=y) if s <= 1.0 else np.minimum(x, y, out=y)

    def backward(x, y, dy):
        pos = _mask(np.greater, y if x is None else x, 0)
        g = 1.0 - pos
        g *= s
        g += pos                                           # exactly 1 where x > 0, else s
        g *= dy
        return g

    return elementwise_layer("leaky_relu", forward, backward, saves="y" if s >= 0 else "x")


# --- elu ----------------------------------------------------------------------------

@builder
def elu(alpha: float = 1.0) -> Layer:
    """``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``.  Any shape.

    Gradient: 1 where ``x > 0``, else ``alpha * exp(x) = y + alpha``; needs
    only ``y`` when ``alpha >= 0``.
    """
    a = float(alpha)

    def forward(x):
        neg = np.minimum(x, 0)
        np.expm1(neg, out=neg)
        neg *= a
        neg += np.maximum(x, 0)                 # x where x > 0, else a (exp(x) - 1)
        return neg

    def backward(x, y, dy):
        pos = _mask(np.greater, y if x is None else x, 0)
        if x is None:
            g = np.minimum(y, 0)
            g += a                              # y + a = a exp(x) where x <= 0
        else:
            g = np.minimum(x, 0)
            np.exp(g, out=g)
            g *= a
        g -= g * pos                            # 0 where x > 0
        g += pos                                # 1 where x > 0
        g *= dy
        return g

    return elementwise_layer("elu", forward, backward, saves="y" if a >= 0 else "x")


# --- gelu ---------------------------------------------------------------------------

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_exact_f32(x: Array, need_grad: bool):
    """:func:`_gelu_exact` for float32: 31 passes over memory (25 without ``g``; 55 before).

    With ``a = |x|``, ``e = exp(-a^2/2)`` and ``t`` the scaled tail
    :func:`fundl.special.normal_tailx_f32`: ``Phi(-a) = e t = h``, ``phi = e / sqrt(2 pi)``,
    ``y = x - x h`` (x >= 0) or ``x h`` (x < 0), taken as ``max(x - xh, xh)`` with
    ``xh = (x e) t``, and ``g = |[x >= 0] - h| + (x e) / sqrt(2 pi)``.  Forming ``x e``
    first keeps ``y`` accurate where ``h`` is already subnormal (``y`` is normal down to
    x = -13.1, ``h`` only to -12.95); ``g`` is normal to -13.33, ``e`` only to -13.21,
    which costs ``g`` up to 3 bits there (its error stays below 4.5e-7).  Max errors over
    every float32 in [-14, 8] with ``|x| >= 2**-10``: ``y`` 4.0e-7 relative, ``g`` 4.7e-7
    of ``|Phi| + |x phi|`` (its relative error away from its zero at x = -0.75).
    """
    # Forward + derivative of the transformer's (32, 64, 512) activations in blocks of 2**16,
    # old / this, medians of 15 interleaved runs on a busy 2-core machine: 12.2 / 9.6 ms with
    # glibc's default allocator, 9.1 / 6.4 ms when it keeps freed memory (no page faults).
    # Of the ~360 us a block: the continued fraction 150, the float64 exp(-x^2/2) 100.
    xc = np.clip(x, -64.0, 64.0)               # no inf * 0 at x = +-inf; past 14 all is 0
    a = np.abs(xc)
    t = normal_tailx_f32(a)
    e = exp_neg_half_sq_f32(a, out=a)
    xe = np.multiply(xc, e, out=xc)            # sqrt(2 pi) x phi(x)
    h = np.multiply(e, t, out=e) if need_grad else None       # Phi(-|x|) <= 1/2
    xh = np.multiply(xe, t, out=t)             # x Phi(-|x|)
    y = np.subtract(x, xh)
    np.maximum(y, xh, out=y)                   # x Phi(x): x - xh if x >= 0 (h <= 1/2), else xh
    if not need_grad:
        return y, None
    phi_cdf = np.greater_equal(x, 0, out=xh)
    phi_cdf -= h
    np.abs(phi_cdf, out=phi_cdf)               # Phi = h where x < 0, 1 - h where x >= 0
    xe *= _INV_SQRT_2PI
    xe += phi_cdf                              # g = Phi + x phi
    return y, xe


def _gelu_exact(x: Array, need_grad: bool):
    """``y = x * Phi(x)`` and (if asked) ``g = Phi(x) + x * phi(x)``; Phi = normal CDF.

    float32 takes :func:`_gelu_exact_f32`, float16 the same through float32; other
    dtypes (float64) the erfcx series of :mod:`fundl.special`, to float64 precision.
    """
    if x.dtype == np.float32:
        return _gelu_exact_f32(x, need_grad)
    if x.dtype == np.float16:
        y, g = _gelu_exact_f32(x.astype(np.float32), need_grad)
        return y.astype(np.float16), None if g is None else g.astype(np.float16)
    z = np.abs(x)
    ez = exp_neg_half_sq(z, 0.5)              # exp(-x^2 / 2)
    z *= _INV_SQRT2
    half_tail = erfcx_nonneg(z)               # Phi(-|x|) = 0.5 * exp(-x^2/2) * erfcx(|x|/sqrt2)
    half_tail *= ez
    half_tail *= 0.5
    # Phi = h where x < 0, else 1 - h; as h + pos * (1 - 2h), exact where pos == 0
    pos = _mask(np.greater_equal, x, 0)
    phi_cdf = half_tail * -2.0
    phi_cdf += 1.0
    phi_cdf *= pos
    phi_cdf += half_tail
    y = x * phi_cdf
    if not need_grad:
        return y, None
    ez *= _INV_SQRT_2PI
    ez *= x
    ez += phi_cdf
    return y, ez


def _gelu_tanh(x: Array, need_grad: bool):
    """Tanh form ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` and its derivative."""
    x2 = x * x
    inner = x2 * 0.044715
    inner += 1.0
    inner *= x
    inner *= _SQRT_2_OVER_PI
    t = np.tanh(inner, out=inner)
    half_1pt = t * 0.5
    half_1pt += 0.5                            # 0.5 (1 + t)
    y = half_1pt * x
    if not need_grad:
        return y, None
    # g = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    x2 *= 3 * 0.044715
    x2 += 1.0
    x2 *= 0.5 * _SQRT_2_OVER_PI
    x2 *= x
    np.multiply(t, t, out=t)
    np.subtract(1.0, t, out=t)
    x2 *= t
    x2 += half_1pt
    return y, x2


@builder
def gelu(approximate: bool = False) -> Layer:
    """Gaussian error linear unit ``x * Phi(x)`` (Phi the standard normal CDF).  Any shape.

    ``approximate=False`` uses the exact erf-based Phi; ``approximate=True`` the
    tanh form ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.  The vjp keeps
    only the local derivative.  The exact form is accurate to the input's precision,
    in the far negative tail too: float64 to ~1e-15, float32 (and float16, computed in
    float32) to a few float32 ulps by a float32 path of its own.
    """
    fn = _gelu_tanh if approximate else _gelu_exact
    return _local_grad_layer("gelu", lambda x: fn(x, False)[0], lambda x: fn(x, True))


# --- silu, softplus, sigmoid, tanh --------------------------------------------------

def _silu(x: Array, need_grad: bool):
    """``y = x * s`` with ``s = sigmoid(x)``; derivative ``s + y (1 - s)``."""
    s = kernels.sigmoid(x)
    y = x * s
    if not need_grad:
        return y, None
    g = 1.0 - s
    g *= y
    g += s
    return y, g


@builder
def silu() -> Layer:
    """Sigmoid-weighted linear unit (swish) ``x * sigmoid(x)``.  Any shape.

    Gradient ``sigmoid(x) + y (1 - sigmoid(x))``; the vjp keeps only that derivative.
    """
    return _local_grad_layer("silu", lambda x: _silu(x, False)[0], lambda x: _silu(x, True))


def _softplus_forward(x):
    # max(x, 0) + log1p(exp(-|x|)): exact form of logaddexp(0, x), no overflow.
    t = np.abs(x)
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)
    t += np.maximum(x, 0)
    return t


def _softplus_backward(x, y, dy):
    # sigmoid(x) = 1 - exp(-softplus(x)) = -expm1(-y): accurate at both ends.
    s = np.negative(y)
    np.expm1(s, out=s)
    np.negative(s, out=s)
    s *= dy
    return s


@builder
def softplus() -> Layer:
    """``log(1 + exp(x))`` = ``logaddexp(0, x)``, computed stably; gradient ``sigmoid(x)``.

    Any shape; the backward needs only ``y``.
    """
    return elementwise_layer("softplus", _softplus_forward, _softplus_backward, saves="y")


def _tanh_backward(x, y, dy):
    g = y * y
    np.subtract(1.0, g, out=g)
    g *= dy
    return g


@builder
def tanh() -> Layer:
    """``tanh(x)``; gradient ``1 - tanh(x)**2``.  Any shape.  Works in place on a
    donated input (see :func:`relu`)."""
    return elementwise_layer("tanh", kernels.tanh, _tanh_backward, saves="y",
                             in_place=("forward",), fresh=("dx",))


def _sigmoid_backward(x, y, dy):
    g = 1.0 - y
    g *= y
    g *= dy
    return g


@builder
def sigmoid() -> Layer:
    """``1 / (1 + exp(-x))``, computed without overflow; gradient ``y (1 - y)``.  Any shape.
    Works in place on a donated input (see :func:`relu`)."""
    return elementwise_layer("sigmoid", kernels.sigmoid, _sigmoid_backward, saves="y",
                             in_place=("forward",), fresh=("dx",))


# --- softmax, log_softmax -----------------------------------------------------------

def _axis_layer(name: str, axis: int, forward, backward) -> Layer:
    """A parameter-free layer acting along data axis ``axis`` (not the batch axis 0).

    ``forward(x, ax) -> y``; ``backward(y, dy, ax) -> dx``; the vjp keeps only ``y``.
    """
    axis = int_arg(name, "axis", axis, minimum=None)

    def resolve(ndim: int) -> int:
        ax = axis + ndim if axis < 0 else axis
        if not 1 <= ax < ndim:
            raise LayerError(f"axis {axis} is not a feature axis of an input of rank {ndim} "
                             f"(axis 0 is the batch)")
        return ax

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        resolve(len(in_shape) + 1)
        return {}, in_shape

    # x and dy C-ordered: the sums along the axis then add in one order for any layout
    def apply(params, x):
        check_float_input(x)
        return forward(np.ascontiguousarray(x), resolve(x.ndim))

    def vjp(params, x):
        check_float_input(x)
        ax = resolve(x.ndim)
        y = forward(np.ascontiguousarray(x), ax)
        return y, lambda dy: ({}, backward(y, np.ascontiguousarray(dy), ax))

    return stateless_layer(name, init, apply, vjp, fresh=("dx", "dparams"))


def _softmax_backward(y, dy, ax):
    if ax == y.ndim - 1:                       # no full-size temporary
        s = np.einsum("...i,...i->...", dy, y)[..., None]
    else:
        s = np.sum(dy * y, axis=ax, keepdims=True)
    dx = np.subtract(dy, s)
    dx *= y                                    # y * (dy - sum(dy * y))
    return dx


@builder
def softmax(axis: int = -1) -> Layer:
    """``exp(x) / sum(exp(x))`` along data ``axis`` (default the last; never the batch axis 0).

    Stable for any logits (the max is subtracted first).  Backward
    ``y * (dy - sum(dy * y))`` from ``y`` alone.
    """
    return _axis_layer("softmax", axis, kernels.softmax, _softmax_backward)


def _log_softmax_backward(y, dy, ax):
    total = dy.sum(axis=ax, keepdims=True)
    dx = np.exp(y)
    dx *= -total
    dx += dy                                   # dy - softmax(x) * sum(dy)
    return dx


@builder
def log_softmax(axis: int = -1) -> Layer:
    """``x - logsumexp(x)`` along data ``axis`` (default the last; never the batch axis 0).

    Stable for any logits.  Backward ``dy - exp(y) * sum(dy)`` from ``y`` alone.
    """
    return _axis_layer("log_softmax", axis, kernels.log_softmax, _log_softmax_backward)
