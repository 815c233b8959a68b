"""The catalogue of built-in layer cases shared by the generated tests
(:mod:`test_layouts`, :mod:`test_empty_batch`): every layer builder that ``fundl``
exports, in one or two small configurations each, multi-input forms included."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import numpy as np

import fundl as fl
from fundl import random


# --- the cases -----------------------------------------------------------------------

def f32(shape, seed=1):
    """A float32 normal array (fixed seed)."""
    return random.normal(random.key(seed), shape, np.float32)


def _lengths(b, t):
    """Lengths for ``b`` sequences of ``t`` steps: full, short, empty, ..."""
    return np.array([t, max(1, t - 2), 0, 1][:b] + [t] * max(0, b - 4), np.int64)


def _mask(b, t, s=None):
    m = (np.arange(b * (s or t)).reshape(b, s or t) % 3) != 1      # some keys masked
    return m if s is None else m.reshape(b, s)


class Case(NamedTuple):
    """``make(b, n) -> (layer, in_shape, x)``: a layer, its per-example input shape and an
    input batch of ``b`` examples; ``n`` (2 to 4) varies the other sizes."""

    builder: str
    make: Callable[[int, int], Tuple[Any, Any, Any]]


def _one(build, shape_of, x_of=None):
    """A single-float-input case: ``shape_of(n)`` the per-example shape."""
    def make(b, n):
        shape = shape_of(n)
        return build(), shape, f32((b,) + shape) if x_of is None else x_of(b, n)
    return make


CASES: Dict[str, Case] = {}


def _add(case_id, builder, make):
    CASES[case_id] = Case(builder, make)


for _name in ("relu", "elu", "gelu", "silu", "softplus", "sigmoid", "tanh"):
    _add(_name, _name, _one(getattr(fl, _name), lambda n: (n, 3)))
_add("leaky_relu", "leaky_relu", _one(lambda: fl.leaky_relu(0.1), lambda n: (n, 3)))
_add("leaky_relu(-0.5)", "leaky_relu", _one(lambda: fl.leaky_relu(-0.5), lambda n: (4, n)))
_add("gelu(approximate)", "gelu", _one(lambda: fl.gelu(approximate=True), lambda n: (n,)))
_add("softmax", "softmax", _one(fl.softmax, lambda n: (2, n + 1)))
_add("softmax(axis=1)", "softmax", _one(lambda: fl.softmax(axis=1), lambda n: (n, 3)))
_add("log_softmax", "log_softmax", _one(fl.log_softmax, lambda n: (2, n + 1)))
_add("log_softmax(axis=1)", "log_softmax", _one(lambda: fl.log_softmax(axis=1),
                                                lambda n: (n, 3)))
_add("dense", "dense", _one(lambda: fl.dense(3), lambda n: (n, 4)))
_add("dense(no bias)", "dense", _one(lambda: fl.dense(2, use_bias=False), lambda n: (n + 1,)))
_add("flatten", "flatten", _one(fl.flatten, lambda n: (n, 2, 3)))
_add("reshape", "reshape", _one(lambda: fl.reshape((2, -1)), lambda n: (n, 4)))
_add("batch_norm", "batch_norm", _one(fl.batch_norm, lambda n: (n, 3)))
_add("batch_norm(axis=1)", "batch_norm", _one(lambda: fl.batch_norm(axis=1),
                                              lambda n: (3, n, 2)))
_add("layer_norm", "layer_norm", _one(fl.layer_norm, lambda n: (n, 4)))
_add("group_norm", "group_norm", _one(lambda: fl.group_norm(2), lambda n: (n, 3, 4)))
_add("instance_norm(affine)", "instance_norm", _one(lambda: fl.instance_norm(affine=True),
                                                    lambda n: (n, 3, 2)))
_add("rms_norm", "rms_norm", _one(fl.rms_norm, lambda n: (n, 4)))
_add("dropout", "dropout", _one(lambda: fl.dropout(0.5), lambda n: (n, 3)))
_add("embedding", "embedding", lambda b, n: (
    fl.embedding(7, 3), (n,), (np.arange(b * n).reshape(b, n) * 5) % 7))
_add("conv1d", "conv1d", _one(lambda: fl.conv1d(3, 2), lambda n: (n + 2, 2)))
_add("conv1d(grouped)", "conv1d", _one(
    lambda: fl.conv1d(4, 3, padding="same", stride=2, groups=2), lambda n: (n + 3, 2)))
_add("conv2d", "conv2d", _one(lambda: fl.conv2d(3, 2), lambda n: (n + 1, n + 2, 2)))
_add("conv2d(many channels)", "conv2d", _one(
    lambda: fl.conv2d(2, 3, padding="same", dilation=(1, 2)), lambda n: (n + 1, n + 2, 6)))
_add("conv2d(depthwise)", "conv2d", _one(
    lambda: fl.conv2d(4, 3, padding=1, stride=2, groups=2), lambda n: (n + 2, n + 1, 2)))
_add("conv_transpose1d", "conv_transpose1d", _one(
    lambda: fl.conv_transpose1d(3, 3, stride=2), lambda n: (n, 2)))
_add("conv_transpose2d", "conv_transpose2d", _one(
    lambda: fl.conv_transpose2d(2, 3, stride=2, padding=1, output_padding=1),
    lambda n: (n, n + 1, 3)))
_add("max_pool1d", "max_pool1d", _one(lambda: fl.max_pool1d(2), lambda n: (2 * n, 3)))
_add("max_pool2d", "max_pool2d", _one(lambda: fl.max_pool2d(2), lambda n: (2 * n, 4, 2)))
_add("max_pool2d(overlap)", "max_pool2d", _one(
    lambda: fl.max_pool2d(3, stride=2, padding=1), lambda n: (n + 2, n + 3, 2)))
_add("avg_pool1d", "avg_pool1d", _one(lambda: fl.avg_pool1d(2, padding=1), lambda n: (n, 3)))
_add("avg_pool2d", "avg_pool2d", _one(lambda: fl.avg_pool2d(2), lambda n: (2 * n, 4, 2)))
_add("global_avg_pool", "global_avg_pool", _one(fl.global_avg_pool, lambda n: (n, 3, 2)))
_add("upsample2d", "upsample2d", _one(lambda: fl.upsample2d(2), lambda n: (n, 2, 3)))
_add("upsample2d(bilinear)", "upsample2d", _one(
    lambda: fl.upsample2d((2, 3), "bilinear"), lambda n: (n, 2, 2)))
_add("positional_embedding", "positional_embedding", _one(
    lambda: fl.positional_embedding(6), lambda n: (n, 3)))
_add("sinusoidal_positions", "sinusoidal_positions", _one(
    fl.sinusoidal_positions, lambda n: (n, 5)))
_add("rnn", "rnn", _one(lambda: fl.rnn(3), lambda n: (n, 2)))
_add("rnn(relu, last)", "rnn", _one(lambda: fl.rnn(3, activation="relu",
                                                   return_sequences=False), lambda n: (n, 1)))
_add("gru(lengths)", "gru", lambda b, n: (
    fl.gru(3, with_lengths=True), ((n + 1, 2), ()), (f32((b, n + 1, 2)), _lengths(b, n + 1))))
_add("gru(state, last)", "gru", lambda b, n: (
    fl.gru(2, with_initial_state=True, return_state=True, return_sequences=False),
    ((n, 3), (2,)), (f32((b, n, 3)), f32((b, 2), seed=3))))
_add("lstm", "lstm", _one(lambda: fl.lstm(3), lambda n: (n, 2)))
_add("lstm(lengths, state)", "lstm", lambda b, n: (
    fl.lstm(2, with_lengths=True, with_initial_state=True, return_state=True),
    ((n + 1, 3), (), ((2,), (2,))),
    (f32((b, n + 1, 3)), _lengths(b, n + 1), (f32((b, 2), seed=3), f32((b, 2), seed=4)))))
_add("bidirectional", "bidirectional", _one(lambda: fl.bidirectional(fl.gru(3)),
                                            lambda n: (n, 2)))
_add("bidirectional(lengths, sum)", "bidirectional", lambda b, n: (
    fl.bidirectional(fl.lstm(2, with_lengths=True), merge="sum"), ((n + 1, 3), ()),
    (f32((b, n + 1, 3)), _lengths(b, n + 1))))
_add("multi_head_attention", "multi_head_attention", _one(
    lambda: fl.multi_head_attention(2), lambda n: (n, 4)))
_add("multi_head_attention(masked, causal)", "multi_head_attention", lambda b, n: (
    fl.multi_head_attention(2, masked=True, causal=True), ((n + 1, 4), (n + 1,)),
    (f32((b, n + 1, 4)), _mask(b, n + 1))))
_add("multi_head_attention(cross, masked, dropout)", "multi_head_attention", lambda b, n: (
    fl.multi_head_attention(2, cross=True, masked=True, dropout=0.3, head_dim=3),
    ((n, 4), (n + 1, 3), (n, n + 1)),
    (f32((b, n, 4)), f32((b, n + 1, 3), seed=2), _mask(b, n, n * (n + 1)).reshape(b, n, n + 1))))
_add("serial", "serial", _one(lambda: fl.serial(fl.dense(3), fl.relu(), fl.layer_norm()),
                              lambda n: (n, 2)))
_add("identity", "identity", _one(fl.identity, lambda n: (n, 3)))
_add("parallel", "parallel", lambda b, n: (
    fl.parallel(fl.dense(2), fl.tanh()), ((n, 3), (2,)), (f32((b, n, 3)), f32((b, 2), seed=2))))
_add("fan_out", "fan_out", _one(lambda: fl.fan_out(2), lambda n: (n, 3)))
_add("fan_in_sum", "fan_in_sum", lambda b, n: (
    fl.fan_in_sum(), ((n, 3), (n, 3)), (f32((b, n, 3)), f32((b, n, 3), seed=2))))
_add("fan_in_concat", "fan_in_concat", lambda b, n: (
    fl.fan_in_concat(), ((n, 3), (n, 2)), (f32((b, n, 3)), f32((b, n, 2), seed=2))))
_add("residual", "residual", _one(lambda: fl.residual(fl.dense(3)), lambda n: (n, 3)))
_add("take", "take", lambda b, n: (
    fl.serial(fl.take(1), fl.dense(2)), ((n, 3), (2,)), (f32((b, n, 3)), f32((b, 2), seed=2))))
_add("eval_mode", "eval_mode", _one(lambda: fl.eval_mode(fl.serial(fl.batch_norm(), fl.dropout(0.5))),
                                    lambda n: (n, 3)))


def _siamese():
    enc = fl.shared(fl.serial(fl.dense(3), fl.tanh()))
    return fl.serial(fl.fan_out(2), fl.parallel(enc, enc), fl.fan_in_sum())


_add("shared", "shared", _one(_siamese, lambda n: (n, 2)))


def _tied_lm():
    emb = fl.shared(fl.embedding(7, 3))
    return fl.serial(emb, fl.dense(3), fl.tied_output(emb))


_add("tied_output", "tied_output", lambda b, n: (
    _tied_lm(), (n,), (np.arange(b * n).reshape(b, n) * 5) % 7))
_add("elementwise_layer", "elementwise_layer", _one(
    lambda: fl.elementwise_layer("cube", lambda x: x * x * x, lambda x, y, dy: 3 * x * x * dy,
                                 saves="x"), lambda n: (n, 3)))



def layer_builders() -> List[str]:
    """The layer builders ``fundl`` exports: the layers and the combinators in its __all__."""
    from fundl import combinators, layers
    exported = set(layers.__all__) | set(combinators.__all__)
    return sorted(n for n in fl.__all__ if n in exported)
