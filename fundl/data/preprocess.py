"""Splits, one-hot labels and standardisation (fit on train, apply to test)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple, Union

import numpy as np

from .. import random
from .batching import Arrays, as_arrays

__all__ = ["train_test_split", "one_hot", "Standardizer", "standardize"]


def train_test_split(key: Any, arrays: Arrays, test_fraction: Optional[float] = None, *,
                     test_size: Union[None, float, int] = None) -> Tuple[Any, Any]:
    """Shuffle with ``key`` and split into ``(train, test)``.

    ``arrays`` is a tuple of arrays sharing axis 0 (or one array); each of
    ``train`` and ``test`` is a tuple like it (or a bare array).  The size of the
    test part is given by exactly one of ``test_fraction`` (``0 < f < 1``:
    ``round(f * n)`` examples, at least one and leaving at least one for
    training) or ``test_size`` (scikit-learn's spelling: a float in ``(0, 1)`` is
    a fraction as above, an int ``1 <= k < n`` a number of examples).
    """
    seq, single = as_arrays(arrays, "train_test_split")
    n = seq[0].shape[0]
    if n < 2:
        raise ValueError(f"train_test_split needs at least 2 examples, got {n}")
    if (test_fraction is None) == (test_size is None):
        raise ValueError("train_test_split needs exactly one of test_fraction or test_size "
                         "(e.g. test_size=0.2 or test_size=100)")
    if test_size is not None and isinstance(test_size, (int, np.integer)) \
            and not isinstance(test_size, bool):
        if not 1 <= int(test_size) < n:
            raise ValueError(f"train_test_split: an integer test_size counts examples and must "
                             f"be in [1, {n}), got {test_size}")
        n_test = int(test_size)
    else:
        name = "test_fraction" if test_size is None else "test_size"
        fraction = test_fraction if test_size is None else test_size
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.number)) \
                or not 0.0 < float(fraction) < 1.0:
            raise ValueError(f"train_test_split: {name} must be a fraction in (0, 1), got "
                             f"{fraction!r}")
        n_test = min(max(int(round(float(fraction) * n)), 1), n - 1)
    order = random.permutation(key, n)
    test_idx, train_idx = order[:n_test], order[n_test:]
    train = tuple(a[train_idx] for a in seq)
    test = tuple(a[test_idx] for a in seq)
    if single:
        return train[0], test[0]
    return train, test


def one_hot(labels: Any, num_classes: int, dtype: Any = np.float32) -> np.ndarray:
    """One-hot rows: integer ``labels`` of shape ``s`` give shape ``(*s, num_classes)``.

    Raises ``ValueError`` for non-integer labels or labels outside ``[0, num_classes)``.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"one_hot: labels must be integers, got dtype {labels.dtype}")
    if int(num_classes) < 1:
        raise ValueError(f"one_hot: num_classes must be >= 1, got {num_classes}")
    num_classes = int(num_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {num_classes}), "
                         f"got values in [{labels.min()}, {labels.max()}]")
    out = np.zeros(labels.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(out, labels[..., None].astype(np.intp, copy=False), 1, axis=-1)
    return out


class Standardizer(NamedTuple):
    """Per-feature ``mean`` and ``std`` (shape ``x.shape[1:]``), fitted on training data."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, eps: float = 1e-8) -> "Standardizer":
        """Statistics over axis 0 of ``x`` (float64 accumulation, stored in ``x``'s dtype).

        Features with a standard deviation below ``eps`` get ``std = 1`` (left unscaled).
        """
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise ValueError(f"Standardizer.fit: expected floating-point data, got dtype {x.dtype}")
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"Standardizer.fit: expected data of shape (n, ...), n >= 1, "
                             f"got shape {x.shape}")
        mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
        std = np.where(std < eps, 1.0, std)
        return cls(mean.astype(x.dtype), std.astype(x.dtype))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std``, in ``x``'s dtype; ``x`` is ``(n, *mean.shape)``."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise ValueError(f"Standardizer.apply: expected floating-point data, got dtype {x.dtype}")
        if tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(f"Standardizer.apply: expected data of shape (n, "
                             f"{', '.join(map(str, self.mean.shape))}), got shape {x.shape}")
        out = x - self.mean.astype(x.dtype, copy=False)
        out /= self.std.astype(x.dtype, copy=False)
        return out

    def invert(self, z: np.ndarray) -> np.ndarray:
        """``z * std + mean``: undo :meth:`apply`."""
        z = np.asarray(z)
        out = z * self.std.astype(z.dtype, copy=False)
        out += self.mean.astype(z.dtype, copy=False)
        return out


def standardize(x: np.ndarray, stats: Optional[Standardizer] = None
                ) -> Tuple[np.ndarray, Standardizer]:
    """``(standardised x, stats)``; fits ``stats`` on ``x`` unless given.

    Fit on the training set and reuse its statistics for the test set::

        x_train, stats = standardize(x_train)
        x_test, _ = standardize(x_test, stats)
    """
    if stats is None:
        stats = Standardizer.fit(x)
    return stats.apply(x), stats
