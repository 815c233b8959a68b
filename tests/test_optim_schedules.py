"""Learning-rate schedules: exact values at chosen steps."""

import math

import pytest

from fundl import optim
from fundl.optim import schedules


def _close(a, b):
    assert a == pytest.approx(b, rel=0, abs=1e-15), (a, b)


def test_exported_from_both_places():
    assert optim.cosine_decay is schedules.cosine_decay
    assert optim.join_schedules is schedules.join_schedules


def test_constant():
    s = schedules.constant(0.3)
    assert [s(0), s(10), s(10 ** 6)] == [0.3, 0.3, 0.3]
    assert isinstance(s(5), float)


def test_piecewise_constant_both_spellings():
    a = schedules.piecewise_constant([100, 200], [1.0, 0.1, 0.01])
    b = schedules.piecewise_constant({0: 1.0, 100: 0.1, 200: 0.01})
    c = schedules.piecewise_constant([(200, 0.01), (0, 1.0), (100, 0.1)])
    for s in (a, b, c):
        assert [s(0), s(99), s(100), s(199), s(200), s(10 ** 6)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    with pytest.raises(ValueError):
        schedules.piecewise_constant([100], [1.0])
    with pytest.raises(ValueError):
        schedules.piecewise_constant({10: 1.0})


def test_exponential_decay():
    s = schedules.exponential_decay(2.0, 0.5, 10)
    _close(s(0), 2.0)
    _close(s(10), 1.0)
    _close(s(5), 2.0 * 0.5 ** 0.5)
    _close(s(30), 0.25)
    st = schedules.exponential_decay(2.0, 0.5, 10, staircase=True)
    assert [st(0), st(9), st(10), st(19), st(20)] == [2.0, 2.0, 1.0, 1.0, 0.5]


def test_cosine_decay():
    s = schedules.cosine_decay(1.0, 100)
    _close(s(0), 1.0)
    _close(s(50), 0.5)
    _close(s(25), 0.5 * (1 + math.cos(math.pi / 4)))
    _close(s(100), 0.0)
    _close(s(150), 0.0)
    a = schedules.cosine_decay(2.0, 100, alpha=0.1)
    _close(a(0), 2.0)
    _close(a(50), 2.0 * (0.9 * 0.5 + 0.1))
    _close(a(100), 0.2)
    _close(a(1000), 0.2)


def test_warmup_cosine():
    s = schedules.warmup_cosine(1.0, 10, 110, end=0.1)   # 10 warm-up steps, then 100 cosine steps
    _close(s(0), 0.0)
    _close(s(1), 0.1)
    _close(s(5), 0.5)
    _close(s(10), 1.0)
    _close(s(60), 0.1 + 0.9 * 0.5)
    _close(s(35), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    _close(s(110), 0.1)
    _close(s(500), 0.1)
    z = schedules.warmup_cosine(3.0, 0, 10)
    _close(z(0), 3.0)
    _close(z(10), 0.0)


def test_join_schedules_shifts_the_step():
    warm = lambda step: 0.1 * step  # noqa: E731
    s = schedules.join_schedules([warm, schedules.constant(1.0), schedules.cosine_decay(1.0, 10)],
                                 [10, 20])
    _close(s(0), 0.0)
    _close(s(9), 0.9)
    assert s(10) == 1.0 and s(19) == 1.0
    _close(s(20), 1.0)            # cosine_decay(0)
    _close(s(25), 0.5)            # cosine_decay(5)
    _close(s(30), 0.0)
    seen = []
    rec = schedules.join_schedules([lambda t: 0.0, lambda t: seen.append(t) or 0.0], [7])
    rec(7), rec(12)
    assert seen == [0, 5]
    with pytest.raises(ValueError):
        schedules.join_schedules([warm, warm], [])
