"""Datasets: small synthetic tasks, MNIST-1D (built offline) and an IDX file reader."""

from .idx import IdxError, load_idx
from .mnist_1d import MNIST1D_SIZES, mnist1d
from .synthetic import linear_regression, spirals

__all__ = ["linear_regression", "spirals", "mnist1d", "MNIST1D_SIZES", "load_idx", "IdxError"]
