"""Checkpoints: save and load any pytree as one ``.npz`` file.

::

    fundl.io.save("run/ckpt.npz", train_state)      # atomic: old file intact on a crash
    ts = fundl.io.load("run/ckpt.npz")              # a TrainState again
    params = fundl.io.load("params.npz", like=params_template)

Every array leaf is stored under its tree path (``params/dense_0/w``), so
``np.load(path).files`` lists readable names and ``np.load(path)[name]`` reads
one leaf with its dtype and shape.  The structure (dict keys in order, tuple vs
list vs named tuple, ``None``, empty containers, and Python ``int``/``float``/
``bool``/``str`` leaves such as ``TrainState.step``) is stored as JSON in the
entry ``__fundl_structure__``.  A named tuple is stored with its
module-qualified class name and fields and rebuilt from them, or from the
``like=`` template.  Loading never unpickles (``allow_pickle=False``): a
round trip is bit-identical and a checkpoint cannot run code.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import socket
import zipfile
from typing import Any, Dict, Iterable, Optional, Union

import numpy as np

from .tree import is_namedtuple, join_path

__all__ = ["save", "load", "CheckpointError"]

PathLike = Union[str, "os.PathLike[str]"]

_STRUCT_KEY = "__fundl_structure__"
_FORMAT = "fundl.io"
_VERSION = 1
_ROOT_NAME = "<root>"
_MAX_DEPTH = 128  # containers nested in containers; far beyond any real pytree


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read, or that does not match ``like``.

    The message names the file and, where it applies, the tree path.
    """


# --- encoding ---------------------------------------------------------------------

class _Encoder:
    def __init__(self, file: str):
        self.file = file
        self.arrays: Dict[str, np.ndarray] = {}

    def entry(self, path: str, value: np.ndarray) -> str:
        name = path or _ROOT_NAME
        base, i = name, 1
        while name in self.arrays or name == _STRUCT_KEY:
            name = f"{base}#{i}"
            i += 1
        if value.dtype.hasobject:
            raise CheckpointError(f"{self.file}: cannot save '{path or _ROOT_NAME}': object arrays "
                                  "are not supported (they would need pickle)")
        self.arrays[name] = value
        return name

    def encode(self, node: Any, path: str, depth: int = 0) -> Dict[str, Any]:
        if depth > _MAX_DEPTH:
            raise CheckpointError(f"{self.file}: cannot save '{path}': the tree is nested deeper "
                                  f"than {_MAX_DEPTH} levels")
        if node is None:
            return {"t": "none"}
        if isinstance(node, dict):
            bad = [k for k in node if not isinstance(k, str)]
            if bad:
                raise CheckpointError(f"{self.file}: dict keys must be strings, got {bad[0]!r} "
                                      f"at '{path or _ROOT_NAME}'")
            return {"t": "dict", "keys": list(node),
                    "items": [self.encode(v, join_path(path, k), depth + 1) for k, v in node.items()]}
        if is_namedtuple(node):
            cls = type(node)
            return {"t": "namedtuple", "type": f"{cls.__module__}:{cls.__qualname__}",
                    "fields": list(node._fields),
                    "items": [self.encode(v, join_path(path, f), depth + 1) for f, v in zip(node._fields, node)]}
        if isinstance(node, (tuple, list)):
            return {"t": "tuple" if isinstance(node, tuple) else "list",
                    "items": [self.encode(v, join_path(path, str(i)), depth + 1) for i, v in enumerate(node)]}
        if isinstance(node, np.ndarray):
            return {"t": "array", "name": self.entry(path, node)}
        if isinstance(node, np.generic):
            return {"t": "scalar", "name": self.entry(path, np.asarray(node))}
        if isinstance(node, bool):
            return {"t": "bool", "v": node}
        if isinstance(node, int):
            return {"t": "int", "v": int(node)}
        if isinstance(node, float):
            return {"t": "float", "v": float(node).hex()}
        if isinstance(node, str):
            return {"t": "str", "v": node}
        raise CheckpointError(f"{self.file}: cannot save a leaf of type {type(node).__name__} "
                              f"at '{path or _ROOT_NAME}' (arrays, numpy scalars, int, float, "
                              "bool, str and None are supported)")


