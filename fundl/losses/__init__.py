"""Losses: each gives its value and its exact gradient with respect to the prediction.

A :class:`Loss` is a named tuple of two pure functions::

    value = loss(pred, target)                       # same as loss.value(pred, target)
    value, dpred = loss.value_and_grad(pred, target)

``value`` is a 0-d numpy float in ``pred``'s dtype; ``dpred`` has ``pred``'s shape
and dtype.  Every loss averages (so ``dpred`` carries the ``1/N``): the
element-wise ones (``mse``, ``l1``, ``huber``, the binary cross-entropies) over
every element, the class ones (``softmax_cross_entropy``, ``cross_entropy``,
``nll``, ``kl_divergence``) over the examples, i.e. every position of the
leading axes, with the classes on the LAST axis.  A float16 prediction is computed
in float32 and its value and gradient rounded once to float16 (a float16 sum of
per-example losses would overflow past 65504); float32 and float64 run as they are.

A loss without options is a :class:`Loss` value (``fl.losses.mse``); a loss
with options is made by a factory that returns one
(``fl.losses.huber(delta=0.5)``, ``fl.losses.cross_entropy(label_smoothing=0.1)``),
and called without options the factory returns the plain Loss itself
(``cross_entropy() is softmax_cross_entropy``).  An empty batch, targets of the
wrong shape, NaN or negative probability targets and labels out of range raise
:class:`LossError` naming the loss.

- ``mse``, ``l1``, ``huber(delta=1.0)``: regression (torch's MSE, L1, Huber losses);
- ``softmax_cross_entropy`` and ``cross_entropy(label_smoothing=, weights=,
  ignore_index=)``: cross-entropy on logits (torch's ``CrossEntropyLoss``);
- ``nll``: negative log-likelihood of log-probabilities (torch's ``NLLLoss``);
- ``kl_divergence``: torch's ``KLDivLoss(reduction='batchmean')``;
- ``sigmoid_binary_cross_entropy`` and ``binary_cross_entropy_with_logits(pos_weight=)``:
  binary cross-entropy on logits (torch's ``BCEWithLogitsLoss``);
- ``combine(*losses, weights=)``: one loss over a model's tuple of outputs (two heads,
  a VAE's reconstruction and KL terms), the weighted sum of a loss per output.
"""

from __future__ import annotations

from ._base import Loss, LossError
from .combine import CombinedLoss, combine
from .binary import binary_cross_entropy_with_logits, sigmoid_binary_cross_entropy
from .cross_entropy import cross_entropy, softmax_cross_entropy
from .divergence import kl_divergence
from .nll import nll
from .regression import huber, l1, mse

__all__ = ["Loss", "LossError", "mse", "l1", "huber", "softmax_cross_entropy", "cross_entropy",
           "nll", "kl_divergence", "sigmoid_binary_cross_entropy",
           "binary_cross_entropy_with_logits", "combine", "CombinedLoss"]
