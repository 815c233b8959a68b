"""fit's checks before the first step: counts, the train state against the model and the
optimizer, the checkpoint path, and the model, loss and metrics run on a few examples."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import random, tree
from ..data.batching import check_batch_size
from ..core import Layer
from ..losses import Loss
from ..metrics import Metric
from ..optim.base import Optimizer
from ..step import TrainState
from ..validate import SpecError, TreeSpec
from .inputs import describe

__all__ = ["rethrow", "check_count", "check_batch_size", "non_finite_path", "check_train_state",
           "check_checkpoint_path", "preflight"]


def rethrow(err: Exception, context: str) -> Exception:
    """``err`` with ``context`` in front of its message, as a ValueError or TypeError."""
    kind = TypeError if isinstance(err, TypeError) else ValueError
    return kind(f"{context}: {err}")


def check_count(value: Any, name: str, who: str = "fit") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_checkpoint_path(path: Any, who: str = "fit: checkpoint_path") -> str:
    """``path`` as a string, after checking that it can be written: not a directory, in an
    existing directory this process may write to."""
    try:
        file = os.fspath(path)
    except TypeError:
        raise TypeError(f"{who} must be a file path (str or os.PathLike), got "
                        f"{type(path).__name__}") from None
    if isinstance(file, bytes):
        file = os.fsdecode(file)
    if not file or file.endswith(os.sep):
        raise ValueError(f"{who} must name a file, got {file!r}")
    if os.path.isdir(file):
        raise ValueError(f"{who} {file!r} is a directory; name a file in it, e.g. "
                         f"{os.path.join(file, 'ckpt.npz')!r}")
    folder = os.path.dirname(os.path.abspath(file))
    if not os.path.isdir(folder):
        raise ValueError(f"{who}: the directory {folder!r} does not exist; create it first "
                         f"(os.makedirs({folder!r}, exist_ok=True))")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{who}: the directory {folder!r} is not writable by this process")
    if os.path.exists(file) and not os.access(file, os.W_OK) and not os.path.islink(file):
        # io.save replaces the file (a rename), which the directory's permission allows;
        # but a read-only file usually means "do not overwrite"
        raise ValueError(f"{who}: {file!r} exists and is read-only")
    return file


def non_finite_path(ts: TrainState) -> Optional[str]:
    """The path of the first float leaf of the train state holding a nan or inf, or ``None``.

    One sum per leaf (a finite sum means finite elements); only a leaf whose sum is not
    finite is looked at elementwise (its elements may be finite and their sum overflow).
    """
    for root, part in (("params", ts.params), ("state", ts.state), ("opt_state", ts.opt_state)):
        for leaf in tree.leaves(part):
            if not (isinstance(leaf, np.ndarray) and leaf.dtype.kind in "fc" and leaf.size):
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                total = np.add.reduce(leaf, axis=None)
            if not np.isfinite(total) and not np.isfinite(leaf).all():
                for path, same in tree.flatten_with_paths(part):
                    if same is leaf:
                        return f"{root}/{path}"
    return None


def check_train_state(ts: Any, model: Layer, optimizer: Optimizer, in_shape: Any) -> None:
    """A resumed train state must match the model (as init makes it for the data's shapes)
    and the optimizer, and be finite."""
    if not isinstance(ts, TrainState):
        raise TypeError(f"fit: train_state must be a TrainState (from TrainState.create or "
                        f"fundl.io.load of a checkpoint), got {type(ts).__name__}")
    if isinstance(ts.step, bool) or not isinstance(ts.step, (int, np.integer)) or ts.step < 0:
        raise ValueError(f"fit: train_state.step must be an integer >= 0, got {ts.step!r}")
    try:
        params, state, _ = model.init(random.key(0), in_shape)
    except (ValueError, TypeError) as err:
        raise rethrow(err, f"fit: train_data x (per-example shape {in_shape}) does not fit "
                            "the model") from err
    try:
        TreeSpec(params).check(ts.params, "train_state.params")
        TreeSpec(state).check(ts.state, "train_state.state")
    except SpecError as err:
        raise SpecError(f"fit: train_state does not match the model (for inputs of per-example "
                        f"shape {in_shape}): {err}") from None
    try:
        TreeSpec(optimizer.init(ts.params)).check(ts.opt_state, "train_state.opt_state")
    except SpecError as err:
        raise SpecError(f"fit: train_state.opt_state does not match the optimizer "
                        f"{optimizer.name!r} (optimizer.init(params) makes another structure): "
                        f"{err}. Resume with the optimizer the state was trained with, or start "
                        f"its state afresh: train_state._replace(opt_state=optimizer.init("
                        f"train_state.params))") from None
    bad = non_finite_path(ts)
    if bad is not None:
        raise ValueError(f"fit: train_state holds non-finite values ({bad}); resume from an "
                         "earlier checkpoint")



def preflight(model: Layer, loss: Loss, metrics: Dict[str, Metric], ts: TrainState,
              sets: List[Tuple[str, Tuple[Any, Any, int], Tuple[str, str]]]) -> Dict[str, int]:
    """Run the model, the loss and the metrics on a few examples of each data set
    (``(what, (x, y, rows), (x described, y described))``), so that what does not fit fails
    now, naming the argument, and not after an epoch of training.  Returns the length of
    each metric's stats."""
    lengths: Dict[str, int] = {}
    for what, (x, y, rows), (shown_x, shown_y) in sets:
        try:
            out = model.apply(ts.params, ts.state, x, key=None, train=False)
        except (ValueError, TypeError) as err:
            raise rethrow(err, f"fit: {what} x ({shown_x}) does not fit the model") from err
        got = describe(out)
        try:
            loss.value(out, y)
        except (ValueError, TypeError) as err:
            raise rethrow(err, f"fit: the loss {loss.name} does not fit the model's output "
                                f"({got} for {rows} examples) and {what} y "
                                f"({shown_y})") from err
        for name, metric in metrics.items():
            try:
                stats = np.asarray(metric.stats(out, y), np.float64)
                float(metric.result(stats))
            except (ValueError, TypeError, IndexError) as err:
                raise rethrow(err, f"fit: metrics: {name!r} does not fit the model's output "
                                    f"({got} for {rows} examples) and {what} y "
                                    f"({shown_y})") from err
            if stats.ndim != 1:
                raise ValueError(f"fit: metrics: {name!r}: stats must be a 1-D vector of sums, "
                                 f"got shape {stats.shape}")
            lengths[name] = stats.size
    return lengths
