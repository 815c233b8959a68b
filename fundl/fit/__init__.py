"""Training: :func:`fit` over :func:`~fundl.make_step`, :func:`evaluate`, :func:`predict`,
callbacks (:mod:`fundl.fit.callbacks`) and :func:`lr_find`.

Re-exported by :mod:`fundl` (``fl.fit``, ``fl.evaluate``, ``fl.predict``,
``fl.EarlyStopping``, ``fl.NonFiniteLossError``); the rest is imported from here::

    from fundl.fit import ReduceLROnPlateau, CSVLogger, ModelCheckpoint, Callback, Control, lr_find

and, since ``fl.fit`` is the function, also reachable as its attributes
(``fl.fit.ReduceLROnPlateau``).
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

# ``fundl/__init__.py`` binds ``fl.fit`` to the function: give it the package's names so that
# ``fl.fit.ReduceLROnPlateau`` works as ``from fundl.fit import ReduceLROnPlateau`` does.
for _name in __all__:
    if _name != "fit":
        setattr(fit, _name, globals()[_name])
del _name
