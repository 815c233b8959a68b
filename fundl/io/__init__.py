"""Saving and loading pytrees: fundl's own checkpoints (``.npz``) and safetensors files.

::

    fundl.io.save("run/ckpt.npz", train_state)      # atomic: old file intact on a crash
    ts = fundl.io.load("run/ckpt.npz")              # a TrainState again
    fundl.io.save_safetensors("params.safetensors", params)   # tensor names = tree paths
    fundl.io.save("run/model.npz", train_state, model=model)  # with the architecture
    model, ts = fundl.io.load_model("run/model.npz")          # no code at hand

:mod:`fundl.io.checkpoint` has the format and its guarantees,
:mod:`fundl.io.safetensors_io` the safetensors files, :mod:`fundl.io.architecture`
a model's architecture as plain data, :mod:`fundl.io.models` ``load_model``,
:mod:`fundl.io.files` the atomic write all use.
"""

from .architecture import model_from_record, model_record
from .checkpoint import load, save
from .files import CheckpointError, atomic_write
from .models import load_model
from .safetensors_io import load_safetensors, save_safetensors

__all__ = ["save", "load", "load_model", "CheckpointError", "atomic_write", "save_safetensors",
           "load_safetensors", "model_record", "model_from_record"]