def _write_npz(f: Any, arrays: Dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def save(path: PathLike, tree: Any) -> None:
    """Write ``tree`` (any pytree: params, state, a whole ``TrainState``) to ``path``.

    The file is written exactly at ``path`` (no suffix is added) and atomically:
    into a temporary file ``.{name}.{host}.{pid}.{random}.tmp`` in the same
    directory, flushed and fsynced, then moved over ``path`` with ``os.replace``;
    a crash leaves the previous file intact.  A symlink at ``path`` is followed:
    its target is replaced atomically and the link stays.  A new file gets the
    mode a plain ``open()`` would give (``0o666`` less the umask); an existing
    one keeps its mode.  Temporary files of ``path`` left by writers on this host
    that are no longer running are removed.  Raises :class:`CheckpointError` for
    leaves that cannot be stored (object arrays, arbitrary Python objects),
    non-string dict keys, or a tree nested deeper than 128 levels.
    """
    file = os.fspath(path)
    enc = _Encoder(file)
    spec = enc.encode(tree, "")
    meta = json.dumps({"format": _FORMAT, "version": _VERSION, "tree": spec})
    arrays = dict(enc.arrays)
    arrays[_STRUCT_KEY] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)

    target = os.path.realpath(file)  # through symlinks: replace the file, keep the link
    directory, name = os.path.split(target)
    _remove_stale_temps(directory, name)
    mode = (os.stat(target).st_mode & 0o7777) if os.path.exists(target) else None
    fd, tmp = _create_temp(directory, name)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _host_tag() -> str:
    """This host's name as it appears in temporary file names (``[A-Za-z0-9-]`` only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _create_temp(directory: str, name: str) -> "tuple[int, str]":
    """A new, empty temporary file for ``name``, created like ``open()`` creates files.

    ``O_CREAT | O_EXCL`` with mode ``0o666``: the kernel applies the umask (and any
    default ACL), exactly as for a plain ``open(path, "wb")``.
    """
    prefix = f".{name}.{_host_tag()}.{os.getpid()}."
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(directory, prefix + secrets.token_hex(4) + ".tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another save of this process (a thread) may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process, or unknowable: keep the file
    return True


def _remove_stale_temps(directory: str, name: str) -> None:
    """Delete ``name``'s temporary files left by dead writers of this host.

    A temporary file records its writer's host and pid; one whose pid is not a
    running process of this host was left by a killed save and can never be
    renamed into place.  Files of other hosts (a shared file system) and of
    live pids (possibly a reused pid: then the file waits for a later save)
    are left alone.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.{re.escape(_host_tag())}\.([0-9]+)\.[0-9a-f]+\.tmp")
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass


def _fsync_dir(directory: str) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- decoding ---------------------------------------------------------------------

_LEAF_KINDS = ("array", "scalar", "bool", "int", "float", "str")


def _kind_of(node: Any) -> str:
    """The spec kind a template node would be saved as."""
    if node is None:
        return "none"
    if isinstance(node, dict):
        return "dict"
    if is_namedtuple(node):
        return "namedtuple"
    if isinstance(node, tuple):
        return "tuple"
    if isinstance(node, list):
        return "list"
    if isinstance(node, np.ndarray):
        return "array"
    if isinstance(node, np.generic):
        return "scalar"
    if isinstance(node, bool):
        return "bool"
    if isinstance(node, int):
        return "int"
    if isinstance(node, float):
        return "float"
    if isinstance(node, str):
        return "str"
    return type(node).__name__


def _article(kind: str) -> str:
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def _describe_spec(spec: Dict[str, Any]) -> str:
    """A stored node, in words."""
    kind = spec["t"]
    if kind == "dict":
        return f"a dict with keys {sorted(spec['keys'])}"
    if kind in ("tuple", "list"):
        return f"a {kind} of length {len(spec['items'])}"
    if kind == "namedtuple":
        return f"named tuple {spec['type']} with fields {spec['fields']}"
    return {"none": "None", "array": "an array", "scalar": "a numpy scalar"}.get(kind, _article(kind))


