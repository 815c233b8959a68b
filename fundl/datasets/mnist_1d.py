"""MNIST-1D (Greydanus, 2020), built offline by the ``mnist1d`` package and cached.

The benchmark: 4000 training and 1000 test sequences of length 40, 10 classes.
It is generated (not downloaded) by ``mnist1d.data.make_dataset`` with its
default arguments (seed 42), so every machine builds the same arrays.  The
``mnist1d`` package is an optional extra (``pip install mnist1d``); it is only
needed for the first build, after which the arrays are read from the cache.
"""

from __future__ import annotations

import os
import random as _py_random
from typing import Optional, Tuple, Union

import numpy as np

from .. import io

__all__ = ["mnist1d", "MNIST1D_SIZES", "default_cache_dir"]

#: (train, test) sizes of the standard MNIST-1D split.
MNIST1D_SIZES = (4000, 1000)
_LENGTH = 40
_CACHE_NAME = "mnist1d_default_v1.npz"

Arrays = Tuple[np.ndarray, np.ndarray]


def default_cache_dir() -> str:
    """``$FUNDL_CACHE`` if set, else ``~/.cache/fundl``."""
    return os.environ.get("FUNDL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fundl")


def _build() -> dict:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise ImportError("fundl.datasets.mnist1d builds the data with the optional package "
                          f"'mnist1d': install it with `pip install mnist1d` ({err})") from err
    # make_dataset seeds numpy's and Python's global generators; put them back
    # afterwards so that building the data changes no global state.
    np_state, py_state = np.random.get_state(), _py_random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        _py_random.setstate(py_state)
    return {"x_train": np.asarray(data["x"], dtype=np.float32),
            "y_train": np.asarray(data["y"], dtype=np.int64),
            "x_test": np.asarray(data["x_test"], dtype=np.float32),
            "y_test": np.asarray(data["y_test"], dtype=np.int64)}


def _valid(tree: object) -> bool:
    if not isinstance(tree, dict) or set(tree) != {"x_train", "y_train", "x_test", "y_test"}:
        return False
    n_train, n_test = MNIST1D_SIZES
    return (tree["x_train"].shape == (n_train, _LENGTH) and tree["x_train"].dtype == np.float32
            and tree["y_train"].shape == (n_train,) and tree["y_train"].dtype == np.int64
            and tree["x_test"].shape == (n_test, _LENGTH) and tree["x_test"].dtype == np.float32
            and tree["y_test"].shape == (n_test,) and tree["y_test"].dtype == np.int64)


def mnist1d(root: Optional[Union[str, "os.PathLike[str]"]] = None, *, rebuild: bool = False
            ) -> Tuple[Arrays, Arrays]:
    """``((x_train, y_train), (x_test, y_test))`` of MNIST-1D.

    ``x`` is float32 of shape ``(4000, 40)`` / ``(1000, 40)`` (the package's
    standardised signals), ``y`` int64 labels in ``[0, 10)``.  The first call
    builds the data with ``mnist1d.data.make_dataset`` (needs ``pip install
    mnist1d``, no network, a few seconds) and caches it as
    ``mnist1d_default_v1.npz`` in ``root`` (default ``$FUNDL_CACHE`` or
    ``~/.cache/fundl``); later calls read the cache.  ``rebuild=True`` (or an
    unreadable cache file) builds it again.
    """
    directory = os.fspath(root) if root is not None else default_cache_dir()
    path = os.path.join(directory, _CACHE_NAME)
    tree = None
    if not rebuild and os.path.exists(path):
        try:
            tree = io.load(path)
        except io.CheckpointError:
            tree = None
        if not _valid(tree):
            tree = None
    if tree is None:
        tree = _build()
        if not _valid(tree):
            raise RuntimeError("the installed mnist1d package built data of unexpected shapes: "
                               + ", ".join(f"{k} {v.dtype}{v.shape}" for k, v in tree.items()))
        os.makedirs(directory, exist_ok=True)
        io.save(path, tree)
    return (tree["x_train"], tree["y_train"]), (tree["x_test"], tree["y_test"])
