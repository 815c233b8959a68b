"""fundl: deep learning as plain, pure functions on numpy.

See README.md for a tour.  Every layer is a :class:`Layer` of pure functions
``(init, apply, vjp)``; models are built with combinators such as
:func:`serial`; training is a pure step function.

The submodules ``io``, ``datasets``, ``interop``, ``testing``, ``perf``, ``export``
and ``surgery`` are imported when first used (``fl.io.save(...)`` works after
``import fundl as fl``); ``fundl.distributed`` needs ``import fundl.distributed``
(and mpi4py).
"""

import importlib
from typing import Any

from . import data, initializers, losses, metrics, optim, plan, random, tree
from .checks import LayerError
from .combinators import (eval_mode, fan_in_concat, fan_in_sum, fan_out, identity, parallel,
                          residual, serial, shared, take)
from .core import Layer, Traits, builder, stateless_layer
from .gradcheck import GradCheckError, GradCheckResult, check_vjp
from .layers import (avg_pool1d, avg_pool2d, batch_norm, bidirectional, conv1d, conv2d,
                     conv_transpose1d, conv_transpose2d, dense, dropout, elementwise_layer, elu,
                     embedding, flatten, gelu, global_avg_pool, group_norm, gru, instance_norm,
                     layer_norm, leaky_relu, log_softmax, lstm, max_pool1d, max_pool2d,
                     multi_head_attention, positional_embedding, relu, reshape, rms_norm, rnn,
                     sigmoid, silu, sinusoidal_positions, softmax, softplus, tanh, tied_output,
                     upsample2d)
from .losses import Loss
from .summary import summary
from .fit import (CSVLogger, Callback, Control, EarlyStopping, LRFindResult, ModelCheckpoint,
                  NonFiniteLossError, ReduceLROnPlateau, TrainInfo, evaluate, fit, lr_find, predict)
from .step import TrainState, make_step, value_and_grad

from ._version import __version__ as __version__

_LAZY = ("io", "datasets", "interop", "testing", "perf", "export", "surgery")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fundl' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Layer", "Traits", "LayerError", "stateless_layer", "elementwise_layer", "builder",
    "serial", "identity", "parallel", "fan_out", "fan_in_sum", "fan_in_concat", "take",
    "residual", "shared", "eval_mode",
    "dense", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "sigmoid", "tanh",
    "softmax", "log_softmax", "flatten", "reshape", "batch_norm", "layer_norm", "dropout",
    "embedding", "tied_output", "conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d",
    "avg_pool2d", "global_avg_pool", "rnn", "gru", "lstm", "bidirectional",
    "multi_head_attention", "positional_embedding", "sinusoidal_positions",
    "conv_transpose1d", "conv_transpose2d", "group_norm", "instance_norm", "rms_norm",
    "upsample2d",
    "Loss", "losses", "optim", "random", "tree", "initializers",
    "check_vjp", "GradCheckResult", "GradCheckError",
    "TrainState", "make_step", "value_and_grad", "fit", "evaluate", "predict",
    "Callback", "Control", "TrainInfo", "EarlyStopping", "ReduceLROnPlateau", "CSVLogger",
    "ModelCheckpoint", "lr_find", "LRFindResult", "NonFiniteLossError", "summary",
    "data", "datasets", "io", "metrics", "perf", "plan", "interop", "testing", "export",
    "surgery",
]
