"""fundl.special: erf and erfc to float64 precision."""

import math

import numpy as np

from fundl.special import erf, erfc


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
