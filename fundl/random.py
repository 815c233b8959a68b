"""Pure random keys: the only source of randomness in fundl.

A key is a read-only ``uint64`` array of shape ``(2,)``.  The same key always
gives the same numbers, in any process; no global random state is read or
changed.  Use a key once: split it to get fresh ones::

    k = fundl.random.key(0)
    k_init, k_data = fundl.random.split(k)
    w = fundl.random.normal(k_init, (784, 512), np.float32)

Numbers are drawn with numpy's Philox counter-based generator keyed by the
128-bit key.  Splitting derives child keys by a SplitMix64 hash of the parent
key and the child's index (cheap: a training step splits keys for every
layer), so a key's children are unrelated to the numbers it draws itself.
"""

from __future__ import annotations

import struct
from typing import Any, Optional, Tuple

import numpy as np

Key = np.ndarray
DTypeLike = Any

__all__ = [
    "Key", "key", "split", "fold_in", "generator",
    "uniform", "normal", "truncated_normal", "bernoulli", "randint", "permutation",
    "categorical",
]

_MASK64 = (1 << 64) - 1
_pack_words = struct.Struct("=QQ").pack   # two native uint64 words
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    """SplitMix64's finaliser: a bijective hash of a 64-bit integer."""
    z = (z + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


_SALTS = tuple(_mix64(i) for i in range(256))


def _derive(a: int, b: int, salt: int) -> Key:
    """The child key number ``salt`` of the key ``(a, b)``: two SplitMix64 rounds."""
    s = _SALTS[salt] if salt < 256 else _mix64(salt & _MASK64)
    hi = _mix64(a ^ s)
    lo = _mix64(b ^ hi)
    return np.frombuffer(_pack_words(hi, lo), _UINT64)   # read-only: made from bytes


def _frozen(words: np.ndarray) -> Key:
    words = np.ascontiguousarray(words, dtype=np.uint64).reshape(2)
    words.flags.writeable = False
    return words


_UINT64 = np.dtype(np.uint64)


def _check_key(k: Any) -> Key:
    if type(k) is np.ndarray and k.dtype is _UINT64 and k.shape == (2,):
        return k  # the common case, without a dtype comparison
    if not (isinstance(k, np.ndarray) and k.dtype == np.uint64 and k.shape == (2,)):
        raise TypeError(
            "expected a fundl random key (uint64 array of shape (2,), made by "
            f"fundl.random.key(seed)), got {type(k).__name__}"
            + (f" with dtype {k.dtype} and shape {k.shape}" if isinstance(k, np.ndarray) else ""))
    return k


def key(seed: int) -> Key:
    """A new key from a non-negative integer seed."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return _frozen(np.random.SeedSequence(int(seed)).generate_state(2, np.uint64))


def _integer(who: str, name: str, value: Any) -> int:
    """``value`` as an int: an int or numpy integer (a float is never truncated)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{who}: {name} must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def _whole(who: str, name: str, value: Any, low: int = 0) -> int:
    """``value`` as an int, checked to be an integer ``>= low``."""
    value = _integer(who, name, value)
    if value < low:
        raise ValueError(f"{who}: {name} must be >= {low}, got {value}")
    return int(value)


def _real(who: str, name: str, value: Any) -> float:
    """``value`` as a finite Python float (not a bool, not a string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{who}: {name} must be a real number, got {type(value).__name__} "
                        f"{value!r}")
    out = float(value)
    if not np.isfinite(out):
        raise ValueError(f"{who}: {name} must be finite, got {out}")
    return out


def _shape(who: str, shape: Any) -> Tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints (an int is a 1-D shape)."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"{who}: shape must be a tuple of ints, got {shape!r}") from None
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(f"{who}: shape must be a tuple of non-negative ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def split(k: Key, n: int = 2) -> Tuple[Key, ...]:
    """``n`` new independent keys derived from ``k`` (a tuple)."""
    _check_key(k)
    if type(n) is not int or n < 1:
        n = _whole("split", "n", n, 1)
    a, b = k.tolist()
    if n <= 2:  # a training step's split, without the generator (2.2 -> 1.8 us for n=1)
        return (_derive(a, b, 0), _derive(a, b, 2)) if n == 2 else (_derive(a, b, 0),)
    return tuple(_derive(a, b, 2 * i) for i in range(n))


def fold_in(k: Key, data: int) -> Key:
    """A new key from ``k`` and an integer ``0 <= data < 2**63`` (for example a step number);
    distinct ``data`` give distinct keys."""
    _check_key(k)
    data = _whole("fold_in", "data", data)
    if data > _MASK64 >> 1:   # it would wrap onto data - 2**63's key
        raise ValueError(f"fold_in: data must be < 2**63, got {data}")
    a, b = k.tolist()
    return _derive(a, b, 2 * data + 1)


def generator(k: Key) -> np.random.Generator:
    """A fresh numpy Generator determined by ``k`` (for draws this module lacks)."""
    _check_key(k)
    return np.random.Generator(np.random.Philox(key=np.asarray(k, dtype=np.uint64)))


def _float_dtype(dtype: DTypeLike) -> np.dtype[np.floating]:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"expected a floating dtype, got {dtype}")
    return dtype


def _inside(dtype: np.dtype[np.floating], low: float, high: float
            ) -> Tuple[np.floating, np.floating]:
    """The smallest and the largest numbers of ``dtype`` in ``[low, high)`` (compared in
    float64: a float16 compared with a Python float would round the float first)."""
    down, up = dtype.type(-np.inf), dtype.type(np.inf)
    with np.errstate(over="ignore"):
        lo, hi = dtype.type(low), dtype.type(high)
    if float(lo) < low:       # low rounded down: the next number up is the first inside
        lo = np.nextafter(lo, up)
    while float(hi) >= high:  # high itself (or the number it rounded up to) is outside
        hi = np.nextafter(hi, down)
    return lo, hi


def uniform(k: Key, shape: Tuple[int, ...], dtype: DTypeLike = np.float32,
            low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Uniform numbers in ``[low, high)`` of the given shape and float dtype.

    Every number returned lies in ``[low, high)``, also where rounding to ``dtype``
    would reach ``high`` (float16's 1.0, or ``low + u (high - low)`` rounding up to
    ``high``): such draws become the largest number of ``dtype`` below ``high``.
    The draws are numpy's Philox ``random`` in float32/float64 (float64 rounded to
    float16), mapped to ``[low, high)`` in ``dtype``.
    """
    dtype = _float_dtype(dtype)
    shape = _shape("uniform", shape)
    low, high = _real("uniform", "low", low), _real("uniform", "high", high)
    if not low < high:
        raise ValueError(f"uniform needs low < high, got low={low}, high={high}")
    default = low == 0.0 and high == 1.0
    lo, hi = _inside(dtype, low, high)
    with np.errstate(over="ignore"):
        span = dtype.type(high - low)
    if not (lo <= hi and np.isfinite(span)):
        raise ValueError(f"uniform: no {dtype} number lies in [{low}, {high}), or high - low "
                         f"overflows {dtype}")
    gen = generator(k)
    if dtype in (np.float32, np.float64):
        u = gen.random(shape, dtype=dtype)
        if default:   # numpy's draws lie in [0, 1) in their own dtype: nothing to clip
            return u
    else:
        u = gen.random(shape).astype(dtype)
    if not default:
        u = u * span + dtype.type(low)
    return np.clip(u, lo, hi, out=u)


def normal(k: Key, shape: Tuple[int, ...], dtype: DTypeLike = np.float32,
           mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """Normal numbers of the given shape and float dtype (``mean`` finite, ``std >= 0``)."""
    dtype = _float_dtype(dtype)
    shape = _shape("normal", shape)
    mean, std = _real("normal", "mean", mean), _real("normal", "std", std)
    if std < 0:
        raise ValueError(f"normal needs std >= 0, got {std}")
    gen = generator(k)
    if dtype in (np.float32, np.float64):
        z = gen.standard_normal(shape, dtype=dtype)
    else:
        z = gen.standard_normal(shape).astype(dtype)
    if mean != 0.0 or std != 1.0:
        z = z * dtype.type(std) + dtype.type(mean)
    return z


#: Below this ``bound`` a normal draw lands inside less than 8% of the time: the draws come
#: from a uniform proposal on ``[-bound, bound]`` accepted with probability
#: ``exp(-z^2 / 2)`` (>= 99.5% here) instead of redrawn normals (which never finished for
#: a bound near 0).
_NARROW = 0.1


def truncated_normal(k: Key, shape: Tuple[int, ...], dtype: DTypeLike = np.float32,
                     std: float = 1.0, bound: float = 2.0) -> np.ndarray:
    """Normal numbers with mean 0 and scale ``std``, conditioned on ``|z| <= bound``
    (``bound > 0`` standard deviations): every number returned has
    ``|x| <= bound * std`` in ``dtype`` too."""
    dtype = _float_dtype(dtype)
    shape = _shape("truncated_normal", shape)
    std, bound = _real("truncated_normal", "std", std), _real("truncated_normal", "bound", bound)
    if std < 0 or not bound > 0:
        raise ValueError(f"truncated_normal needs std >= 0 and bound > 0, got std={std}, "
                         f"bound={bound}")
    gen = generator(k)
    if bound >= _NARROW:
        z = gen.standard_normal(shape)
        bad = np.abs(z) > bound
        while bad.any():
            z[bad] = gen.standard_normal(int(bad.sum()))
            bad = np.abs(z) > bound
    else:
        z = gen.uniform(-bound, bound, shape)
        bad = gen.random(shape) >= np.exp(-0.5 * z * z)
        while bad.any():
            m = int(bad.sum())
            z[bad] = gen.uniform(-bound, bound, m)
            again = gen.random(m) >= np.exp(-0.5 * z[bad] ** 2)
            bad[bad] = again
    with np.errstate(over="ignore"):
        out = (z * std).astype(dtype)
        limit = dtype.type(bound * std)
    while float(limit) > bound * std:   # rounded up: the largest number of dtype inside
        limit = np.nextafter(limit, dtype.type(0))
    return np.clip(out, -limit, limit, out=out)


#: bernoulli's draws are float32 multiples of 2**-24; the one cell that contains ``p`` is
#: resolved with more bits, so that P(True) is ``p`` exactly.
_CELL = 2 ** 24


def bernoulli(k: Key, p: float, shape: Tuple[int, ...]) -> np.ndarray:
    """Boolean array, each entry True with probability ``p`` (a number in ``[0, 1]``).

    An entry is True when its float32 uniform draw ``u`` (a multiple of ``2**-24``) is
    below ``p``; when ``u`` is the multiple just below ``p`` it is True with probability
    ``frac(p * 2**24)``, decided by float64 draws that follow ``u`` in the key's stream.
    So P(True) is ``p`` exactly, also for ``p`` below ``2**-24`` or near 1.
    """
    p = _real("bernoulli", "p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"bernoulli needs 0 <= p <= 1, got {p}")
    shape = _shape("bernoulli", shape)
    gen = generator(k)
    u = gen.random(shape, dtype=np.float32)
    cell = np.floor(p * _CELL)              # exact: p * 2**24 only shifts the exponent
    edge = np.float32(cell / _CELL)         # a multiple of 2**-24 below 1: a float32
    out = u < edge
    frac = p * _CELL - cell
    if frac > 0.0 and cell < _CELL:
        on_edge = u == edge
        n = int(np.count_nonzero(on_edge))
        if n:
            out[on_edge] = gen.random(n) < frac
    return out


def randint(k: Key, shape: Tuple[int, ...], low: int, high: int,
            dtype: DTypeLike = np.int64) -> np.ndarray:
    """Integers in ``[low, high)`` (``low < high``, both integers that ``dtype`` holds)."""
    shape = _shape("randint", shape)
    low, high = _integer("randint", "low", low), _integer("randint", "high", high)
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        raise TypeError(f"randint: dtype must be an integer dtype, got {dtype}")
    if not low < high:
        raise ValueError(f"randint needs low < high, got low={low}, high={high}")
    info = np.iinfo(dtype)
    if low < info.min or high - 1 > info.max:
        raise ValueError(f"randint: [{low}, {high}) does not fit {dtype} "
                         f"([{info.min}, {info.max}])")
    return generator(k).integers(low, high, size=shape, dtype=dtype)


def permutation(k: Key, n: int) -> np.ndarray:
    """A random permutation of ``range(n)`` (int64), ``n >= 0`` an integer."""
    n = _whole("permutation", "n", n)
    return generator(k).permutation(n)


def categorical(k: Key, logits: Any, axis: int = -1,
                shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """Class indices (int64) drawn with probabilities ``softmax(logits, axis)``.

    Uses the Gumbel-max trick: ``argmax(logits - log(-log(u)), axis)`` with
    ``u ~ uniform(k)`` in float64, so the draw is deterministic for a key.
    ``logits`` is any float array (unnormalised log-probabilities; ``-inf``
    marks an impossible class); ``axis`` is its class axis.  The result has
    ``shape``, which defaults to ``logits.shape`` without ``axis`` and must
    otherwise be broadcast-compatible with it (e.g. ``shape=(1000,)`` for 1000
    draws from one 1-D ``logits``), as in ``jax.random.categorical``.
    """
    logits = np.asarray(logits)
    if logits.dtype.kind not in "fiu" or logits.ndim < 1:
        raise ValueError(f"categorical needs real logits with a class axis, got dtype "
                         f"{logits.dtype} and shape {logits.shape}")
    if not -logits.ndim <= axis < logits.ndim:
        raise ValueError(f"categorical: axis {axis} is out of range for logits of shape "
                         f"{logits.shape}")
    moved = np.moveaxis(logits.astype(np.float64, copy=False), axis, -1)
    batch = moved.shape[:-1]
    shape = batch if shape is None else _shape("categorical", shape)
    try:
        ok = np.broadcast_shapes(shape, batch) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"categorical: shape {shape} is not broadcast-compatible with the "
                         f"logits' batch shape {batch} (logits shape {logits.shape}, axis {axis})")
    bad = np.isnan(moved) | (moved == np.inf)
    if bad.any() or not (moved > -np.inf).any(axis=-1).all():
        what = ("NaN or +inf logits" if bad.any() else
                "a row of logits that are all -inf (no possible class)")
        raise ValueError(f"categorical: {what}; logits must be finite or -inf (an impossible "
                         f"class), with at least one finite logit per row")
    u = generator(k).random(shape + moved.shape[-1:])
    with np.errstate(divide="ignore"):
        gumbel = -np.log(-np.log(u))      # u == 0 gives -inf: never chosen
    return np.argmax(moved + gumbel, axis=-1).astype(np.int64, copy=False)
