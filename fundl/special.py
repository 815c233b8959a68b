"""Special functions numpy lacks, vectorised and accurate to float64 precision: erf, erfc.

Used by the exact gelu; every function keeps its input's float dtype.  A separate
float32 path for the normal distribution (:func:`normal_cdf_f32` and its two parts,
:func:`exp_neg_half_sq_f32` and :func:`normal_tailx_f32`) serves the float32 gelu
in fewer passes over memory (31 against 55), accurate to a few float32 ulps.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .checks import Array


__all__ = ["erf", "erfc", "erfcx_nonneg", "exp_neg_half_sq", "exp_neg_half_sq_f32",
           "normal_tailx_f32", "normal_cdf_f32"]

# How:
# erfc(z) = exp(-z^2) * erfcx(z) for z >= 0, with the scaled function written as
# erfcx(z) = exp(F(u)) / (z + 2),  u = (z - 2) / (z + 2) in [-1, 1),
# and F a Chebyshev series.  The coefficients were computed (40 digits, mpmath)
# at 100 Chebyshev nodes; the dropped tail is below 3e-18.  12 terms suffice for
# float32.  exp(-z^2) is formed from a split z = zh + zl with zh^2 exact, so erfc
# keeps its relative accuracy far into the tail.

_ERFCX_COEFFS = (
    0.04182032066909059, -0.6419697923564902, 0.019476473204185836, 0.009561514786808632,
    -0.0009465953444820369, -0.00036683949785276145, 4.252332480690777e-05,
    2.0278578112534242e-05, -1.6242900046470256e-06, -1.3036558355805232e-06,
    1.5626441722066142e-08, 8.523809591492654e-08, 6.5290544390988515e-09,
    -5.059343495551469e-09, -9.91364156493033e-10, 2.273651222931836e-10,
    9.646791102015527e-11, -2.3940380830391146e-12, -6.886027526497553e-12,
    -8.944879273090725e-13, 3.130921399342958e-13, 1.1270822361367252e-13,
    3.810905255189232e-16, -7.106097613609237e-15, -1.5230282014571043e-15,
    9.457494571291233e-17, 1.210237189224279e-16, 2.816663087747177e-17,
)
_ERFCX_TERMS_F32 = 12
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
# erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)); 13 terms for |x| < 0.5.
_ERF_TAYLOR = tuple((-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(13))


def erfcx_nonneg(z: Array) -> Array:
    """``exp(z**2) * erfc(z)`` for ``z >= 0`` (a fresh array of z's dtype)."""
    coeffs = _ERFCX_COEFFS if z.dtype.itemsize >= 8 else _ERFCX_COEFFS[:_ERFCX_TERMS_F32]
    d = z + 2.0
    two_u = np.divide(4.0, d)
    np.subtract(1.0, two_u, out=two_u)         # u = (z - 2) / (z + 2), also for z = inf
    two_u *= 2.0
    # Clenshaw: b_k = 2u b_{k+1} - b_{k+2} + c_k, three rotating buffers, no temporaries
    b2 = np.full_like(z, coeffs[-1])
    b1 = np.multiply(two_u, coeffs[-1])
    b1 += coeffs[-2]
    t = np.empty_like(z)
    for c in coeffs[-3:0:-1]:
        np.multiply(two_u, b1, out=t)
        t -= b2
        t += c
        b1, b2, t = t, b1, b2
    two_u *= 0.5                               # F = u b_1 - b_2 + c_0
    two_u *= b1
    two_u -= b2
    two_u += coeffs[0]
    np.exp(two_u, out=two_u)
    two_u /= d
    return two_u


def exp_neg_half_sq(x: Array, scale: float) -> Array:
    """``exp(-scale * x**2)`` for ``x >= 0`` with ``scale`` 1 or 1/2, accurate in float64.

    ``x`` is split as ``xh + xl`` with ``xh`` on a 2**-16 grid, so ``xh**2`` is
    exact and only the small product ``xl * (x + xh)`` is rounded.
    """
    x = np.minimum(x, 40.0)                    # exp underflows long before; avoids inf - inf
    if x.dtype.itemsize < 8:
        x *= x
        x *= -scale
        return np.exp(x, out=x)
    xh = np.multiply(x, 65536.0)
    np.floor(xh, out=xh)
    xh *= 1.0 / 65536.0
    lo = x + xh
    x -= xh                                    # x is our own copy (from np.minimum)
    lo *= x
    lo *= -scale
    np.exp(lo, out=lo)
    np.multiply(xh, xh, out=xh)
    xh *= -scale
    np.exp(xh, out=xh)
    xh *= lo
    return xh


def erfc(x: Array) -> Array:
    """The complementary error function ``1 - erf(x)``, elementwise, in ``x``'s float dtype.

    Relative error about 1e-15 in float64 for all ``x`` (also deep in the tail).
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    z = np.abs(x)
    r = erfcx_nonneg(z)
    r *= exp_neg_half_sq(z, 1.0)
    neg = x < 0
    if neg.any():
        r[neg] = 2.0 - r[neg]
    return r


def erf(x: Array) -> Array:
    """The error function, elementwise, in ``x``'s float dtype (float64 accuracy ~1e-16 relative).

    A Taylor series for ``|x| < 0.5``; ``sign(x) * (1 - erfc(|x|))`` beyond.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    z = np.abs(x)
    big = 1.0 - erfcx_nonneg(z) * exp_neg_half_sq(z, 1.0)
    np.copysign(big, x, out=big)
    small = z < 0.5
    if small.any():
        xs = x[small]
        t = xs * xs
        p = np.full_like(xs, _ERF_TAYLOR[-1])
        for c in _ERF_TAYLOR[-2::-1]:
            p *= t
            p += c
        p *= xs
        p *= _TWO_OVER_SQRT_PI
        big[small] = p
    return big


# --- float32: the normal CDF in few passes --------------------------------------------
#
# Phi(-a) = exp(-a^2/2) * T(a) for a >= 0.  T = M / sqrt(2 pi), M the Mills ratio
# Phi(-a) / phi(a), is written as a continued fraction of the shape of Laplace's
#     M(a) = 1/(a + 1/(a + 2/(a + 3/(a + ...)))),
#     T(a) ~ n / (a + c1/(a + c2/(a + ... c6/(a + c7)))),
# with its eight constants fitted here, over a in [0, 14] (past 13, Phi(-a) is no normal
# float32): Lawson-reweighted nonlinear least squares (Levenberg-Marquardt) on 1700
# points against the float64 Mills ratio (scipy's erfcx), started from Laplace's 1..6,
# to the minimax of the relative error weighted by 1 / (3.6e-7 - r(a)), r(a) =
# 1e-7 + 2.4e-7 exp(-a / 0.6) a model of the float32 rounding measured for such fractions
# (largest near 0, where the levels do not damp each other); then rounded to float32 and
# nudged, two at a time, by up to 3 ulps, for the smallest max of |error| + r(a) with T(0)
# exactly 0.5 in float32.  Fit error of the float32 constants 7.4e-8 (7.5e-9 near a = 0).
# All are positive, so each level is a sum of positive terms; evaluated in float32 (two
# passes a level, 14 in all) T's max relative error over every float32 a tested is
# 3.7e-7, near a = 0.005; 2.4e-7 for a > 0.25, 1.9e-7 for a > 1.  Against 7 levels: a
# polynomial in t = 1/(1 + p a) needs 9 terms (18 passes) for a 3e-8 fit; a numerator
# and denominator of degrees 4 and 5 by Horner (18 passes) fit to 6e-9 but round to 4.4e-7
# at large a; 6 levels fit no better than 5.6e-7.
# exp(-a^2/2) comes from a float64 exponent: -a^2/2 = a * (-a/2) is exact there, so it
# is rounded once, to float32, not off by up to a^2 * 6e-8 as from a float32 square.

_TAILX_CF_F32 = (1.0000486373901367, 2.0031208992004395, 3.0550615787506104,
                 4.475609302520752, 7.965967178344727, 31.9068603515625)
_TAILX_CF_END_F32 = 9.377864837646484
_TAILX_CF_NUM_F32 = 0.39894238114356995            # ~ 1/sqrt(2 pi)


def _check_f32(a: Array) -> None:
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32):
        raise TypeError(f"expected a float32 array, got {getattr(a, 'dtype', type(a).__name__)}")


