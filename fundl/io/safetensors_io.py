"""Save and load trees of arrays as ``.safetensors`` files (the format of the Hugging Face hub).

::

    fundl.io.save_safetensors("model.safetensors", {"params": ts.params, "state": ts.state},
                              model=model)                            # a whole model
    tree = fundl.io.load_safetensors("model.safetensors")     # the same tree, no like= needed
    model, tree = fundl.io.load_model("model.safetensors")    # and the model rebuilt
    params = fundl.io.load_safetensors("params.safetensors", like=params)  # checked

Each array leaf is one tensor named by its tree path (``"dense_0/w"``), with its
dtype and shape; a file written by PyTorch (``"0.weight"``) loads as a flat
dict of those names, ready for :func:`fundl.interop.torch.load_state_dict`.
fundl records the tree's structure in the file's metadata (``fundl.tree``: its
dicts in order, the empty ones a layer without params has, its lists and tuples),
so the tree loads back exactly as saved without ``like=``; with ``model=`` the
metadata also holds the model's architecture (``fundl.model``,
:func:`fundl.io.model_record`).  Only arrays are stored: safetensors holds
tensors, not Python values, so a whole ``TrainState`` (its ``step`` is an int)
belongs in :func:`fundl.io.save`.
Needs the ``safetensors`` package (``pip install "fundl[safetensors]"``),
imported only when these functions run.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..core import Layer
from ..tree import TreeError, flatten_with_paths, is_namedtuple, join_path, unflatten_from_paths
from .architecture import known_in_shape, model_record
from .files import CheckpointError, PathLike, atomic_write

__all__ = ["save_safetensors", "load_safetensors", "read_safetensors"]


_ORDER_KEY = "fundl.paths"  # metadata: the leaf paths in tree order (JSON)
_TREE_KEY = "fundl.tree"    # metadata: the tree's containers, leaves by tensor name (JSON)
_MODEL_KEY = "fundl.model"  # metadata: the model's architecture (JSON), with model=
_MAX_DEPTH = 128
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


def _skeleton(node: Any, path: str, depth: int = 0) -> Dict[str, Any]:
    """The containers of ``node`` as JSON (a named tuple as a dict of its fields); each leaf
    as its tensor's name, its path."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"cannot save '{path}': the tree is nested deeper than "
                              f"{_MAX_DEPTH} levels")
    if node is None:
        return {"t": "none"}
    if isinstance(node, dict) or is_namedtuple(node):
        keys = list(node._fields) if is_namedtuple(node) else [str(k) for k in node]
        values = list(node) if is_namedtuple(node) else list(node.values())
        return {"t": "dict", "keys": keys,
                "items": [_skeleton(v, join_path(path, k), depth + 1) for k, v in zip(keys, values)]}
    if isinstance(node, (tuple, list)):
        return {"t": "tuple" if isinstance(node, tuple) else "list",
                "items": [_skeleton(v, join_path(path, str(i)), depth + 1)
                          for i, v in enumerate(node)]}
    return {"t": "tensor", "name": path}


def save_safetensors(path: PathLike, tree: Any, *, model: Optional[Layer] = None,
                     in_shape: Any = None) -> None:
    """Write the array leaves of ``tree`` to ``path`` as safetensors, named by tree path.

    ``tree`` is nested dicts (lists/tuples too: their items are named ``0``, ``1``...)
    with numpy arrays of bool, integer or float dtypes at the leaves; dtype and
    shape are kept (a big-endian array is stored, and loads, little-endian).  Any other
    leaf raises :class:`fundl.io.CheckpointError` naming its path.  Written atomically as
    :func:`fundl.io.save` writes: a temporary file in the same directory, fsynced, then
    ``os.replace`` (:func:`fundl.io.atomic_write`).
    The metadata entries ``fundl.paths`` and ``fundl.tree`` record the tree order of
    the names and the tree's structure (so :func:`load_safetensors` rebuilds the tree
    exactly, empty dicts included, without ``like=``; a named tuple comes back as a
    dict of its fields).

    ``model=``: the metadata entry ``fundl.model`` also holds the model's architecture
    and per-example ``in_shape`` (as :func:`fundl.io.save` does): save
    ``{"params": params, "state": state}`` and :func:`fundl.io.load_model` rebuilds
    the model and that tree with no code at hand.
    """
    st = _safetensors_numpy()
    file = os.fspath(path)
    metadata: Dict[str, str] = {}
    if model is not None:
        record = model_record(model, known_in_shape(model, tree) if in_shape is None
                              else in_shape)
        metadata[_MODEL_KEY] = json.dumps(record)
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
    metadata[_ORDER_KEY] = json.dumps(list(tensors))
    metadata[_TREE_KEY] = json.dumps(_skeleton(tree, ""))
    data = st.save(tensors, metadata=metadata)

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


