"""Save and load trees of arrays as ``.safetensors`` files (the format of the Hugging Face hub).

::

    fundl.io.save_safetensors("model.safetensors", {"params": ts.params, "state": ts.state})
    tree = fundl.io.load_safetensors("model.safetensors")               # nested dicts
    params = fundl.io.load_safetensors("params.safetensors", like=params)  # checked

Each array leaf is one tensor named by its tree path (``"dense_0/w"``), with its
dtype and shape; a file written by PyTorch (``"0.weight"``) loads as a flat
dict of those names, ready for :func:`fundl.interop.torch.load_state_dict`.
Only arrays are stored: safetensors holds tensors, not Python values, so a whole
``TrainState`` (its ``step`` is an int) belongs in :func:`fundl.io.save`.
Needs the ``safetensors`` package (``pip install "fundl[safetensors]"``),
imported only when these functions run.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import numpy as np

from ..tree import TreeError, flatten_with_paths, unflatten_from_paths
from .files import CheckpointError, PathLike, atomic_write

__all__ = ["save_safetensors", "load_safetensors"]


_ORDER_KEY = "fundl.paths"  # metadata: the leaf paths in tree order (JSON)
_DTYPE_KINDS = "biuf"       # bool, signed/unsigned ints, floats: what safetensors stores
#: The safetensors dtypes numpy represents, hence the ones a file may hold to be loaded.
_LOADABLE = {"BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64", "F64",
             "C64"}
_NOT_IN_NUMPY = {"BF16": "bfloat16", "F8_E4M3": "float8 e4m3", "F8_E5M2": "float8 e5m2"}


def _safetensors_numpy() -> Any:
    try:
        import safetensors.numpy as st
    except ImportError as err:
        raise ImportError("fundl's safetensors support needs the safetensors package: "
                          'pip install "fundl[safetensors]" (or pip install safetensors)') from err
    return st


def _leaf_error(file: str, path: str, leaf: Any) -> CheckpointError:
    hint = ""
    if isinstance(leaf, (bool, int, float, np.generic)):
        hint = (" (a TrainState's step is one: save the arrays only, e.g. "
                "{'params': ts.params, 'state': ts.state}, or the whole TrainState with "
                "fundl.io.save)")
    return CheckpointError(f"{file}: cannot save '{path or '<root>'}' as a safetensors tensor: "
                           f"it is a {type(leaf).__name__}, not a numpy array{hint}")


def save_safetensors(path: PathLike, tree: Any) -> None:
    """Write the array leaves of ``tree`` to ``path`` as safetensors, named by tree path.

    ``tree`` is nested dicts (lists/tuples too: their items are named ``0``, ``1``...)
    with numpy arrays of bool, integer or float dtypes at the leaves; dtype and
    shape are kept (a big-endian array is stored, and loads, little-endian).  Any other
    leaf raises :class:`fundl.io.CheckpointError` naming its path.  Written atomically as
    :func:`fundl.io.save` writes: a temporary file in the same directory, fsynced, then
    ``os.replace`` (:func:`fundl.io.atomic_write`).
    The metadata entry ``fundl.paths`` records the tree order of the names.
    """
    st = _safetensors_numpy()
    file = os.fspath(path)
    tensors: Dict[str, np.ndarray] = {}
    for leaf_path, leaf in flatten_with_paths(tree):
        if not isinstance(leaf, np.ndarray):
            raise _leaf_error(file, leaf_path, leaf)
        if not leaf_path:
            raise CheckpointError(f"{file}: a bare array has no name; save a dict of arrays, "
                                  "e.g. {'w': w}")
        if leaf.dtype.kind not in _DTYPE_KINDS or leaf.dtype.itemsize > 8:
            raise CheckpointError(f"{file}: cannot save '{leaf_path}': dtype {leaf.dtype} is not "
                                  "a safetensors dtype (bool, ints, float16/32/64)")
        if leaf_path in tensors:
            raise CheckpointError(f"{file}: two leaves share the name '{leaf_path}' "
                                  "(a dict key with '/' in it?)")
        tensors[leaf_path] = np.asarray(leaf, dtype=leaf.dtype.newbyteorder("<"), order="C")
    data = st.save(tensors, metadata={_ORDER_KEY: json.dumps(list(tensors))})

    atomic_write(file, lambda f: f.write(data))


def _header(file: str, data: bytes) -> Dict[str, Any]:
    """The parsed JSON header, checked to name only dtypes numpy has: a tensor of another
    (BF16, float8) is a :class:`CheckpointError` naming the tensor and its dtype."""
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 2 <= header_len <= len(data) - 8:
        raise CheckpointError(f"{file}: not a readable safetensors file (its header length "
                              f"{header_len} does not fit its {len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + header_len])
    except (ValueError, RecursionError) as err:  # incl. UnicodeDecodeError
        raise CheckpointError(f"{file}: not a readable safetensors file (its header is not "
                              f"JSON: {type(err).__name__}: {err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a readable safetensors file (its header is not a "
                              "JSON object)")
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) and name != "__metadata__" else None
        if isinstance(dtype, str) and dtype not in _LOADABLE:
            what = _NOT_IN_NUMPY.get(dtype)
            hint = (f"numpy has no {what}; convert it before saving (in PyTorch: "
                    "tensor.float())" if what else
                    f"the loadable dtypes are {', '.join(sorted(_LOADABLE))}")
            raise CheckpointError(f"{file}: tensor '{name}' has dtype {dtype}, which fundl "
                                  f"cannot load: {hint}")
    return header


def _read(file: str) -> Dict[str, np.ndarray]:
    """The file's tensors as new arrays, in tree order when fundl wrote the file."""
    st = _safetensors_numpy()
    if not os.path.exists(file):
        raise FileNotFoundError(f"no safetensors file at {file}")
    with open(file, "rb") as f:
        data = f.read()
    meta = _header(file, data).get("__metadata__") or {}
    try:
        tensors = st.load(data)
    except Exception as err:  # the Rust reader raises its own error types
        raise CheckpointError(f"{file}: not a readable safetensors file "
                              f"({type(err).__name__}: {err})") from None
    order = []
    if isinstance(meta, dict) and isinstance(meta.get(_ORDER_KEY), str):
        try:
            order = [n for n in json.loads(meta[_ORDER_KEY]) if n in tensors]
        except (ValueError, TypeError, RecursionError):
            order = []
    names = order + [n for n in tensors if n not in set(order)]
    return {n: np.array(tensors[n], copy=True) for n in names}


