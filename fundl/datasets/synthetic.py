"""Synthetic tasks generated from an explicit key."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .. import random

__all__ = ["linear_regression", "spirals"]


def linear_regression(key: Any, n: int, in_features: int = 10, out_features: int = 2
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The seed tutorial's task: recover a random linear map.

    Returns float32 ``(x, y, w_real, b_real)``: ``x`` of shape ``(n, in_features)``,
    ``w_real`` of shape ``(in_features, out_features)`` (fundl's dense layout;
    the seed's is the transpose), ``b_real`` of shape ``(out_features,)``, all
    uniform in ``[0, 1)``, and ``y = x @ w_real + b_real`` of shape ``(n, out_features)``.
    """
    if n < 1 or in_features < 1 or out_features < 1:
        raise ValueError(f"linear_regression needs n, in_features, out_features >= 1, "
                         f"got {n}, {in_features}, {out_features}")
    k_x, k_w, k_b = random.split(key, 3)
    x = random.uniform(k_x, (n, in_features), np.float32)
    w_real = random.uniform(k_w, (in_features, out_features), np.float32)
    b_real = random.uniform(k_b, (out_features,), np.float32)
    y = x @ w_real
    y += b_real
    return x, y, w_real, b_real


def spirals(key: Any, n_per_class: int, classes: int = 3, noise: float = 0.2
            ) -> Tuple[np.ndarray, np.ndarray]:
    """Interleaved 2-D spirals, one arm per class (the CS231n toy problem).

    Arm ``j`` has points at radius ``r`` in ``[0, 1]`` and angle
    ``4 j + 4 r + noise * N(0, 1)`` (radians); points ``(r sin t, r cos t)``.
    Returns ``x`` float32 of shape ``(n_per_class * classes, 2)`` and ``y`` int64
    labels, shuffled by ``key``.
    """
    if n_per_class < 1 or classes < 1:
        raise ValueError(f"spirals needs n_per_class, classes >= 1, got {n_per_class}, {classes}")
    if noise < 0:
        raise ValueError(f"spirals needs noise >= 0, got {noise}")
    k_noise, k_order = random.split(key)
    r = np.tile(np.linspace(0.0, 1.0, n_per_class), classes)
    labels = np.repeat(np.arange(classes, dtype=np.int64), n_per_class)
    theta = 4.0 * labels + 4.0 * r + noise * random.normal(k_noise, r.shape, np.float64)
    x = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1).astype(np.float32)
    order = random.permutation(k_order, labels.shape[0])
    return x[order], labels[order]
