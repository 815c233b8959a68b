"""fundl: deep learning as plain, pure functions on numpy.

See README.md for a tour.  Every layer is a :class:`Layer` of pure functions
``(init, apply, vjp)``; models are built with combinators such as
:func:`serial`; training is a pure step function.
"""

from . import data, datasets, fusion, initializers, io, losses, metrics, optim, perf, random, tree
from .combinators import fan_in_concat, fan_in_sum, fan_out, identity, parallel, residual, serial
from .checks import LayerError
from .core import Layer, elementwise_layer, keyed_layer, stateless_layer
from .gradcheck import GradCheckError, GradCheckResult, check_vjp
from .layers import (avg_pool1d, avg_pool2d, batch_norm, bidirectional, conv1d, conv2d, dense,
                     dropout, elu, embedding, flatten, gelu, global_avg_pool, gru, layer_norm,
                     leaky_relu, log_softmax, lstm, max_pool1d, max_pool2d, multi_head_attention,
                     positional_embedding, sinusoidal_positions,
                     relu, reshape, rnn, sigmoid, silu, softmax, softplus, tanh,
                     conv_transpose1d, conv_transpose2d, group_norm, instance_norm, rms_norm,
                     upsample2d)
from .losses import Loss
from .summary import summary
from .fit import EarlyStopping, NonFiniteLossError, evaluate, fit, predict
from .step import TrainState, make_step

from ._version import __version__ as __version__

__all__ = [
    "Layer", "LayerError", "stateless_layer", "keyed_layer", "elementwise_layer",
    "serial", "identity", "parallel", "fan_out", "fan_in_sum", "fan_in_concat", "residual",
    "dense", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "sigmoid", "tanh",
    "softmax", "log_softmax", "flatten", "reshape", "batch_norm", "layer_norm", "dropout",
    "embedding", "conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
    "global_avg_pool", "rnn", "gru", "lstm", "bidirectional", "multi_head_attention",
    "positional_embedding", "sinusoidal_positions",
    "conv_transpose1d", "conv_transpose2d", "group_norm", "instance_norm", "rms_norm",
    "upsample2d",
    "Loss", "losses", "optim", "random", "tree", "initializers",
    "check_vjp", "GradCheckResult", "GradCheckError",
    "TrainState", "make_step", "fit", "evaluate", "predict", "EarlyStopping", "NonFiniteLossError",
    "summary",
    "data", "datasets", "fusion", "io", "metrics", "perf",
]
