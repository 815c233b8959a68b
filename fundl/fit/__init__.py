"""Training: :func:`fit` over :func:`~fundl.make_step`, :func:`evaluate`, :func:`predict`,
callbacks (:mod:`fundl.fit.callbacks`) and :func:`lr_find`.

Re-exported by :mod:`fundl`: ``fl.fit``, ``fl.evaluate``, ``fl.predict``, the callbacks
(``fl.Callback``, ``fl.Control``, ``fl.EarlyStopping``, ``fl.ReduceLROnPlateau``,
``fl.CSVLogger``, ``fl.ModelCheckpoint``), ``fl.lr_find`` and ``fl.NonFiniteLossError``.
"""

from .callbacks import (Callback, Control, CSVLogger, EarlyStopping, ModelCheckpoint,
                        ReduceLROnPlateau, TrainInfo)
from .errors import NonFiniteLossError
from .evaluate import evaluate, predict
from .loop import fit
from .loop_state import loop_path
from .lr_find import LRFindResult, lr_find

__all__ = ["fit", "evaluate", "predict", "NonFiniteLossError", "Callback", "Control",
           "TrainInfo", "EarlyStopping", "ReduceLROnPlateau", "CSVLogger", "ModelCheckpoint",
           "lr_find", "LRFindResult", "loop_path"]