def exp_neg_half_sq_f32(a: Array, out: Optional[Array] = None) -> Array:
    """``exp(-a**2 / 2)`` for a float32 array ``a``, rounded once to float32.

    The exponent and the exponential are formed in float64, where ``a**2 / 2`` is exact
    (a float32 square would be off by up to ``a**2 * 3e-8``, a float32 exp by 2e-7).
    ``out`` (float32, ``a``'s shape; may be ``a``) receives the result.
    """
    _check_f32(a)
    s = a.astype(np.float64)
    np.square(s, out=s)
    s *= -0.5
    np.exp(s, out=s)
    if out is None:
        return s.astype(np.float32)
    np.copyto(out, s, casting="same_kind")
    return out


def normal_tailx_f32(a: Array, out: Optional[Array] = None) -> Array:
    """``exp(a**2 / 2) * Phi(-a)`` for a float32 array ``a >= 0`` (inf gives 0), 14 passes.

    ``Phi(-a)`` is this times :func:`exp_neg_half_sq_f32`.  Max relative error 3.7e-7
    (see the comment above); ``out`` may be any float32 array of ``a``'s shape but ``a``.
    """
    _check_f32(a)
    r = np.add(a, _TAILX_CF_END_F32, out=out)
    for c in _TAILX_CF_F32[::-1]:
        np.divide(c, r, out=r)
        r += a
    return np.divide(_TAILX_CF_NUM_F32, r, out=r)


def normal_cdf_f32(x: Array) -> Array:
    """The standard normal CDF ``Phi(x)`` of a float32 array, in float32.

    Relative error below 4.5e-7 wherever ``Phi(x)`` is a normal float32 (largest near
    ``|x| = 0.005``), the far negative tail included, where ``0.5 * (1 + erf(x / sqrt 2))``
    in float32 has no relative accuracy left.  ``-inf, 0, inf`` give exactly ``0, 0.5, 1``.
    """
    _check_f32(x)
    a = np.abs(x)
    h = normal_tailx_f32(a)
    h *= exp_neg_half_sq_f32(a, out=a)          # Phi(-|x|) <= 1/2
    # Phi = h where x < 0, 1 - h where x >= 0: |[x >= 0] - h|
    phi_cdf = np.greater_equal(x, 0, out=a)
    phi_cdf -= h
    return np.abs(phi_cdf, out=phi_cdf)
