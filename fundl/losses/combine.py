"""One loss over a model's several outputs: a weighted sum of a loss per output.

::

    loss = fl.losses.combine(fl.losses.softmax_cross_entropy, fl.losses.mse, weights=(1.0, 0.5))
    loss((logits, values), (labels, targets))    # 1.0 * CE(logits, labels) + 0.5 * MSE(values, targets)

A VAE whose model returns ``(reconstruction, kl_term)`` combines its reconstruction loss with
a loss that passes the KL term through (``fl.losses.combine(fl.losses.mse, kl_loss)``); a
two-head model combines a classification and a regression loss.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ._base import Loss, LossError

__all__ = ["combine", "CombinedLoss"]


class CombinedLoss(Loss):
    """A :class:`Loss` made by :func:`combine`; ``parts`` lists ``(output index, loss, weight)``.

    :func:`fundl.evaluate` and :func:`fundl.fit` add each part's ``(S_i, W_i)`` up over the
    batches separately, so the value over a data set is exactly ``sum_i w_i S_i / W_i``.
    """


def combine(*losses: Loss, weights: Optional[Sequence[float]] = None, name: Optional[str] = None
            ) -> CombinedLoss:
    """The loss ``sum_i weights[i] * losses[i](pred[i], target[i])`` of a model with a tuple of
    outputs.

    ``pred`` and ``target`` are tuples with one element per loss (in the order of the model's
    outputs, e.g. ``fl.parallel(head_a, head_b)``); ``weights`` default to 1 each and must be
    finite and >= 0.  The gradient is the tuple ``(weights[i] * dpred_i)``, exact
    (``fl.check_vjp`` passes on it in float64); the value is in the first prediction's dtype.

    ``total_weight`` is the number of examples (axis 0 of the first prediction): exact for
    adding batches whenever each part's divisor is proportional to the examples (``mse`` on
    fixed-size outputs, cross-entropy without ``ignore_index`` or class ``weights``).
    :func:`fundl.evaluate` and fit's validation do not rely on it: they keep each part's
    ``(S_i, W_i)`` and are exact for every part (``metrics.loss_metric``).
    """
    if not losses:
        raise LossError("combine: needs at least one loss, e.g. combine(fl.losses.softmax_"
                        "cross_entropy, fl.losses.mse)")
    for i, loss in enumerate(losses):
        if not isinstance(loss, Loss):
            hint = " (a loss factory must be called, e.g. fl.losses.huber(1.0))" \
                if callable(loss) else ""
            raise LossError(f"combine: losses[{i}] must be a fundl Loss, got "
                            f"{type(loss).__name__}{hint}")
    if weights is None:
        weights = (1.0,) * len(losses)
    try:
        w = [float(v) for v in weights]
    except (TypeError, ValueError):
        raise LossError(f"combine: weights must be numbers, got {weights!r}") from None
    if len(w) != len(losses):
        raise LossError(f"combine: {len(losses)} losses but {len(w)} weights")
    if not all(np.isfinite(v) and v >= 0 for v in w):
        raise LossError(f"combine: weights must be finite and >= 0, got {w}")
    count = len(losses)
    label = name or "+".join(loss.name for loss in losses)

    def split(pred: Any, target: Any) -> None:
        for what, v in (("prediction", pred), ("target", target)):
            if not isinstance(v, (tuple, list)) or len(v) != count:
                got = (f"a {type(v).__name__} of {len(v)}" if isinstance(v, (tuple, list))
                       else f"{type(v).__name__}")
                raise LossError(f"{label}: the {what} must be a tuple of {count} (one per "
                                f"loss), got {got}")

    def value(pred: Any, target: Any) -> np.ndarray:
        split(pred, target)
        total = sum(wi * float(loss.value(p, t))
                    for wi, loss, p, t in zip(w, losses, pred, target))
        return np.asarray(total, dtype=np.result_type(pred[0]))

    def value_and_grad(pred: Any, target: Any) -> Tuple[np.ndarray, Tuple[np.ndarray, ...]]:
        split(pred, target)
        total, grads = 0.0, []
        for wi, loss, p, t in zip(w, losses, pred, target):
            v, g = loss.value_and_grad(p, t)
            total += wi * float(v)
            grads.append(g if wi == 1.0 else np.multiply(g, g.dtype.type(wi)))
        return np.asarray(total, dtype=np.result_type(pred[0])), tuple(grads)

    def total_weight(pred: Any, target: Any) -> float:
        split(pred, target)
        return float(np.shape(pred[0])[0]) if np.ndim(pred[0]) else 1.0

    return CombinedLoss(value, value_and_grad, label, total_weight,
                        tuple((i, loss, wi) for i, (loss, wi) in enumerate(zip(losses, w))))