def _describe_like(node: Any) -> str:
    """A template node, in words (the words of :func:`_describe_spec`)."""
    spec: Dict[str, Any] = {"t": _kind_of(node)}
    if spec["t"] == "dict":
        spec["keys"] = list(map(str, node))
    elif spec["t"] in ("tuple", "list"):
        spec["items"] = node
    elif spec["t"] == "namedtuple":
        spec["type"], spec["fields"] = type(node).__name__, list(node._fields)
    return _describe_spec(spec)


class _Decoder:
    def __init__(self, file: str, npz: Any, types: Dict[str, type]):
        self.file = file
        self.npz = npz
        self.types = types
        self.names = set(npz.files)

    def fail(self, path: str, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.file}: at '{path or _ROOT_NAME}': {msg}")

    def read(self, spec: Dict[str, Any], path: str) -> np.ndarray:
        name = spec.get("name")
        if name not in self.names:
            raise self.fail(path, f"missing array entry {name!r} (the file is incomplete)")
        return self.npz[name]

    def decode(self, spec: Any, path: str, like: Any, use_like: bool) -> Any:
        if not isinstance(spec, dict) or "t" not in spec:
            raise self.fail(path, "malformed structure record")
        kind = spec["t"]
        if use_like:
            want = _kind_of(like)
            if want != kind:
                raise self.fail(path, f"the file has {_describe_spec(spec)}, "
                                      f"`like` has {_describe_like(like)}")
        if kind == "none":
            return None
        if kind == "dict":
            keys, items = spec["keys"], spec["items"]
            if use_like:
                missing = [k for k in like if k not in keys]
                extra = [k for k in keys if k not in like]
                if missing or extra:
                    raise self.fail(path, f"dict keys differ from `like`: missing in the file "
                                          f"{missing}, not in `like` {extra}")
                table = dict(zip(keys, items))
                return {k: self.decode(table[k], join_path(path, k), like[k], True) for k in like}
            return {k: self.decode(v, join_path(path, k), None, False) for k, v in zip(keys, items)}
        if kind in ("tuple", "list", "namedtuple"):
            items = spec["items"]
            names = spec["fields"] if kind == "namedtuple" else [str(i) for i in range(len(items))]
            if use_like:
                like_names = list(like._fields) if kind == "namedtuple" else \
                    [str(i) for i in range(len(like))]
                if like_names != names:
                    raise self.fail(path, f"the file has {_describe_spec(spec)}, "
                                          f"`like` has {_describe_like(like)}")
            values = [self.decode(s, join_path(path, n), like[i] if use_like else None, use_like)
                      for i, (n, s) in enumerate(zip(names, items))]
            if kind == "tuple":
                return tuple(values)
            if kind == "list":
                return values
            cls = type(like) if use_like else self.namedtuple_class(spec, path)
            return cls(*values)
        if kind == "array":
            value = self.read(spec, path)
            if use_like and (value.shape != like.shape or value.dtype != like.dtype):
                raise self.fail(path, f"the file has an array of shape {value.shape} and dtype "
                                      f"{value.dtype}, `like` has shape {like.shape} and dtype "
                                      f"{like.dtype}")
            return value
        if kind == "scalar":
            value = self.read(spec, path)
            if value.ndim != 0:
                raise self.fail(path, f"a numpy scalar entry has shape {value.shape}")
            if use_like and value.dtype != like.dtype:
                raise self.fail(path, f"the file has a {value.dtype} scalar, `like` a {like.dtype}")
            return value[()]
        if kind == "bool":
            return bool(spec["v"])
        if kind == "int":
            return int(spec["v"])
        if kind == "float":
            return float.fromhex(spec["v"])
        if kind == "str":
            return str(spec["v"])
        raise self.fail(path, f"unknown node type {kind!r} (written by a newer fundl?)")

    def namedtuple_class(self, spec: Dict[str, Any], path: str) -> type:
        qualified = spec["type"]
        cls = self.types.get(qualified)
        if cls is None:
            short = qualified.rpartition(":")[2] or qualified
            raise self.fail(path, f"cannot import the named tuple class {qualified}: a checkpoint "
                                  "never imports the modules it names; pass the class, "
                                  f"load(path, types=({short},)), or a template: load(path, like=...)")
        if list(cls._fields) != list(spec["fields"]):
            raise self.fail(path, f"{qualified} is no longer a named tuple with fields "
                                  f"{spec['fields']} (it has {list(cls._fields)}); pass a template: "
                                  "load(path, like=...)")
        return cls


