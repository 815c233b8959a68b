"""Every sampler stays in its range after rounding to its dtype, refuses bad arguments with a
message naming it, and keeps the float32/float64 streams of 76c14af."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fundl import random

F16, F32, F64 = np.float16, np.float32, np.float64


# ----------------------------------------------------------------------------- uniform

def test_float16_uniform_never_returns_one():
    """On 76c14af float64 draws in [1 - 2**-12, 1) rounded to float16 1.0 (about 1 in 4096)."""
    u = random.uniform(random.key(0), (200_000,), F16)
    assert u.dtype == F16 and u.min() >= 0 and u.max() < 1
    assert u.max() == np.nextafter(F16(1), F16(0))     # the largest float16 below 1 does occur


@pytest.mark.parametrize("dtype", [F32, F64])
def test_uniform_on_a_one_ulp_interval_never_returns_high(dtype):
    """low + u * (high - low) rounds to high for about half the draws when the interval is one
    ulp wide (on 76c14af: 50% of the float32 draws equalled high)."""
    high = np.nextafter(dtype(1), dtype(2))
    u = random.uniform(random.key(1), (10_000,), dtype, 1.0, float(high))
    assert (u == 1.0).all()


@settings(max_examples=200, deadline=None, database=None)
@given(dtype=st.sampled_from([F16, F32, F64]), low=st.floats(-1e4, 1e4),
       width=st.floats(1e-3, 1e4), seed=st.integers(0, 2 ** 32 - 1))
def test_uniform_lies_in_low_high_in_every_dtype(dtype, low, width, seed):
    high = low + width
    try:
        u = random.uniform(random.key(seed), (2000,), dtype, low, high)
    except ValueError as err:   # no number of the dtype in [low, high): said so
        assert "no float16 number lies in" in str(err)
        return
    assert u.dtype == dtype
    assert (u.astype(F64) >= low).all() and (u.astype(F64) < high).all(), (low, high)


def test_uniform_arguments():
    k = random.key(0)
    with pytest.raises(ValueError, match=r"uniform needs low < high, got low=1.0, high=1.0"):
        random.uniform(k, (3,), F32, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"uniform: low must be finite, got nan"):
        random.uniform(k, (3,), F32, float("nan"), 1.0)
    with pytest.raises(ValueError, match=r"uniform: no float16 number lies in \[0.1, 0.10001\)"):
        random.uniform(k, (3,), F16, 0.1, 0.10001)
    with pytest.raises(ValueError, match=r"high - low overflows float16"):
        random.uniform(k, (3,), F16, -40000.0, 40000.0)
    with pytest.raises(ValueError, match=r"uniform: shape must be a tuple of non-negative ints"):
        random.uniform(k, (2.5,), F32)
    with pytest.raises(TypeError, match=r"uniform: high must be a real number, got str"):
        random.uniform(k, (3,), F32, 0.0, "1")


# ----------------------------------------------------------------------------- truncated normal

@settings(max_examples=100, deadline=None, database=None)
@given(dtype=st.sampled_from([F16, F32, F64]), std=st.floats(1e-3, 1e3),
       bound=st.floats(1e-3, 4.0), seed=st.integers(0, 2 ** 32 - 1))
def test_truncated_normal_stays_within_the_bound_in_every_dtype(dtype, std, bound, seed):
    t = random.truncated_normal(random.key(seed), (500,), dtype, std, bound)
    assert t.dtype == dtype and (np.abs(t.astype(F64)) <= bound * std).all()


def test_a_tiny_bound_finishes_and_a_zero_bound_is_refused():
    """On 76c14af bound=0 (or negative) redrew forever and bound=1e-6 took about 10**6 rounds of
    redraws; run in a subprocess so that a regression cannot hang the suite."""
    code = ("import numpy as np; from fundl import random as r; "
            "t = r.truncated_normal(r.key(0), (20000,), np.float64, 1.0, 1e-6); "
            "print(float(np.abs(t).max()), float(t.mean()), float(np.abs(t).mean()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.returncode == 0, out.stderr
    biggest, mean, mean_abs = map(float, out.stdout.split())
    assert biggest <= 1e-6 and abs(mean) < 1e-7 and abs(mean_abs - 0.5e-6) < 2e-8  # ~uniform
    for bound in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"truncated_normal needs std >= 0 and bound > 0"):
            random.truncated_normal(random.key(0), (3,), F32, 1.0, bound)


def test_a_narrow_truncated_normal_has_the_truncated_normal_density():
    """bound < 0.1 draws from a uniform proposal: the variance of N(0,1) truncated to [-b, b]
    is b^2/3 - b^4/45 + ..., about b^2/3 for b = 0.05."""
    t = random.truncated_normal(random.key(4), (200_000,), F64, 1.0, 0.05)
    b = 0.05
    var = (b ** 2 / 3) * (1 - b ** 2 / 15)
    assert abs(t.var() / var - 1) < 0.01 and abs(t.mean()) < 1e-4


# ----------------------------------------------------------------------------- bernoulli

def test_bernoulli_resolves_the_cell_that_contains_p():
    """A float32 draw u is a multiple of 2**-24: when u is the multiple just below p, the entry
    is True with probability frac(p * 2**24). On 76c14af p was rounded to float32 and that
    cell went one way only (P(True) off by up to 2**-24: p = 1e-9 gave 6e-8)."""
    trues = 0
    for seed in range(400):
        k = random.key(seed)
        u0 = random.generator(k).random((1,), dtype=F32)[0]   # the first entry's draw
        p = float(u0) + 0.5 * 2.0 ** -24                      # halfway through u0's cell
        trues += bool(random.bernoulli(k, p, (1,))[0])
    assert 150 < trues < 250, trues                           # P = 1/2


def test_bernoulli_frequencies_and_arguments():
    m = random.bernoulli(random.key(9), 0.3, (100_000,))
    assert m.dtype == bool and abs(m.mean() - 0.3) < 0.005
    assert random.bernoulli(random.key(1), 1.0, (1000,)).all()
    assert not random.bernoulli(random.key(1), 0.0, (1000,)).any()
    with pytest.raises(ValueError, match=r"bernoulli needs 0 <= p <= 1, got 1.5"):
        random.bernoulli(random.key(0), 1.5, (3,))
    with pytest.raises(ValueError, match=r"bernoulli: p must be finite, got nan"):
        random.bernoulli(random.key(0), float("nan"), (3,))
    with pytest.raises(TypeError, match=r"bernoulli: p must be a real number, got ndarray"):
        random.bernoulli(random.key(0), np.array([0.1, 0.2]), (2,))


# ----------------------------------------------------------------------------- integers, keys, categorical

def test_randint_permutation_split_fold_in_arguments():
    k = random.key(0)
    r = random.randint(k, (10_000,), -3, 4, np.int8)
    assert r.dtype == np.int8 and r.min() == -3 and r.max() == 3
    with pytest.raises(TypeError, match=r"randint: low must be an integer, got float 0.5"):
        random.randint(k, (3,), 0.5, 3)     # on 76c14af: truncated to 0, below low
    with pytest.raises(TypeError, match=r"randint: high must be an integer, got float 2.5"):
        random.randint(k, (3,), 0, 2.5)     # on 76c14af: truncated to 2
    with pytest.raises(ValueError, match=r"randint needs low < high, got low=3, high=3"):
        random.randint(k, (3,), 3, 3)
    with pytest.raises(ValueError, match=r"randint: \[0, 300\) does not fit int8"):
        random.randint(k, (3,), 0, 300, np.int8)
    with pytest.raises(TypeError, match=r"randint: dtype must be an integer dtype, got float32"):
        random.randint(k, (3,), 0, 3, np.float32)
    with pytest.raises(ValueError, match=r"permutation: n must be >= 0, got -1"):
        random.permutation(k, -1)           # on 76c14af: an empty permutation
    with pytest.raises(TypeError, match=r"permutation: n must be an integer, got float"):
        random.permutation(k, 3.0)          # on 76c14af: a raw AxisError
    with pytest.raises(TypeError, match=r"split: n must be an integer, got float 1.5"):
        random.split(k, 1.5)                # on 76c14af: one key
    with pytest.raises(ValueError, match=r"fold_in: data must be >= 0, got -1"):
        random.fold_in(k, -1)               # on 76c14af: the key of 2**63 - 1
    with pytest.raises(ValueError, match=r"fold_in: data must be < 2\*\*63"):
        random.fold_in(k, 2 ** 63)          # on 76c14af: the key of 0
    assert not np.array_equal(random.fold_in(k, 2 ** 63 - 1), random.fold_in(k, 0))


@pytest.mark.parametrize("logits, what", [
    (np.array([0.0, np.nan, 1.0]), "NaN or \\+inf logits"),
    (np.array([0.0, np.inf, 1.0]), "NaN or \\+inf logits"),
    (np.array([[0.0, 1.0], [-np.inf, -np.inf]]), "a row of logits that are all -inf"),
])
def test_categorical_refuses_logits_without_a_distribution(logits, what):
    """On 76c14af: an all -inf row returned class 0 (probability 0); NaN and +inf picked
    their first index."""
    with pytest.raises(ValueError, match=f"categorical: {what}"):
        random.categorical(random.key(0), logits)


def test_normal_arguments():
    with pytest.raises(ValueError, match="normal needs std >= 0, got -1.0"):
        random.normal(random.key(0), (3,), F32, 0.0, -1.0)
    with pytest.raises(ValueError, match="normal: mean must be finite"):
        random.normal(random.key(0), (3,), F32, float("inf"), 1.0)


# ----------------------------------------------------------------------------- the same streams

def _streams():
    h = hashlib.sha256()
    for seed in range(3):
        k = random.key(seed)
        for dt in (F32, F64):
            h.update(random.uniform(k, (1000,), dt).tobytes())
            h.update(random.uniform(k, (1000,), dt, -0.3, 0.7).tobytes())
            h.update(random.normal(k, (1000,), dt, 1.0, 0.02).tobytes())
            h.update(random.truncated_normal(k, (1000,), dt, 0.05, 2.0).tobytes())
        h.update(random.bernoulli(k, 0.3, (1000,)).tobytes())
        h.update(random.randint(k, (100,), -5, 17).tobytes())
        h.update(random.permutation(k, 100).tobytes())
    return h.hexdigest()


def test_float32_and_float64_streams_are_those_of_76c14af():
    """The range fixes change only draws that were out of range: this sha256 of float32 and
    float64 uniform/normal/truncated-normal draws, bernoulli masks, randint and permutation
    was recorded on 76c14af (numpy 2.4, Philox; no libm-dependent draw is included)."""
    assert _streams() == "7828d9314f7952afef4ed24bddc15bc716e05d8cfc43e4b684b45b86461a722e"
