"""Every loss at extreme values -- huge and tiny predictions, many examples -- in float16, float32
and float64, against a float64 reference written here from the formulas.

float16 losses are computed in float32 and rounded once: on 76c14af the float16 training path
(value_and_grad) summed per-example losses in float16 and overflowed (softmax cross-entropy of
(32, 1024, 100) logits: value 5.094 but value_and_grad inf; kl_divergence NaN at 40k examples).
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fundl as fl
from fundl import losses

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
RTOL = {F16: 3e-3, F32: 2e-5, F64: 1e-11}
#: Largest magnitude of the predictions per dtype, so that the float64 loss is (mostly)
#: representable in float32/float64 sums: float16 goes to its whole range, which is where
#: its float32 working precision matters.
MAX_EXP = {F16: 4.4, F32: 15.0, F64: 100.0}
MIN_EXP = {F16: -7.0, F32: -30.0, F64: -300.0}


# ----------------------------------------------------------------------------- float64 references

def _lse(z):
    m = z.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_ce(z, a, divisor):
    """sum_ic a_ic (lse_i - z_ic) / D and its gradient (softmax sum_c a - a) / D; and the
    scale sum |terms| / D (the terms are >= 0: the value itself)."""
    if divisor == 0:
        return 0.0, np.zeros_like(z), 0.0
    terms = a * (_lse(z) - z)
    value = terms.sum() / divisor
    grad = (_softmax(z) * a.sum(axis=-1, keepdims=True) - a) / divisor
    return value, grad, np.abs(terms).sum() / divisor


def ce_weights(z, target, smoothing=0.0, w=None, ignore=None):
    """The target weighting a and the divisor D of cross_entropy's docstring, in float64."""
    n, c = z.shape
    w = np.ones(c) if w is None else np.asarray(w, np.float64)
    if target.dtype.kind in "iu":
        keep = np.ones(n, bool) if ignore is None else target != ignore
        safe = np.where(keep, target, 0)
        row_w = w[safe] * keep
        a = np.zeros((n, c))
        a[np.arange(n), safe] = row_w * (1 - smoothing)
        a += (keep[:, None] * w[None, :]) * (smoothing / c)
        return a, row_w.sum()
    t = target.astype(np.float64)
    return w * ((1 - smoothing) * t + smoothing / c), float(n)