def _nest(file: str, tensors: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Nested dicts from ``"a/b/c"`` names."""
    root: Dict[str, Any] = {}
    for name, value in tensors.items():
        parts = name.split("/")
        node = root
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{file}: '{'/'.join(parts[:i + 1])}' is both a tensor "
                                      f"and a prefix of '{name}'")
        if parts[-1] in node:
            raise CheckpointError(f"{file}: '{name}' is both a tensor and a prefix of another")
        node[parts[-1]] = value
    return root


def load_safetensors(path: PathLike, like: Optional[Any] = None) -> Any:
    """Read a safetensors file: nested dicts, or a tree shaped like ``like``.

    Without ``like``, the names' ``/`` separated paths become nested dicts
    (``"dense_0/w"`` -> ``tree["dense_0"]["w"]``; a PyTorch name such as
    ``"0.weight"`` stays one key), in the saved tree order.  With ``like`` (e.g.
    freshly initialised params) the result has ``like``'s structure and
    containers; every leaf path must be in the file and every tensor in ``like``,
    with the same shape and dtype, or :class:`fundl.io.CheckpointError` names the
    path.  Arrays are new, writeable and own their memory.  A tensor of a dtype
    numpy lacks (``BF16``, ``F8_E4M3``, ``F8_E5M2``) is a :class:`fundl.io.CheckpointError`
    naming the tensor and its dtype; so is any malformed file.
    """
    file = os.fspath(path)
    tensors = _read(file)
    if like is None:
        return _nest(file, tensors)
    want = flatten_with_paths(like)
    for leaf_path, ref in want:
        if leaf_path not in tensors:
            continue  # reported below, with the extras
        got = tensors[leaf_path]
        ref_shape, ref_dtype = np.shape(ref), np.asarray(ref).dtype
        if got.shape != ref_shape or got.dtype != ref_dtype:
            raise CheckpointError(f"{file}: '{leaf_path}' is {got.dtype} {got.shape} in the file "
                                  f"but like expects {ref_dtype} {ref_shape}")
    try:
        return unflatten_from_paths(like, tensors)
    except TreeError as err:
        raise CheckpointError(f"{file}: does not match like: {err}") from None
