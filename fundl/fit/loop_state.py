"""fit's loop state beside its checkpoint: what a resumed run needs besides the train state.

The checkpoint ``path`` holds the :class:`~fundl.TrainState`, exactly as :func:`fundl.io.save`
writes it (``fl.io.load(path)`` is a TrainState).  When the loop has more state -- a learning
rate lowered by a callback, callbacks that keep a best value or a patience count, the
running sums of a partly done epoch -- fit also writes ``loop_path(path)`` (``ckpt.npz`` ->
``ckpt.loop.npz``), before the checkpoint, both atomically.  It holds the records of the last
two checkpoints, each tagged with the step and a digest of the train state it goes with, so a
crash between the two writes still leaves the record of the checkpoint on disk; on resume,
fit takes the record whose step and digest match the train state it is given.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

from .. import tree
from ..step import TrainState

__all__ = ["loop_path", "digest", "LoopFile"]

_FORMAT = "fundl.fit.loop/1"


def loop_path(path: Any) -> str:
    """The loop state file of the checkpoint ``path``: ``run/ckpt.npz`` -> ``run/ckpt.loop.npz``."""
    file = os.fspath(path)
    return file[:-4] + ".loop.npz" if file.endswith(".npz") else file + ".loop.npz"


def digest(ts: TrainState) -> str:
    """A digest of every array and number of ``ts`` (its bytes, dtypes and shapes)."""
    import hashlib
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(int(ts.step)).encode())
    for leaf in tree.leaves((ts.params, ts.state, ts.opt_state, ts.key)):
        if isinstance(leaf, np.ndarray):
            h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
            # flat first: a view with a zero in its shape, e.g. (0, 3), cannot be cast to bytes
            h.update(np.ascontiguousarray(leaf).reshape(-1).data.cast("B"))
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()


class LoopFile:
    """The loop state file of one checkpoint path: :meth:`write` a record, :meth:`find` one."""

    def __init__(self, checkpoint_path: Any) -> None:
        self.path = loop_path(checkpoint_path)
        self.last: Optional[Dict[str, Any]] = None

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def write(self, ts: TrainState, record: Dict[str, Any]) -> None:
        """Save ``record`` for the checkpoint of ``ts``, keeping the previous record."""
        entry = dict(record, step=int(ts.step), digest=digest(ts))
        from .. import io
        records: List[Dict[str, Any]] = [r for r in (self.last,) if r is not None]
        io.save(self.path, {"format": _FORMAT, "records": records + [entry]})
        self.last = entry

    def find(self, ts: TrainState) -> Optional[Dict[str, Any]]:
        """The record written with the checkpoint of ``ts``, or ``None`` (with a warning
        when the file exists but holds none for it)."""
        if not self.exists():
            return None
        from .. import io
        try:
            data = io.load(self.path)
            records = data["records"] if data.get("format") == _FORMAT else None
        except (io.CheckpointError, AttributeError, KeyError, TypeError) as err:
            warnings.warn(f"fit: the loop state file {self.path} is unreadable ({err}); the "
                          "callbacks and the learning-rate scale start afresh", stacklevel=3)
            return None
        wanted = digest(ts)
        for record in reversed(records or []):
            if record.get("step") == ts.step and record.get("digest") == wanted:
                self.last = record
                return record
        warnings.warn(f"fit: {self.path} holds no loop state for this train state (step "
                      f"{ts.step}); the callbacks and the learning-rate scale start afresh",
                      stacklevel=3)
        return None
