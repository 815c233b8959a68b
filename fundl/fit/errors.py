"""The error fit raises when training produces a non-finite loss or train state."""

from __future__ import annotations

from typing import Any, Dict, List

from ..step import TrainState

__all__ = ["NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a ``nan`` or ``inf``: in the loss, or in the train state a step made.

    ``step`` is the step counter of the train state the failing step started
    from, ``loss`` that step's loss, ``where`` what was non-finite (``"loss"``,
    or the first non-finite leaf of the state it made, e.g.
    ``"params/dense_0/w"``: a step can report a finite loss and still make
    non-finite params; that shows as a non-finite loss one step later),
    ``train_state`` the last train state known to be finite everywhere (the one
    the failing step started from; when a state is only found non-finite later,
    the one last checked: at the start, at the end of an epoch or before a
    checkpoint) -- it is also what the checkpoint holds -- and ``history`` the
    history so far.
    """

    def __init__(self, step: int, loss: float, train_state: TrainState,
                 history: Dict[str, List[Any]], where: str = "loss"):
        self.step = step
        self.loss = loss
        self.train_state = train_state
        self.history = history
        self.where = where
        what = (f"non-finite training loss {loss} at step {step}" if where == "loss" else
                f"non-finite values in {where} after the step from step {step} (its loss "
                f"{loss} was finite)")
        super().__init__(f"{what}; err.train_state holds the last finite train state (step "
                         f"{train_state.step}). Try a smaller learning rate or gradient clipping.")

    def __reduce__(self):  # picklable (e.g. to send to another process) despite the custom __init__
        return (NonFiniteLossError, (self.step, self.loss, self.train_state, self.history,
                                     self.where))
