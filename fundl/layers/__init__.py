"""Layers, one family per file.  Each function returns a :class:`fundl.Layer`."""

from ..core import elementwise_layer
from .activations import (elu, gelu, leaky_relu, log_softmax, relu, sigmoid, silu, softmax,
                          softplus, tanh)
from .attention import multi_head_attention
from .conv import conv1d, conv2d
from .conv_transpose import conv_transpose1d, conv_transpose2d
from .dense import dense
from .dropout import dropout
from .embedding import embedding, tied_output
from .norm import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from .positional import positional_embedding, sinusoidal_positions
from .pool import avg_pool1d, avg_pool2d, global_avg_pool, max_pool1d, max_pool2d
from .attention import KVCache, attend_cached, kv_cache
from .recurrent import bidirectional, cell, gru, lstm, rnn, zero_carry
from .reshape import flatten, reshape
from .upsample import upsample2d

__all__ = [
    "dense",
    "relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "sigmoid", "tanh", "softmax",
    "log_softmax",
    "flatten", "reshape", "upsample2d",
    "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d",
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "global_avg_pool",
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
    "dropout",
    "elementwise_layer",
    "embedding", "tied_output", "positional_embedding", "sinusoidal_positions",
    "rnn", "gru", "lstm", "bidirectional",
    "multi_head_attention",
    "cell", "zero_carry", "KVCache", "kv_cache", "attend_cached",
]