def reference(name, pred, target, opts):
    """(value, gradient, scale) in float64 of loss ``name`` on float64 copies of the inputs."""
    p = pred.astype(np.float64)
    if name in ("mse", "l1", "huber"):
        d = p - target.astype(np.float64)
        n = d.size
        if name == "mse":
            return (d * d).mean(), 2 * d / n, (d * d).mean()
        if name == "l1":
            return np.abs(d).mean(), np.sign(d) / n, np.abs(d).mean()
        delta = opts["delta"]
        cost = np.where(np.abs(d) <= delta, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
        return cost.mean(), np.clip(d, -delta, delta) / n, cost.mean()
    if name in ("sce", "ce"):
        c = p.shape[-1]
        z = p.reshape(-1, c)
        t = target.reshape(-1) if target.dtype.kind in "iu" else target.reshape(-1, c)
        a, divisor = ce_weights(z, t, opts.get("label_smoothing", 0.0), opts.get("weights"),
                                opts.get("ignore_index"))
        v, g, s = ref_ce(z, a, divisor)
        return v, g.reshape(p.shape), s
    if name == "nll":
        c = p.shape[-1]
        z = p.reshape(-1, c)
        y = target.reshape(-1)
        n = y.size
        g = np.zeros_like(z)
        g[np.arange(n), y] = -1.0 / n
        picked = z[np.arange(n), y]
        return -picked.mean(), g.reshape(p.shape), np.abs(picked).mean()
    if name == "kl":
        t = target.astype(np.float64)
        n = p.size // p.shape[-1]
        log_t = np.log(np.where(t > 0, t, 1.0))
        terms = t * log_t - t * p
        return terms.sum() / n, -t / n, (np.abs(t * log_t) + np.abs(t * p)).sum() / n
    if name == "bce":
        t = target.astype(np.float64)
        pw = np.asarray(opts.get("pos_weight", 1.0), np.float64)
        soft = np.log1p(np.exp(-np.abs(p)))
        cost = np.maximum(p, 0) - p * t + soft + (pw - 1) * t * (np.maximum(-p, 0) + soft)
        sig = np.where(p >= 0, 1.0, np.exp(-np.abs(p))) / (1.0 + np.exp(-np.abs(p)))
        grad = (sig - t + (pw - 1) * t * (sig - 1)) / p.size
        return cost.mean(), grad, np.abs(cost).mean()
    raise AssertionError(name)


def make_loss(name, opts):
    if name == "mse":
        return losses.mse
    if name == "l1":
        return losses.l1
    if name == "huber":
        return losses.huber(opts["delta"])
    if name == "sce":
        return losses.softmax_cross_entropy
    if name == "ce":
        return losses.cross_entropy(**opts)
    if name == "nll":
        return losses.nll
    if name == "kl":
        return losses.kl_divergence
    if name == "bce":
        return losses.binary_cross_entropy_with_logits(pos_weight=opts.get("pos_weight"))
    raise AssertionError(name)


# ----------------------------------------------------------------------------- the comparison

def close(got, want, scale, dtype, what):
    """``got`` (in ``dtype``) equals the float64 ``want`` up to the dtype's rounding: relative
    ``RTOL`` of the value plus of ``scale`` (the magnitude of what was summed) and half the
    smallest subnormal; where ``want`` is beyond the dtype's range, ``got`` must be inf."""
    got = np.asarray(got)
    assert got.dtype == dtype, (what, got.dtype, dtype)
    got64, want = got.astype(np.float64), np.asarray(want, np.float64)
    big = np.finfo(dtype).max
    rtol = RTOL[dtype]
    over = ~np.isfinite(got64)
    if over.any():   # only where the true value is at (or beyond) the dtype's largest number
        assert (np.abs(want[over] if want.ndim else want) >= big * (1 - rtol)).all(), \
            (what, "inf where the float64 value is", want)
        assert np.isnan(got64).sum() == 0, (what, "NaN")
    ok = np.abs(got64 - want) <= rtol * (np.abs(want) + scale) + np.finfo(dtype).smallest_subnormal
    assert (ok | over).all(), (what, dtype, float(np.max(np.abs(got64 - want)[~over], initial=0)),
                               float(np.max(np.abs(want))))


def run(name, opts, pred, target):
    loss = make_loss(name, opts)
    want_v, want_g, scale = reference(name, pred, target, opts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no overflow or invalid-value warning either
        v = loss.value(pred, target)
        v2, g = loss.value_and_grad(pred, target)
    close(v, want_v, scale, pred.dtype, f"{name}{opts} value")
    close(v2, want_v, scale, pred.dtype, f"{name}{opts} value_and_grad's value")
    assert g.shape == pred.shape and g.dtype == pred.dtype
    close(g, want_g, np.max(np.abs(want_g)), pred.dtype, f"{name}{opts} gradient")
    return v, v2, g


# ----------------------------------------------------------------------------- inputs

def _scaled(rng, shape, dtype, exp, spread):
    """Normal draws times 10**exp, a random part of them times 10**(exp - spread): huge and tiny
    values side by side, all finite in ``dtype``."""
    x = rng.standard_normal(shape) * 10.0 ** exp
    x *= np.where(rng.random(shape) < 0.3, 10.0 ** -spread, 1.0)
    big = np.finfo(dtype).max / 2
    return np.clip(x, -big, big).astype(dtype)


def inputs(name, opts, dtype, n, c, exp, spread, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c)
    if name in ("mse", "l1", "huber"):
        return _scaled(rng, shape, dtype, exp, spread), _scaled(rng, shape, dtype, exp, spread)
    if name == "bce":
        t = rng.random(shape)
        t[rng.random(shape) < 0.3] = 1.0
        t[rng.random(shape) < 0.3] = 0.0
        return _scaled(rng, shape, dtype, exp, spread), t.astype(dtype)
    if name == "kl":
        t = rng.random(shape) ** 3
        t[rng.random(shape) < 0.2] = 0.0
        t /= np.maximum(t.sum(axis=-1, keepdims=True), 1e-300)
        return -np.abs(_scaled(rng, shape, dtype, exp, spread)), t.astype(dtype)
    z = _scaled(rng, shape, dtype, exp, spread)
    if name in ("sce", "ce") and opts.get("probs"):
        t = rng.random(shape)
        t /= t.sum(axis=-1, keepdims=True)
        return z, t.astype(dtype)
    y = rng.integers(0, c, n)
    if opts.get("ignore_index") is not None:
        y[rng.random(n) < 0.25] = opts["ignore_index"]
    return z, y


LOSSES = [
    ("mse", {}), ("l1", {}), ("huber", {"delta": 1.0}), ("huber", {"delta": 300.0}),
    ("sce", {}), ("sce", {"probs": True}),
    ("ce", {"label_smoothing": 0.1, "ignore_index": -1}),
    ("ce", {"label_smoothing": 0.2, "weights": [0.5, 2.0, 1.0, 0.0, 3.0, 1.0, 1.0, 1.0]}),
    ("ce", {"label_smoothing": 0.1, "probs": True}),
    ("nll", {}), ("kl", {}), ("bce", {}), ("bce", {"pos_weight": 30.0}),
]


def _opts(opts):
    return {k: v for k, v in opts.items() if k != "probs"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(LOSSES), dtype=st.sampled_from([F16, F32, F64]),
       n=st.sampled_from([1, 3, 64, 1000, 6000]), exp=st.floats(0.0, 1.0),
       spread=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 32 - 1))
def test_every_loss_at_extreme_values_matches_float64(case, dtype, n, exp, spread, seed):
    """Magnitudes from 10**MIN_EXP to 10**MAX_EXP of each dtype (``exp`` and ``spread`` in
    [0, 1] pick where), 1 to 6000 examples of 8 classes."""
    name, opts = case
    lo, hi = MIN_EXP[dtype], MAX_EXP[dtype]
    e = lo + exp * (hi - lo)
    pred, target = inputs(name, opts, dtype, n, 8, e, spread * (e - lo), seed)
    run(name, _opts(opts), pred, target)


@pytest.mark.parametrize("name, opts", [("sce", {}), ("ce", {"label_smoothing": 0.1, "ignore_index": -1})])
def test_float16_cross_entropy_on_the_training_path(name, opts):
    """(32, 1024, 100) float16 logits: value_and_grad gave inf on 76c14af (the float16 sum of
    32768 per-token losses); now the float32 value rounded once to float16 (within 1e-3 of it
    relatively; float16's spacing at 5.1 is 3.9e-3, so 1e-3 absolute is below its resolution)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((32, 1024, 100)).astype(np.float16)
    y = rng.integers(0, 100, (32, 1024))
    if opts.get("ignore_index") is not None:
        y[:, -100:] = -1
    loss = make_loss(name, opts)
    v16, g16 = loss.value_and_grad(z, y)
    v32, g32 = loss.value_and_grad(z.astype(np.float32), y)
    assert v16.dtype == np.float16 and g16.dtype == np.float16
    assert v16 == v32.astype(np.float16), (float(v16), float(v32))   # correctly rounded
    assert abs(float(v16) - float(v32)) < 1e-3 * float(v32), (float(v16), float(v32))
    assert abs(float(loss.value(z, y)) - float(v32)) < 1e-3 * float(v32)
    np.testing.assert_allclose(g16.astype(np.float32), g32, rtol=2e-3, atol=6e-8)


def test_float16_kl_divergence_at_40k_examples():
    """NaN on 76c14af (inf - inf of two float16 sums)."""
    rng = np.random.default_rng(1)
    t = rng.dirichlet(np.ones(10), 40000)
    p = np.log(rng.dirichlet(np.ones(10), 40000))
    v16, g16 = losses.kl_divergence.value_and_grad(p.astype(np.float16), t.astype(np.float16))
    v64 = reference("kl", p.astype(np.float16), t.astype(np.float16), {})[0]
    assert np.isfinite(v16) and abs(float(v16) - v64) < 1e-3 * v64
    assert abs(float(losses.kl_divergence(p.astype(np.float16), t.astype(np.float16))) - v64) < 1e-3 * v64


@pytest.mark.parametrize("name, opts", LOSSES)
def test_float16_many_examples_of_large_values(name, opts):
    """20000 examples whose float16 per-example losses sum far beyond 65504: every loss finite
    and within float16 rounding of float64."""
    pred, target = inputs(name, opts, F16, 20000, 8, 2.0, 0.0, 7)
    v, v2, g = run(name, _opts(opts), pred, target)
    assert np.isfinite(v) and np.isfinite(v2) and np.isfinite(g).all()


def test_only_float16_is_computed_in_another_dtype():
    """float32 and float64 run as they are: no copy (their values are bit-identical to
    76c14af's), float16 in float32."""
    from fundl.losses._base import working
    for dtype in (np.float32, np.float64):
        x = np.ones((2, 3), dtype)
        assert working(x) is x
    assert working(np.ones(3, np.float16)).dtype == np.float32


# ----------------------------------------------------------------------------- exact gradients

CHECKED = [
    (losses.mse, "real"), (losses.l1, "real"), (losses.huber(0.3), "real"),
    (losses.softmax_cross_entropy, "labels"), (losses.softmax_cross_entropy, "probs"),
    (losses.cross_entropy(label_smoothing=0.1, ignore_index=-1), "labels_ignored"),
    (losses.cross_entropy(label_smoothing=0.2, weights=[0.5, 2.0, 1.0, 0.1]), "labels"),
    (losses.cross_entropy(label_smoothing=0.1, weights=[0.5, 2.0, 1.0, 0.1]), "probs"),
    (losses.nll, "labels"), (losses.kl_divergence, "probs"), (losses.sigmoid_binary_cross_entropy, "unit"),
    (losses.binary_cross_entropy_with_logits(pos_weight=[3.0, 0.5, 1.0, 2.0]), "unit"),
]


@pytest.mark.parametrize("shape", [(3, 4), (2, 5, 4), (1, 4)])
@pytest.mark.parametrize("loss, kind", CHECKED, ids=[f"{loss.name}-{k}" for loss, k in CHECKED])
def test_every_loss_passes_check_vjp_in_float64(loss, kind, shape):
    rng = np.random.default_rng(sum(shape))
    lead = shape[:-1]
    if kind == "real":
        target = rng.standard_normal(shape) * 3
    elif kind == "unit":
        target = rng.random(shape)
    elif kind == "probs":
        target = rng.random(shape)
        target /= target.sum(axis=-1, keepdims=True)
    else:
        target = rng.integers(0, shape[-1], lead)
        if kind == "labels_ignored":
            target.reshape(-1)[::3] = -1
    result = fl.check_vjp(loss, shape[1:], target=target, batch=shape[0])
    assert result.max_error < 1e-7, result
