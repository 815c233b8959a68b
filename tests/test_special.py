"""fundl.special: erf and erfc to float64 precision; the float32 normal CDF."""

import math

import numpy as np
import pytest

from fundl.testing import every_float32
from fundl.special import erf, erfc, exp_neg_half_sq_f32, normal_cdf_f32, normal_tailx_f32


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-6, 6, 24001), np.linspace(-30, 30, 1201),
                        [0.0, -0.0, 1e-300, 1e-8, 0.4999999999, 0.5, 0.5000000001]])
    want = np.array([math.erf(v) for v in x])
    got = erf(x)
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-300)
    assert rel.max() < 1.5e-15, (rel.max(), x[rel.argmax()])
    want_c = np.array([math.erfc(v) for v in x])
    got_c = erfc(x)
    nz = want_c > 0
    rel_c = np.abs(got_c - want_c)[nz] / want_c[nz]
    assert rel_c.max() < 3e-15, (rel_c.max(), x[nz][rel_c.argmax()])
    assert np.all(got_c[~nz] == 0.0)
    np.testing.assert_array_equal(erf(np.array([np.inf, -np.inf])), [1.0, -1.0])
    np.testing.assert_array_equal(erfc(np.array([np.inf, -np.inf])), [0.0, 2.0])
    x32 = x.astype(np.float32)
    assert erf(x32).dtype == np.float32 and erfc(x32).dtype == np.float32
    np.testing.assert_allclose(erf(x32), [math.erf(v) for v in x32], atol=3e-7)


def test_normal_cdf_f32_relative_accuracy():
    # a dense grid of [-14, 8] and every float32 where the errors peak: near |x| = 0.0047
    # (the continued fraction's rounding) and the last normal values of Phi (x ~ -12.95)
    near0 = every_float32(0.0047, 0.00472)
    x = np.concatenate([np.linspace(-14, 8, 1_000_001, dtype=np.float32), near0, -near0,
                        -every_float32(12.94, 12.96)])
    got = normal_cdf_f32(x)
    assert got.dtype == np.float32
    x64 = x.astype(np.float64)
    want = 0.5 * erfc(-x64 / math.sqrt(2))     # float64, relative error ~1e-14 here
    normal = want >= np.finfo(np.float32).tiny
    rel = np.abs(got[normal] - want[normal]) / want[normal]
    assert rel.max() < 4.5e-7, (rel.max(), x[normal][rel.argmax()])   # 4.27e-7 at x = 0.0047
    tail = normal & (x64 < -3)                 # where 0.5 * erfc(-x / sqrt 2) in float32 fails
    assert (np.abs(got[tail] - want[tail]) / want[tail]).max() < 3e-7
    assert np.all(got[~normal] <= np.finfo(np.float32).tiny)


def test_normal_cdf_f32_limits_and_parts():
    x = np.array([-np.inf, -40.0, -0.0, 0.0, 6.0, 40.0, np.inf], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = normal_cdf_f32(x)
        e = exp_neg_half_sq_f32(np.array([0.0, 64.0, np.inf], np.float32))
        t = normal_tailx_f32(np.array([0.0, np.inf], np.float32))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(e, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(t, [0.5, 0.0])
    assert np.isnan(normal_cdf_f32(np.array([np.nan], np.float32))[0])
    # exp(-a^2/2) is rounded once from a float64 exponent: within half an ulp (+ float64 exp)
    a = np.linspace(0, 13.2, 100_001, dtype=np.float32)
    want = np.exp(-a.astype(np.float64) ** 2 / 2)
    assert (np.abs(exp_neg_half_sq_f32(a) - want) / want).max() < 6e-8
    with pytest.raises(TypeError, match="float32"):
        normal_cdf_f32(np.zeros(3))
