import subprocess
import sys

import numpy as np
import pytest

from fundl import random


def test_key_is_readonly_uint64_pair():
    k = random.key(42)
    assert k.dtype == np.uint64 and k.shape == (2,)
    assert not k.flags.writeable


def test_same_key_same_numbers_and_known_values():
    k = random.key(0)
    a = random.normal(k, (3,), np.float64)
    b = random.normal(k, (3,), np.float64)
    np.testing.assert_array_equal(a, b)
    # Pinned: the same key gives these numbers in any process, on any run.
    code = ("import numpy as np; from fundl import random as r; "
            "print(repr(r.normal(r.key(0), (3,), np.float64).tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert eval(out.stdout) == a.tolist()


def test_split_gives_distinct_deterministic_keys():
    k = random.key(1)
    ks = random.split(k, 5)
    assert len(ks) == 5
    assert len({tuple(x.tolist()) for x in ks} | {tuple(k.tolist())}) == 6
    for x, y in zip(ks, random.split(k, 5)):
        np.testing.assert_array_equal(x, y)
    # A prefix of a longer split equals the shorter split.
    for x, y in zip(random.split(k, 2), ks):
        np.testing.assert_array_equal(x, y)


def test_fold_in_distinct_per_data():
    k = random.key(3)
    keys = {tuple(random.fold_in(k, i).tolist()) for i in range(1000)}
    assert len(keys) == 1000


def test_draws_are_independent_across_keys():
    k1, k2 = random.split(random.key(0))
    a = random.normal(k1, (20000,), np.float64)
    b = random.normal(k2, (20000,), np.float64)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    assert abs(a.mean()) < 0.03 and abs(a.std() - 1) < 0.03


def test_no_global_state_read_or_changed():
    saved = np.random.get_state()
    np.random.seed(123)
    x = random.uniform(random.key(5), (4,))
    np.random.seed(999)
    y = random.uniform(random.key(5), (4,))
    np.testing.assert_array_equal(x, y)
    np.random.seed(5)
    expected_global = np.random.random(3)
    np.random.seed(5)
    random.split(random.key(1), 3)
    random.normal(random.key(1), (10,))
    np.testing.assert_array_equal(np.random.random(3), expected_global)  # untouched
    np.random.set_state(saved)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_dtypes_and_ranges(dtype):
    k = random.key(7)
    u = random.uniform(k, (1000,), dtype, -2.0, 3.0)
    assert u.dtype == dtype and u.min() >= -2 and u.max() < 3
    z = random.normal(k, (10, 3), dtype, 1.0, 2.0)
    assert z.dtype == dtype and z.shape == (10, 3)
    t = random.truncated_normal(k, (1000,), dtype, std=1.0, bound=2.0)
    assert t.dtype == dtype and np.abs(t).max() <= 2.0


def test_bernoulli_permutation_randint():
    k = random.key(9)
    m = random.bernoulli(k, 0.3, (100000,))
    assert m.dtype == bool and abs(m.mean() - 0.3) < 0.01
    p = random.permutation(k, 10)
    assert sorted(p.tolist()) == list(range(10))
    r = random.randint(k, (1000,), 2, 5)
    assert r.min() == 2 and r.max() == 4


def test_bad_keys_and_seeds():
    with pytest.raises(TypeError, match="fundl random key"):
        random.normal(np.array([1, 2]), (2,))
    with pytest.raises(ValueError):
        random.key(-1)
    with pytest.raises(TypeError):
        random.uniform(random.key(0), (2,), np.int32)


# --- categorical ----------------------------------------------------------------------

def _softmax(a, axis=-1):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_categorical_frequencies_match_softmax():
    logits = np.array([0.5, -1.0, 2.0, 0.0, -np.inf])
    n = 40000
    draws = random.categorical(random.key(3), logits, shape=(n,))
    assert draws.shape == (n,) and draws.dtype == np.int64
    counts = np.bincount(draws, minlength=5)
    p = _softmax(logits)
    assert counts[4] == 0                               # -inf: impossible class
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) < 5 * sigma + 1e-9), (counts, n * p)
    # deterministic for a key, different for another key
    np.testing.assert_array_equal(draws, random.categorical(random.key(3), logits, shape=(n,)))
    assert not np.array_equal(draws, random.categorical(random.key(4), logits, shape=(n,)))


def test_categorical_axis_and_batch_shapes():
    logits = np.log(np.array([[0.7, 0.1], [0.2, 0.3], [0.1, 0.6]]))   # classes on axis 0
    draws = random.categorical(random.key(5), logits, axis=0, shape=(20000, 2))
    assert draws.shape == (20000, 2) and draws.min() >= 0 and draws.max() <= 2
    for col in range(2):
        freq = np.bincount(draws[:, col], minlength=3) / 20000
        np.testing.assert_allclose(freq, _softmax(logits[:, col]), atol=0.02)
    # default shape: logits' shape without the class axis; float32 logits work
    one = random.categorical(random.key(6), np.zeros((4, 7), np.float32))
    assert one.shape == (4,) and one.dtype == np.int64
    # a dominant logit is always chosen
    assert np.all(random.categorical(random.key(7), np.array([[0.0, 50.0, 0.0]] * 9)) == 1)


def test_categorical_errors():
    with pytest.raises(ValueError, match="broadcast-compatible"):
        random.categorical(random.key(0), np.zeros((4, 3)), shape=(5,))
    with pytest.raises(ValueError, match="out of range"):
        random.categorical(random.key(0), np.zeros((4, 3)), axis=2)
    with pytest.raises(ValueError, match="class axis"):
        random.categorical(random.key(0), np.float64(1.0))
