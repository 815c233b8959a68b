"""Optimizers, gradient transforms and learning-rate schedules.

An optimizer is a pair of pure functions (see :mod:`fundl.optim.base`)::

    opt_state = opt.init(params)
    params, opt_state = opt.update(params, grads, opt_state, lr)

Optimizers: :func:`sgd`, :func:`momentum`, :func:`nesterov`, :func:`adagrad`,
:func:`rmsprop`, :func:`adam`, :func:`adamw`, :func:`adamax`, :func:`lion`.
Transforms compose with :func:`chain`, e.g.
``chain(clip_by_global_norm(1.0), adam())``; :func:`accumulate` averages
gradients over ``k`` calls.  :func:`freeze`, :func:`masked`,
:func:`multi_transform` and :func:`scale_lr` freeze parameters or give groups
of them their own optimizer (:mod:`fundl.optim.masking`).  Schedules live in
:mod:`fundl.optim.schedules`.
"""

from . import schedules
from .accumulate import AccumulateState, accumulate
from .adagrad import AdagradState, adagrad, scale_by_rss
from .adam import AdamaxState, AdamState, adam, adamax, adamw, scale_by_adam, scale_by_adamax
from .base import GradientTransform, Optimizer, chain, descend
from .lion import LionState, lion, scale_by_lion
from .mask import Mask
from .masking import (MaskedState, MaskError, MultiTransformState, freeze, masked,
                      multi_transform, scale_lr, set_to_zero)
from .rmsprop import RMSState, rmsprop, scale_by_rms
from .schedules import (constant, cosine_decay, exponential_decay, join_schedules,
                        piecewise_constant, warmup_cosine)
from .sgd import TraceState, momentum, nesterov, sgd, trace
from .transforms import add_weight_decay, clip_by_global_norm, clip_by_value, identity, scale

__all__ = [
    "Optimizer", "GradientTransform", "chain", "descend",
    "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "adamax", "lion",
    "accumulate", "masked", "freeze", "multi_transform", "set_to_zero", "scale_lr",
    "MaskedState", "MultiTransformState", "MaskError", "Mask",
    "trace", "scale_by_rss", "scale_by_rms", "scale_by_adam", "scale_by_adamax", "scale_by_lion",
    "clip_by_global_norm", "clip_by_value", "add_weight_decay", "scale", "identity",
    "TraceState", "AdagradState", "RMSState", "AdamState", "AdamaxState", "LionState",
    "AccumulateState",
    "schedules", "constant", "piecewise_constant", "exponential_decay", "cosine_decay",
    "warmup_cosine", "join_schedules",
]
