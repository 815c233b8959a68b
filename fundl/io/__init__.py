"""Saving and loading pytrees: fundl's own checkpoints (``.npz``) and safetensors files.

::

    fundl.io.save("run/ckpt.npz", train_state)      # atomic: old file intact on a crash
    ts = fundl.io.load("run/ckpt.npz")              # a TrainState again
    fundl.io.save_safetensors("params.safetensors", params)   # tensor names = tree paths

:mod:`fundl.io.checkpoint` has the format and its guarantees,
:mod:`fundl.io.safetensors_io` the safetensors files, :mod:`fundl.io.files` the
atomic write both use.
"""

from .checkpoint import load, save
from .files import CheckpointError, atomic_write
from .safetensors_io import load_safetensors, save_safetensors

__all__ = ["save", "load", "CheckpointError", "atomic_write", "save_safetensors",
           "load_safetensors"]