# fundl's own named-tuple states, rebuilt without ``like=``: (module, class name) pairs
# fixed here, imported by this code, never taken from a file.
_FUNDL_TYPES = (
    ("fundl.step", "TrainState"),
    ("fundl.optim.sgd", "TraceState"),
    ("fundl.optim.adagrad", "AdagradState"),
    ("fundl.optim.rmsprop", "RMSState"),
    ("fundl.optim.adam", "AdamState"),
    ("fundl.optim.lion", "LionState"),
    ("fundl.optim.accumulate", "AccumulateState"),
    ("fundl.data.preprocess", "Standardizer"),
    ("fundl.metrics", "Mean"),
)


def _type_name(cls: type) -> str:
    """How a named tuple class is recorded in a checkpoint: ``module:qualname``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _allowed_types(extra: Iterable[type] = ()) -> Dict[str, type]:
    """The named tuple classes ``load`` may rebuild: fundl's states plus ``extra``."""
    table: Dict[str, type] = {}
    for module_name, name in _FUNDL_TYPES:
        cls = getattr(importlib.import_module(module_name), name)
        table[_type_name(cls)] = cls
    for cls in extra:
        if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
            raise TypeError(f"load(types=...) takes named tuple classes, got {cls!r}")
        table[_type_name(cls)] = cls
    return table


def load(path: PathLike, like: Optional[Any] = None, *, types: Iterable[type] = ()) -> Any:
    """Read a pytree written by :func:`save`.

    Without ``like`` the stored structure is rebuilt.  A named tuple is rebuilt
    only as a class from an allow-list, never by importing what the file names:
    fundl's own states (``TrainState``, the optimizer states of
    :mod:`fundl.optim`, ``Standardizer``, ``metrics.Mean``) and the named tuple
    classes given in ``types`` (``load(path, types=(MyState,))``); any other
    raises :class:`CheckpointError` saying so.  With ``like`` (a tree of the expected structure, e.g. freshly
    initialised params or a ``TrainState``) the result takes ``like``'s
    container types and dict order, and every container, key, field, leaf kind,
    array shape and dtype must match: otherwise :class:`CheckpointError` names
    the first differing path.  A missing, corrupt or truncated file, or one not
    written by :func:`save`, also raises :class:`CheckpointError` naming ``path``
    (``FileNotFoundError`` if there is no file at all).
    """
    file = os.fspath(path)
    allowed = _allowed_types(types)
    if not os.path.exists(file):
        raise FileNotFoundError(f"no checkpoint at {file}")
    try:
        npz = np.load(file, allow_pickle=False)
        if not hasattr(npz, "files"):
            raise CheckpointError(f"{file}: not a fundl checkpoint (a single .npy array, "
                                  "not an .npz archive)")
        with npz:
            if _STRUCT_KEY not in npz.files:
                raise CheckpointError(f"{file}: not a fundl checkpoint (no {_STRUCT_KEY} entry; "
                                      "was it written by fundl.io.save?)")
            meta = json.loads(npz[_STRUCT_KEY].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != _FORMAT or "tree" not in meta:
                raise CheckpointError(f"{file}: not a fundl checkpoint (bad structure record)")
            if meta.get("version", 0) > _VERSION:
                raise CheckpointError(f"{file}: written by a newer fundl (format version "
                                      f"{meta.get('version')}, this one reads {_VERSION})")
            return _Decoder(file, npz, allowed).decode(meta["tree"], "", like, like is not None)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError,
            UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: corrupt or truncated checkpoint "
                              f"({type(err).__name__}: {err})") from None
