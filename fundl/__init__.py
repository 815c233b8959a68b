"""fundl: deep learning as plain, pure functions on numpy.

See README.md for a tour.  Every layer is a :class:`Layer` of pure functions
``(init, apply, vjp)``; models are built with combinators such as
:func:`serial`; training is a pure step function.
"""

from . import initializers, losses, optim, random, tree
from .combinators import fan_in_concat, fan_in_sum, fan_out, identity, parallel, residual, serial
from .core import Layer, LayerError, elementwise_layer, stateless_layer
from .gradcheck import GradCheckError, GradCheckResult, check_vjp
from .layers import dense, relu, sigmoid, tanh
from .losses import Loss
from .train import TrainState, make_step

__version__ = "0.1.0"

__all__ = [
    "Layer", "LayerError", "stateless_layer", "elementwise_layer",
    "serial", "identity", "parallel", "fan_out", "fan_in_sum", "fan_in_concat", "residual",
    "dense", "relu", "tanh", "sigmoid",
    "Loss", "losses", "optim", "random", "tree", "initializers",
    "check_vjp", "GradCheckResult", "GradCheckError",
    "TrainState", "make_step",
]
