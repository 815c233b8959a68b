"""``fit(comm=)``: the ranks must call :func:`fundl.fit` with the same arguments.

Every rank builds its own arguments; if two ranks differ in the key (their shards
of the data would overlap), the learning rate or schedule, the number of steps,
the batch size, the optimizer, the model or the data, training would go on with
wrong results or hang in a collective one rank never calls.  So before the first
step the ranks compare a short description of their arguments -- in the one
``allgather`` fit already makes -- and every rank raises the same ``ValueError``
naming each argument that differs and its value on each rank.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import tree

__all__ = ["described", "agree", "LR_SAMPLES"]

#: the learning-rate schedule is compared at this many steps (spread over the run, with
#: the first ones), as its code cannot be compared
LR_SAMPLES = 64


def _digest(*parts: Any) -> str:
    import hashlib
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype.str}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:12]


def _spec(t: Any) -> str:
    """A digest of a tree's structure, shapes and dtypes (not its values)."""
    return _digest([(path, getattr(leaf, "dtype", type(leaf).__name__), np.shape(leaf))
                    for path, leaf in tree.flatten_with_paths(t)])


def _value(lr: Any, step: int) -> str:
    """``repr`` of the rate (equal strings for equal floats, NaN included), or the error."""
    try:
        return repr(float(lr(step) if callable(lr) else lr))
    except Exception as err:  # noqa: BLE001 - fit reports it at that step; here it is a value
        return f"{type(err).__name__}"


def _lr_values(lr: Any, target: int) -> Any:
    if not callable(lr):
        return _value(lr, 0)
    steps = sorted({int(s) for s in np.linspace(0, target - 1, LR_SAMPLES)}
                   | set(range(min(4, target))))
    return tuple((s, _value(lr, s)) for s in steps)


def _sample_rows(leaves: List[np.ndarray]) -> str:
    """A digest of the shapes, dtypes and three rows (first, middle, last) of each array."""
    parts: List[Any] = []
    for a in leaves:
        n = a.shape[0]
        rows = sorted({0, n // 2, n - 1}) if n else []
        parts.append(np.asarray(a[rows]))
    return _digest(*parts)


def described(*, train: Any, val: Any, probe: Tuple[Any, Any, int], loss_name: str,
              batch_size: int,
              per_epoch: int, target: int, key: Any, lr: Any, optimizer: Any, ts: Any,
              given_state: bool, shuffle: bool, drop_last: bool, checkpointing: bool,
              every: Any, val_batch: int, metrics: List[str], callbacks: List[Any]
              ) -> Dict[str, Any]:
    """This rank's arguments of fit, each as a short value or digest (names are what the
    error message shows)."""
    if train.arrays:
        data = (f"{train.n} examples", _sample_rows(train.leaves))
    else:
        data = (f"a source of {train.length} batches", _digest(*tree.leaves(probe[:2])))
    validation = None
    if val is not None:
        validation = (f"{val.n} examples" if val.arrays else f"a source of {val.length} "
                      f"batches", val_batch)
    return {
        "train_data": data,
        "batch_size": batch_size,
        "batches per epoch": per_epoch,
        "epochs/steps (the last step)": target,
        "key": np.asarray(key).tolist(),
        "lr": _lr_values(lr, target),
        "loss": loss_name,
        "optimizer": (optimizer.name, _spec(ts.opt_state)),
        "model (params and state)": (_spec(ts.params), _spec(ts.state)),
        "train_state": _digest(*tree.leaves(ts)) if given_state else None,
        "shuffle": shuffle,
        "drop_last": drop_last,
        "checkpoint_path (given)": checkpointing,
        "checkpoint_every": every,
        "val_data (and val_batch_size)": validation,
        "metrics": metrics,
        "callbacks": [f"{type(cb).__name__}{' (per batch)' if cb.per_batch else ''}"
                      for cb in callbacks],
    }


def _shown(value: Any) -> str:
    if isinstance(value, tuple) and len(value) > 4:    # a schedule's values
        return f"a schedule ({value[0][1]} at step {value[0][0]}, ...)"
    return repr(value) if not isinstance(value, str) else value


def _lr_difference(values: List[Any]) -> Optional[str]:
    """Where the ranks' learning rates differ (at a step every rank sampled), or ``None``."""
    if all(isinstance(v, tuple) for v in values):
        tables = [dict(v) for v in values]
        for step in sorted(set.intersection(*(set(t) for t in tables))):
            if len({t[step] for t in tables}) > 1:
                shown = ", ".join(f"rank {r}: {t[step]}" for r, t in enumerate(tables))
                return f"lr: the schedule at step {step}: {shown}"
        return None
    if len({repr(v) for v in values}) == 1:
        return None
    return "lr: " + ", ".join(f"rank {r}: {_shown(v)}" for r, v in enumerate(values))


def agree(every: List[Dict[str, Any]]) -> None:
    """Raise the same ``ValueError`` on every rank unless all ranks' descriptions are equal."""
    first = every[0]
    lines = []
    for name in first:
        if name == "lr":
            line = _lr_difference([d[name] for d in every])
            if line is not None:
                lines.append(line)
        elif any(d[name] != first[name] for d in every[1:]):
            values = ", ".join(f"rank {r}: {_shown(d[name])}" for r, d in enumerate(every))
            lines.append(f"{name}: {values}")
    if lines:
        raise ValueError("fit: the ranks called fit with different arguments (digests stand for "
                         "values too long to show):\n  " + "\n  ".join(lines) +
                         "\nevery rank must call fit with the same model, loss, optimizer, "
                         "train_data, key, lr, epochs/steps, batch_size and other arguments")