def read_safetensors(path: PathLike) -> Tuple[Any, Dict[str, Any]]:
    """``(tree, metadata)``: the tree :func:`load_safetensors` returns without ``like`` and
    the file's metadata (a dict of strings; ``{}`` when it has none), from one read."""
    file = os.fspath(path)
    tensors, meta = _read(file)
    return _tree_of(file, tensors, meta), meta


def _read(file: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """The file's tensors as new arrays, in tree order when fundl wrote the file, and the
    metadata."""
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
    return ({n: np.array(tensors[n], copy=True) for n in names},
            meta if isinstance(meta, dict) else {})


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


def _tree_of(file: str, tensors: Dict[str, np.ndarray], meta: Dict[str, Any]) -> Any:
    """The saved tree (from the ``fundl.tree`` metadata), or nested dicts of the names."""
    if isinstance(meta.get(_TREE_KEY), str):
        return _rebuild(file, meta[_TREE_KEY], tensors)
    return _nest(file, tensors)


def _rebuild(file: str, text: str, tensors: Dict[str, np.ndarray]) -> Any:
    """The tree of the ``fundl.tree`` metadata, each tensor used exactly once."""
    try:
        skeleton = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{file}: the {_TREE_KEY} metadata is not JSON "
                              f"({type(err).__name__})") from None
    used: Dict[str, str] = {}

    def build(node: Any, path: str, depth: int) -> Any:
        where = path or "<root>"
        if depth > _MAX_DEPTH or not isinstance(node, dict) or not isinstance(node.get("t"), str):
            raise CheckpointError(f"{file}: malformed {_TREE_KEY} metadata at '{where}'")
        kind, fields = node["t"], set(node)
        if kind == "none" and fields == {"t"}:
            return None
        if kind == "tensor" and fields == {"t", "name"} and isinstance(node["name"], str):
            name = node["name"]
            if name not in tensors:
                raise CheckpointError(f"{file}: the {_TREE_KEY} metadata names the tensor "
                                      f"'{name}', which the file does not hold")
            if name in used:
                raise CheckpointError(f"{file}: the tensor '{name}' is used twice in the "
                                      f"{_TREE_KEY} metadata")
            used[name] = where
            return tensors[name]
        items = node.get("items")
        if kind in ("tuple", "list") and fields == {"t", "items"} and isinstance(items, list):
            out = [build(v, join_path(path, str(i)), depth + 1) for i, v in enumerate(items)]
            return tuple(out) if kind == "tuple" else out
        keys = node.get("keys")
        if kind == "dict" and fields == {"t", "keys", "items"} and isinstance(items, list) \
                and isinstance(keys, list) and len(keys) == len(items) \
                and all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys):
            return {k: build(v, join_path(path, k), depth + 1) for k, v in zip(keys, items)}
        raise CheckpointError(f"{file}: malformed {_TREE_KEY} metadata at '{where}'")

    tree = build(skeleton, "", 0)
    unused = [n for n in tensors if n not in used]
    if unused:
        raise CheckpointError(f"{file}: the tensor '{unused[0]}' is not in the {_TREE_KEY} "
                              "metadata (the file was altered)")
    return tree


def load_safetensors(path: PathLike, like: Optional[Any] = None) -> Any:
    """Read a safetensors file: nested dicts, or a tree shaped like ``like``.

    Without ``like``, a file fundl wrote comes back as the tree it saved (its
    structure is in the metadata, empty dicts and tuples included); in any other
    file the names' ``/`` separated paths become nested dicts
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
    tensors, meta = _read(file)
    if like is None:
        return _tree_of(file, tensors, meta)
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
