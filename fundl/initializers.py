"""Weight initialisers: ``init(key, shape, dtype) -> array``.

Fan-in and fan-out follow the layout of fundl's weights: a dense ``w`` is
``(in, out)``; a conv kernel is ``(*window, c_in, c_out)``, so
``fan_in = prod(window) * c_in`` and ``fan_out = prod(window) * c_out``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Tuple

import numpy as np

from . import random

Initializer = Callable[[Any, Tuple[int, ...], Any], np.ndarray]

__all__ = [
    "Initializer", "fans", "zeros", "ones", "constant", "uniform", "normal",
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal",
    "orthogonal", "variance_scaling", "lecun_uniform", "torch_default",
]


def fans(shape: Tuple[int, ...]) -> Tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of this shape."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def zeros(key: Any, shape: Tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


def ones(key: Any, shape: Tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    return np.ones(shape, dtype)


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``."""
    def init(key, shape, dtype=np.float32):
        return np.full(shape, value, dtype)
    return init


def uniform(low: float = -0.05, high: float = 0.05) -> Initializer:
    """Uniform on ``[low, high)``."""
    def init(key, shape, dtype=np.float32):
        return random.uniform(key, shape, dtype, low, high)
    return init


def normal(std: float = 0.01) -> Initializer:
    """Normal with mean 0 and standard deviation ``std``."""
    def init(key, shape, dtype=np.float32):
        return random.normal(key, shape, dtype, 0.0, std)
    return init


def variance_scaling(scale: float, mode: str = "fan_in",
                     distribution: str = "normal") -> Initializer:
    """Zero-mean weights of variance ``scale / n``, ``n`` the fan-in, fan-out or their mean.

    ``mode`` is ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``; ``distribution`` is
    ``"normal"`` or ``"uniform"`` (on ``[-a, a)`` with ``a = sqrt(3 scale / n)``).
    Glorot, He and LeCun initialisers are special cases.
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")

    def init(key, shape, dtype=np.float32):
        fan_in, fan_out = fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        if distribution == "normal":
            return random.normal(key, shape, dtype, 0.0, math.sqrt(scale / n))
        limit = math.sqrt(3.0 * scale / n)
        return random.uniform(key, shape, dtype, -limit, limit)
    return init


#: LeCun uniform: U(-a, a) with a = sqrt(3 / fan_in).
lecun_uniform = variance_scaling(1.0, "fan_in", "uniform")

#: PyTorch's default for ``nn.Linear``/``nn.Conv*`` weights: U(-a, a) with
#: a = 1 / sqrt(fan_in) (its ``kaiming_uniform_(a=sqrt(5))``).
torch_default = variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def glorot_uniform(key: Any, shape: Tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """Glorot & Bengio (2010): U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return random.uniform(key, shape, dtype, -limit, limit)


def glorot_normal(key: Any, shape: Tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """Glorot & Bengio (2010): N(0, 2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return random.normal(key, shape, dtype, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))


def he_uniform(key: Any, shape: Tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """He et al. (2015), for ReLU: U(-a, a) with a = sqrt(6 / fan_in)."""
    fan_in, _ = fans(shape)
    limit = math.sqrt(6.0 / fan_in)
    return random.uniform(key, shape, dtype, -limit, limit)


def he_normal(key: Any, shape: Tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """He et al. (2015), for ReLU: N(0, 2 / fan_in)."""
    fan_in, _ = fans(shape)
    return random.normal(key, shape, dtype, 0.0, math.sqrt(2.0 / fan_in))


def lecun_normal(key: Any, shape: Tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """LeCun (1998): N(0, 1 / fan_in)."""
    fan_in, _ = fans(shape)
    return random.normal(key, shape, dtype, 0.0, math.sqrt(1.0 / fan_in))


def orthogonal(scale: float = 1.0) -> Initializer:
    """A (semi-)orthogonal matrix over the last two axes' flattening (Saxe et al., 2014)."""
    def init(key, shape, dtype=np.float32):
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        cols = shape[-1]
        a = random.normal(key, (max(rows, cols), min(rows, cols)), np.float64)
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (scale * q[:rows, :cols]).reshape(shape).astype(dtype)
    return init
