"""Layers, one family per file.  Each function returns a :class:`fundl.Layer`."""

from .activations import relu, sigmoid, tanh
from .dense import dense

__all__ = ["dense", "relu", "sigmoid", "tanh"]
