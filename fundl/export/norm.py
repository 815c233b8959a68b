"""Normalisation layers to ONNX, in eval mode.

- ``batch_norm``: the affine map of its running statistics, folded at export exactly
  as fundl's eval mode computes it (``a = scale / sqrt(var + eps)``,
  ``b = bias - mean * a``): ``Mul``, ``Add`` along the feature axis.
- ``layer_norm``: ``LayerNormalization`` over the last axis.
- ``group_norm``, ``instance_norm``: ``x`` viewed as ``(batch, S, G, C/G)``, normalised
  over ``(S, C/G)`` with the biased variance, written out in ``ReduceMean``, ``Sub``,
  ``Mul``, ``Sqrt``, ``Reciprocal`` (ONNX's GroupNormalization is channels-first and
  changed meaning between opsets 18 and 21; InstanceNormalization is channels-first).
- ``rms_norm``: ``x / sqrt(mean(x^2) + eps) * scale`` written out (RMSNormalization
  is an opset-23 op).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..layers.norm import _feature_axis, _frozen_affine
from .site import Site, converts


@converts("batch_norm")
def batch_norm(s: Site, x: Any) -> Any:
    """``x * a + b`` per feature with fundl's eval-mode ``a`` and ``b`` (the layer's own
    :func:`~fundl.layers.norm._frozen_affine`)."""
    c = s.config
    rank = len(s.in_shape) + 1
    ax = _feature_axis(int(c["axis"]), rank)
    a, b, _ = _frozen_affine(s.params, s.state, c["eps"], c["use_scale"], c["use_bias"])
    bshape = (-1,) + (1,) * (rank - 1 - ax)        # broadcast along data axis ax
    y = s.g.op("Mul", x, s.g.const(a.reshape(bshape), "scale"))
    return s.g.op("Add", y, s.g.const(b.reshape(bshape), "shift"))


@converts("layer_norm")
def layer_norm(s: Site, x: Any) -> Any:
    """``LayerNormalization(axis=-1, epsilon)``; ones for an absent scale, no bias input for
    an absent bias."""
    c = s.config
    features = s.in_shape[-1]
    scale = s.param("scale") if c["use_scale"] else s.g.floats(np.ones(features), "ones")
    bias = s.param("bias") if c["use_bias"] else None
    return s.g.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=float(c["eps"]))


def normalised(s: Site, x: Any, axes: Any, eps: float, center: bool) -> Any:
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` (biased variance; ``center=False``:
    ``x / sqrt(mean(x^2) + eps)``), reductions kept for broadcasting."""
    g = s.g
    xc = g.op("Sub", x, g.reduce("ReduceMean", x, axes)) if center else x
    var = g.reduce("ReduceMean", g.op("Mul", xc, xc), axes)
    inv = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, g.floats(eps))))
    return g.op("Mul", xc, inv)


def scale_shift(s: Site, y: Any, scale: bool, bias: bool) -> Any:
    if scale:
        y = s.g.op("Mul", y, s.param("scale"))
    if bias:
        y = s.g.op("Add", y, s.param("bias"))
    return y


@converts("group_norm", "instance_norm")
def grouped_norm(s: Site, x: Any) -> Any:
    """Reshape to ``(batch, S, G, C/G)`` (``S`` the positions, ``G`` groups; one group per
    channel for instance norm), normalise over axes 1 and 3, reshape back, then
    ``* scale + bias`` per channel if affine."""
    c = s.config
    channels = s.in_shape[-1]
    groups = channels if s.kind == "instance_norm" else int(c["num_groups"])
    positions = math.prod(s.in_shape[:-1])
    x4 = s.g.reshape(x, (positions, groups, channels // groups))
    y = s.g.reshape(normalised(s, x4, [1, 3], float(c["eps"]), True), s.in_shape)
    return scale_shift(s, y, c["affine"], c["affine"])


@converts("rms_norm")
def rms_norm(s: Site, x: Any) -> Any:
    """``x * Reciprocal(Sqrt(ReduceMean(x * x, -1) + eps))``, then ``* scale`` if affine."""
    y = normalised(s, x, [-1], float(s.config["eps"]), False)
    return scale_shift(s, y, s.config["affine"], False)
