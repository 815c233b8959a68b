"""``load_model``: a model and its saved tree from one file, with no code at hand.

::

    fundl.io.save("run/model.npz", ts, model=model)      # the train state and the architecture
    model, ts = fundl.io.load_model("run/model.npz")       # both back; ts is a TrainState

The file is a checkpoint of :func:`fundl.io.save` or a ``.safetensors`` file of
:func:`fundl.io.save_safetensors`, written with ``model=``.  The model is rebuilt
from its record by fundl's own builders (:mod:`fundl.io.architecture`); nothing the
file names is imported or run.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Tuple

from .. import plan
from ..core import Layer
from ..validate import SpecError
from .architecture import model_from_record, params_and_state
from .checkpoint import load_with_model
from .files import CheckpointError, PathLike
from .safetensors_io import _MODEL_KEY, read_safetensors

__all__ = ["load_model"]


def load_model(path: PathLike, *, builders: Iterable[Callable[..., Layer]] = (),
               types: Iterable[type] = ()) -> Tuple[Layer, Any]:
    """``(model, tree)``: the model rebuilt from the architecture a file carries, and the
    tree saved with it (a ``TrainState``, ``{"params": ..., "state": ...}``, ...).

    ``path`` is a checkpoint written by ``fundl.io.save(path, tree, model=model)`` or a
    safetensors file written by ``fundl.io.save_safetensors(path, tree, model=model)``.
    Layers are built only by fundl's own builders and those in ``builders`` (your
    functions decorated with :func:`fundl.builder`); ``types`` are named tuple classes
    of your own in the tree, as for :func:`fundl.io.load`.  When the file records the
    model's input shape and the tree holds params and state, they are checked against
    the rebuilt model's ``init`` (structure, shapes, dtypes).  Raises
    :class:`~fundl.io.CheckpointError` naming the file for a file without an
    architecture, a layer kind that is not allowed, or params that do not match.
    """
    file = os.fspath(path)
    if not os.path.exists(file):
        raise FileNotFoundError(f"no model file at {file}")
    with open(file, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        tree, record = load_with_model(file, types=types)
    else:
        tree, meta = read_safetensors(file)
        text = meta.get(_MODEL_KEY)
        try:
            record = None if text is None else json.loads(text)
        except (TypeError, ValueError, RecursionError):
            raise CheckpointError(f"{file}: the {_MODEL_KEY} metadata is not JSON") from None
    if record is None:
        raise CheckpointError(f"{file}: holds no model architecture; write it with "
                              "fundl.io.save(path, tree, model=model) (or save_safetensors(..., "
                              "model=model)), or load the tree with fundl.io.load and build the "
                              "model in code")
    try:
        model, in_shape = model_from_record(record, builders=builders)
    except CheckpointError as err:
        raise CheckpointError(f"{file}: {err}") from None
    parts = params_and_state(tree)
    if in_shape is not None and parts is not None:
        spec = plan.of(model).spec_for(in_shape)
        if spec is None:
            raise CheckpointError(f"{file}: the rebuilt model cannot take its recorded input "
                                  f"shape {in_shape!r}")
        try:
            spec.check(*parts)
        except SpecError as err:
            raise CheckpointError(f"{file}: the saved tree does not match the recorded model: "
                                  f"{err}") from None
    return model, tree
