"""Elementwise activations.  Each is a parameter-free layer; shapes are unchanged."""

from __future__ import annotations

import numpy as np

from ..core import Layer, elementwise_layer

__all__ = ["relu", "tanh", "sigmoid"]


def _relu_forward(x):
    return np.maximum(x, 0)


def _relu_backward(x, y, dy):
    # y > 0 exactly where x > 0; the gradient at 0 is taken as 0.
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


def relu() -> Layer:
    """``max(x, 0)``; gradient 1 where ``x > 0``, else 0.  Any shape."""
    return elementwise_layer("relu", _relu_forward, _relu_backward, saves="y")


def _tanh_backward(x, y, dy):
    return dy * (1 - y * y)


def tanh() -> Layer:
    """``tanh(x)``; gradient ``1 - tanh(x)**2``.  Any shape."""
    return elementwise_layer("tanh", np.tanh, _tanh_backward, saves="y")


def _sigmoid_forward(x):
    # Stable for large |x|: exp only of non-positive numbers.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _sigmoid_backward(x, y, dy):
    return dy * y * (1 - y)


def sigmoid() -> Layer:
    """``1 / (1 + exp(-x))``, computed without overflow; gradient ``y (1 - y)``."""
    return elementwise_layer("sigmoid", _sigmoid_forward, _sigmoid_backward, saves="y")
