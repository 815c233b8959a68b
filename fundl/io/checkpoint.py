"""Checkpoints: save and load any pytree as one ``.npz`` file.

::

    fundl.io.save("run/ckpt.npz", train_state)      # atomic: old file intact on a crash
    ts = fundl.io.load("run/ckpt.npz")              # a TrainState again
    params = fundl.io.load("params.npz", like=params_template)
    state = fundl.io.load("mine.npz", types=(MyState,))   # your own named tuples

What a checkpoint promises:

* **Atomic.**  :func:`save` writes a temporary file next to the target, fsyncs
  it and renames it over the target: a reader sees the old file or the new one,
  never half of one.  A symlink is followed (its target is replaced, the link
  stays); a new file's mode follows the umask, an existing file keeps its mode;
  temporary files left by killed writers are cleaned up by the next save.
* **Bit-exact.**  Arrays come back with their dtype, shape, memory order and
  every bit (NaN payloads too); Python ``int``/``float``/``bool``/``str`` leaves,
  ``None``, dict key order, tuple vs list vs named tuple and empty containers
  are kept.  Any string dict keys work, including ones that look like file
  names (``"k"`` next to ``"k.npy"``).
* **Never runs code.**  Nothing is unpickled and no module a file names is
  imported: a named tuple is rebuilt only as a class from an allow-list -- fundl's own states
  (``TrainState``, the optimizer states of :mod:`fundl.optim`,
  ``data.Standardizer``, ``metrics.Mean``) and the classes passed as
  ``types=`` -- or as the class of the ``like=`` template.
* **Checked.**  A damaged or crafted file (truncated, bytes the zip CRCs
  catch, compressed or encrypted members, ``.npy`` headers that disagree with
  their data, a structure record that is not exactly of the form :func:`save`
  writes) raises :class:`CheckpointError` naming the file, never another
  exception and never a partly read tree.  Nothing
  is allocated or copied from what a header claims before one check: the dtype
  must be one a checkpoint holds (bool, integer, float, complex, datetime, bytes
  or str, with elements of at least one byte: never ``|V0``, ``|S0``, a
  structured or subarray dtype), so the element count is bounded by the bytes;
  each array's declared size must equal the bytes its member really holds; and
  the members may not claim more bytes than the file has.

The format: a zip of uncompressed ``.npy`` members, one per array leaf, named
by its tree path (``params/dense_0/w.npy``; ``#1``, ``#2`` ... appended where
names would collide or end in ``.npy``), so ``np.load(path).files`` lists readable names and
``np.load(path)[name]`` reads one leaf.  The structure is JSON in the member
``__fundl_structure__.npy``; each leaf there records the exact member holding
its data, and loading reads exactly that member.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import struct
import zipfile
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..core import Layer
from ..tree import is_namedtuple, join_path
from .architecture import known_in_shape, model_record
from .files import CheckpointError, PathLike, atomic_write

__all__ = ["save", "load", "CheckpointError"]


_STRUCT_KEY = "__fundl_structure__"
_STRUCT_MEMBER = _STRUCT_KEY + ".npy"
_FORMAT = "fundl.io"
_VERSION = 3  # 3: a "model" record beside the tree (written only with model=); 2: leaves
#             record their exact member name; 1 (still read): name + ".npy"
_ROOT_NAME = "<root>"
_MAX_DEPTH = 128  # containers nested in containers; far beyond any real pytree
_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10000  # bytes of an .npy header dict (numpy's own default limit)
_MAX_NAME = 1024  # bytes of a member name taken from a tree path
#: The dtype kinds a checkpoint holds: bool, ints, floats, complex, datetime/timedelta,
#: bytes and str; each of a non-zero size, with no fields and no subarray.  Anything else
#: (a zero-size ``|V0``/``|S0``, a structured or void dtype) is refused on save and on load.
_KINDS = "biufcmMSU"
_MAX_INTP = int(np.iinfo(np.intp).max)


def _dtype_problem(dtype: np.dtype) -> Optional[str]:
    """Why a checkpoint cannot hold ``dtype``, as a phrase about the dtype (``None`` if it can)."""
    name = dtype.str if dtype.fields is None and dtype.subdtype is None else str(dtype)[:120]
    if dtype.hasobject:
        return f"dtype {name} holds Python objects (they would need pickle)"
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in _KINDS:
        return (f"dtype {name} is a structured, void or subarray dtype (a checkpoint holds "
                "bool, integer, float, complex, datetime, bytes and str arrays)")
    if dtype.itemsize == 0:
        return f"dtype {name} has elements of 0 bytes"
    return None


def _plain_name(path: str) -> str:
    """``path`` made usable as a zip member name: no NUL, valid UTF-8, bounded length."""
    name = path.replace("\x00", "?").encode("utf-8", "replace")
    if len(name) > _MAX_NAME:
        name = name[:_MAX_NAME] + "~".encode()
    return name.decode("utf-8", "replace").replace("\ufffd", "?")


def _float_text(x: float) -> str:
    """A Python float as exact text: ``float.hex``, or the raw bits of a NaN."""
    if x != x:
        return "nan:" + struct.pack(">d", x).hex()
    return x.hex()


def _parse_float(text: str) -> Optional[float]:
    """The float of :func:`_float_text` (``None`` if ``text`` is not one)."""
    if text.startswith("nan:"):
        digits = text[4:]
        if len(digits) != 16 or digits.strip("0123456789abcdef"):
            return None
        value = struct.unpack(">d", bytes.fromhex(digits))[0]
        return value if value != value else None
    try:
        return float.fromhex(text)
    except (ValueError, OverflowError):
        return None


class _Encoder:
    def __init__(self, file: str):
        self.file = file
        self.arrays: Dict[str, np.ndarray] = {}  # exact member name -> array
        self.taken = {_STRUCT_KEY}  # names as numpy lists them (member minus ".npy")

    def member(self, path: str, value: np.ndarray) -> str:
        """A new member for the leaf at ``path``; its name is unique in the zip and in
        numpy's ``.npy``-stripped view (no name ends in ``.npy`` before the suffix)."""
        where = path or _ROOT_NAME
        if value.dtype.hasobject:
            raise CheckpointError(f"{self.file}: cannot save '{where}': object arrays "
                                  "are not supported (they would need pickle)")
        if type(value) not in (np.ndarray, np.memmap) and not isinstance(value, np.generic):
            what = ("its mask would be lost; save np.ma.getdata(x) and np.ma.getmaskarray(x) "
                    "as two leaves, or x.filled(value)" if isinstance(value, np.ma.MaskedArray)
                    else "it would load as a plain numpy array; save np.asarray(x)")
            raise CheckpointError(f"{self.file}: cannot save '{where}': a "
                                  f"{type(value).__module__}.{type(value).__name__} is not a plain "
                                  f"numpy array and {what}")
        problem = _dtype_problem(value.dtype)
        if problem:
            raise CheckpointError(f"{self.file}: cannot save '{where}': its {problem}")
        base = _plain_name(path or _ROOT_NAME)
        name, i = base, 0
        while name in self.taken or name.endswith(".npy"):
            i += 1
            name = f"{base}#{i}"
        self.taken.add(name)
        self.arrays[name + ".npy"] = value
        return name + ".npy"

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
            return {"t": "dict", "keys": [str(k) for k in node],
                    "items": [self.encode(v, join_path(path, k), depth + 1)
                              for k, v in node.items()]}
        if is_namedtuple(node):
            cls = type(node)
            return {"t": "namedtuple", "type": _type_name(cls), "fields": list(node._fields),
                    "items": [self.encode(v, join_path(path, f), depth + 1)
                              for f, v in zip(node._fields, node)]}
        if isinstance(node, (tuple, list)):
            return {"t": "tuple" if isinstance(node, tuple) else "list",
                    "items": [self.encode(v, join_path(path, str(i)), depth + 1)
                              for i, v in enumerate(node)]}
        if isinstance(node, np.ndarray):
            return {"t": "array", "member": self.member(path, node)}
        if isinstance(node, np.generic):
            return {"t": "scalar", "member": self.member(path, np.asarray(node))}
        if isinstance(node, bool):
            return {"t": "bool", "v": bool(node)}
        if isinstance(node, int):
            return {"t": "int", "v": int(node)}
        if isinstance(node, float):
            return {"t": "float", "v": _float_text(float(node))}
        if isinstance(node, str):
            return {"t": "str", "v": str(node)}
        raise CheckpointError(f"{self.file}: cannot save a leaf of type {type(node).__name__} "
                              f"at '{path or _ROOT_NAME}' (arrays, numpy scalars, int, float, "
                              "bool, str and None are supported)")


def _write_npz(f: Any, arrays: Dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for member, value in arrays.items():
            with zf.open(member, mode="w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(value), allow_pickle=False)


def save(path: PathLike, tree: Any, *, model: Optional[Layer] = None,
         in_shape: Any = None) -> None:
    """Write ``tree`` (any pytree: params, state, a whole ``TrainState``) to ``path``.

    The file is written exactly at ``path`` (no suffix is added) and atomically:
    into a temporary file ``.{name}.{host}.{pid}.{random}.tmp`` in the same
    directory, flushed and fsynced, then moved over ``path`` with ``os.replace``;
    a crash leaves the previous file intact.  A symlink at ``path`` is followed:
    its target is replaced atomically and the link stays.  A new file gets the
    mode a plain ``open()`` would give (``0o666`` less the umask); an existing
    one keeps its mode.  Temporary files of ``path`` left by writers on this host
    that are no longer running are removed.  Raises :class:`CheckpointError` for
    leaves that cannot be stored (object arrays, structured, void or zero-size
    dtypes, arbitrary Python objects, array subclasses whose extra state would be
    lost -- a ``np.ma.MaskedArray``'s mask, a ``np.matrix``; a ``np.memmap`` is
    stored as its data), non-string dict keys, or a tree nested deeper than 128
    levels.

    ``model=``: the file also carries the model's architecture
    (:func:`fundl.io.model_record`: kinds, configurations and children) and its
    per-example ``in_shape`` (found from the model's ``init`` when ``tree`` holds the
    params it made in this process), so that :func:`fundl.io.load_model` rebuilds the
    model with no code at hand.  A layer whose configuration has no safe encoding
    (your own function as an initializer, an MPI communicator) is a
    :class:`CheckpointError` naming its path and argument, before anything is written.
    """
    file = os.fspath(path)
    record = None
    if model is not None:
        if in_shape is None:
            in_shape = known_in_shape(model, tree)
        record = model_record(model, in_shape)
    enc = _Encoder(file)
    spec = enc.encode(tree, "")
    fields: Dict[str, Any] = {"format": _FORMAT, "version": 2, "tree": spec}
    if record is not None:
        fields.update(version=3, model=record)
    try:
        meta = json.dumps(fields)
    except ValueError as err:  # an int beyond Python's int-to-text limit
        raise CheckpointError(f"{file}: cannot save the tree: {err}") from None
    arrays = dict(enc.arrays)
    arrays[_STRUCT_MEMBER] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)
    atomic_write(file, lambda f: _write_npz(f, arrays))


class _Archive:
    """A checkpoint's zip members, checked before any of them is read.

    Only stored (uncompressed), unencrypted members are accepted and together
    they may not claim more bytes than the file has, so no read or allocation
    made from them can exceed the file's size.
    """

    def __init__(self, file: str, zf: zipfile.ZipFile, file_size: int):
        self.file, self.zf = file, zf
        self.members: Dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in zf.infolist():
            name = info.filename
            if name in self.members:
                raise self.fail(name, "appears twice in the archive")
            if info.compress_type != zipfile.ZIP_STORED:
                raise self.fail(name, f"is compressed (zip method {info.compress_type}); "
                                      "fundl writes only stored members")
            if info.flag_bits & 0x1:
                raise self.fail(name, "is encrypted")
            if info.compress_size != info.file_size:
                raise self.fail(name, f"is stored in {info.compress_size} bytes but claims "
                                      f"{info.file_size}")
            total += info.file_size
            self.members[name] = info
        if total > file_size:
            raise CheckpointError(f"{file}: corrupt checkpoint: its members claim {total} bytes, "
                                  f"the file has {file_size}")

    def fail(self, member: str, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.file}: member {member!r} {msg}")

    def _header(self, name: str, f: Any) -> "tuple[np.dtype, tuple, bool, int]":
        """Parse an .npy header: dtype, shape, Fortran order, and the data's offset."""
        magic = f.read(8)
        if len(magic) < 8 or magic[:6] != _NPY_MAGIC:
            raise self.fail(name, "is not an .npy array (bad magic)")
        version = (magic[6], magic[7])
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise self.fail(name, f"has an unknown .npy format version {version[0]}.{version[1]}")
        size_len = 2 if version == (1, 0) else 4
        raw = f.read(size_len)
        length = int.from_bytes(raw, "little")
        if len(raw) < size_len or length > _MAX_HEADER:
            raise self.fail(name, f"has a bad .npy header length ({length} bytes, at most "
                                  f"{_MAX_HEADER})")
        text = f.read(length)
        try:
            # literal_eval evaluates Python literals only: it cannot call anything
            header = ast.literal_eval(text.decode("utf-8" if version == (3, 0) else "latin1"))
        except Exception as err:  # SyntaxError, ValueError, RecursionError, MemoryError ...
            raise self.fail(name, f"has an unreadable .npy header ({type(err).__name__})") from None
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise self.fail(name, "has an .npy header without exactly descr, fortran_order, shape")
        shape, fortran = header["shape"], header["fortran_order"]
        if not (isinstance(shape, tuple) and len(shape) <= 64
                and all(type(d) is int and d >= 0 for d in shape)):
            raise self.fail(name, f"has a bad shape {shape!r}")
        if type(fortran) is not bool:
            raise self.fail(name, f"has a bad fortran_order {fortran!r}")
        try:
            dtype = np.lib.format.descr_to_dtype(header["descr"])
        except Exception:
            raise self.fail(name, f"has a bad dtype {header['descr']!r}") from None
        return dtype, shape, fortran, 8 + size_len + length

    def _check_size(self, name: str, dtype: np.dtype, shape: tuple, actual: int) -> int:
        """The element count of an array member, after the one check made before anything is
        allocated or copied: a dtype a checkpoint holds (elements of >= 1 byte, so that the
        count is bounded by the member's bytes, which :class:`_Archive` bounds by the file's),
        exactly ``actual`` bytes of data, and a shape numpy can make (for an empty array too)."""
        problem = _dtype_problem(dtype)
        if problem:
            raise self.fail(name, f"is not a checkpoint's array: its {problem}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes != actual:
            raise self.fail(name, f"declares {nbytes} bytes of data ({dtype} of shape "
                                  f"{shape}) but has {actual}")
        if math.prod(d for d in shape if d) * dtype.itemsize > _MAX_INTP:
            raise self.fail(name, f"has a shape {shape} too large for any array")
        return count

    def array(self, name: str) -> np.ndarray:
        """The array in member ``name``, after its header is checked against its size."""
        info = self.members[name]
        with self.zf.open(info) as f:
            dtype, shape, fortran, offset = self._header(name, f)
            nbytes = info.file_size - offset
            count = self._check_size(name, dtype, shape, nbytes)
            data = f.read(nbytes)
            if len(data) != nbytes or f.read(1):  # reading to the end checks the CRC
                raise self.fail(name, "is truncated")
        flat = np.frombuffer(data, dtype=dtype, count=count)
        value = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
        return value.copy(order="K")  # writable, owning its memory

    def record(self) -> Any:
        """The parsed JSON structure record."""
        raw = self.array(_STRUCT_MEMBER)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise CheckpointError(f"{self.file}: not a fundl checkpoint (the structure record is "
                                  f"{raw.dtype} of shape {raw.shape}, not bytes)")
        try:
            return json.loads(raw.tobytes().decode("utf-8"), object_pairs_hook=_unique_pairs)
        except (ValueError, RecursionError) as err:  # incl. UnicodeDecodeError, JSONDecodeError
            raise CheckpointError(f"{self.file}: corrupt checkpoint: the structure record is not "
                                  f"valid JSON ({type(err).__name__}: {err})") from None


def _unique_pairs(pairs: List[Any]) -> Dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a JSON object repeats a key")
    return out


# --- reading: the structure record ---------------------------------------------------

_NODE_FIELDS = {
    "none": {"t"}, "dict": {"t", "keys", "items"}, "tuple": {"t", "items"},
    "list": {"t", "items"}, "namedtuple": {"t", "type", "fields", "items"},
    "array": {"t", "member"}, "scalar": {"t", "member"},
    "bool": {"t", "v"}, "int": {"t", "v"}, "float": {"t", "v"}, "str": {"t", "v"},
}
_LEAF_OK = {
    "bool": lambda v: type(v) is bool,
    "int": lambda v: type(v) is int,
    "float": lambda v: isinstance(v, str) and _parse_float(v) is not None,
    "str": lambda v: isinstance(v, str),
}


def _check_meta(file: str, meta: Any) -> int:
    """The format version of a parsed record, after checking its top level."""
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{file}: not a fundl checkpoint (bad structure record)")
    version = meta.get("version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{file}: corrupt checkpoint: format version {version!r}")
    if version > _VERSION:
        raise CheckpointError(f"{file}: written by a newer fundl (format version {version}, "
                              f"this one reads {_VERSION})")
    want = {"format", "version", "tree"} | ({"model"} if version >= 3 else set())
    if set(meta) != want:
        raise CheckpointError(f"{file}: corrupt checkpoint: the structure record has fields "
                              f"{sorted(meta)}, expected {', '.join(sorted(want))}")
    return version


def _member_of(spec: Dict[str, Any], version: int) -> str:
    """The zip member an array/scalar node reads (version 1 named it without ``.npy``)."""
    return spec["name"] + ".npy" if version == 1 else spec["member"]


class _Checker:
    """Strict validation of a structure record against the archive's members.

    Every node kind known with exactly its fields; keys/fields distinct strings,
    as many as items; leaves of the right JSON types; every member named exists
    and is used once.  :attr:`used` maps each used member to its tree path.
    """

    def __init__(self, file: str, members: Iterable[str], version: int):
        self.file, self.members, self.version = file, set(members), version
        self.fields = dict(_NODE_FIELDS)
        if version == 1:
            self.fields.update(array={"t", "name"}, scalar={"t", "name"})
        self.used: Dict[str, str] = {}

    def fail(self, path: str, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.file}: at '{path or _ROOT_NAME}': {msg}")

    def names(self, spec: Dict[str, Any], key: str, word: str, path: str, count: int) -> List[str]:
        names = spec[key]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise self.fail(path, f"malformed {spec['t']} node: {key} is not a list of strings")
        if len(names) != count:
            raise self.fail(path, f"malformed {spec['t']} node: {len(names)} {key} for "
                                  f"{count} items")
        seen = set()
        for n in names:
            if n in seen:
                raise self.fail(path, f"malformed {spec['t']} node: duplicate {word} {n!r}")
            seen.add(n)
        return names

    def check(self, spec: Any, path: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise self.fail(path, f"the structure is nested deeper than {_MAX_DEPTH} levels")
        if not isinstance(spec, dict):
            raise self.fail(path, f"malformed structure record (a node is a "
                                  f"{type(spec).__name__})")
        kind = spec.get("t")
        if not isinstance(kind, str):
            raise self.fail(path, f"malformed structure record (node type {kind!r})")
        fields = self.fields.get(kind)
        if fields is None:
            raise self.fail(path, f"unknown node type {kind!r} (written by a newer fundl?)")
        if set(spec) != fields:
            raise self.fail(path, f"malformed {kind} node: fields {sorted(spec)}, expected "
                                  f"{sorted(fields)}")
        if kind in ("dict", "tuple", "list", "namedtuple"):
            items = spec["items"]
            if not isinstance(items, list):
                raise self.fail(path, f"malformed {kind} node: items is not a list")
            if kind == "dict":
                names = self.names(spec, "keys", "key", path, len(items))
            elif kind == "namedtuple":
                if not isinstance(spec["type"], str):
                    raise self.fail(path, "malformed namedtuple node: type is not a string")
                names = self.names(spec, "fields", "field", path, len(items))
            else:
                names = [str(i) for i in range(len(items))]
            for name, item in zip(names, items):
                self.check(item, join_path(path, name), depth + 1)
        elif kind in ("array", "scalar"):
            ref = spec["name" if self.version == 1 else "member"]
            if not isinstance(ref, str):
                raise self.fail(path, f"malformed {kind} node: the member is not a string")
            member = _member_of(spec, self.version)
            if member == _STRUCT_MEMBER:
                raise self.fail(path, "a leaf names the structure record as its data")
            if member not in self.members:
                raise self.fail(path, f"missing array entry {member!r} (the file is incomplete)")
            if member in self.used:
                raise self.fail(path, f"member {member!r} is used twice (also at "
                                      f"'{self.used[member]}')")
            self.used[member] = path or _ROOT_NAME
        elif kind in _LEAF_OK and not _LEAF_OK[kind](spec["v"]):
            raise self.fail(path, f"malformed {kind} leaf {spec['v']!r}")


# --- reading: rebuilding the tree ------------------------------------------------------

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
    """Rebuild a tree from a record that :class:`_Checker` accepted."""

    def __init__(self, file: str, archive: _Archive, types: Dict[str, type], version: int):
        self.file, self.archive, self.types, self.version = file, archive, types, version

    def fail(self, path: str, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.file}: at '{path or _ROOT_NAME}': {msg}")

    def read(self, spec: Dict[str, Any]) -> np.ndarray:
        return self.archive.array(_member_of(spec, self.version))

    def decode(self, spec: Any, path: str, like: Any, use_like: bool) -> Any:
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
            value = self.read(spec)
            if use_like and (value.shape != like.shape or value.dtype != like.dtype):
                raise self.fail(path, f"the file has an array of shape {value.shape} and dtype "
                                      f"{value.dtype}, `like` has shape {like.shape} and dtype "
                                      f"{like.dtype}")
            return value
        if kind == "scalar":
            value = self.read(spec)
            if value.ndim != 0:
                raise self.fail(path, f"a numpy scalar entry has shape {value.shape}")
            dtype = np.asarray(like).dtype if use_like else value.dtype  # as save stores it:
            if value.dtype != dtype:  # np.bytes_(b"") is S0, its array S1
                raise self.fail(path, f"the file has a {value.dtype} scalar, `like` a {dtype}")
            return value[()]
        if kind == "bool":
            return bool(spec["v"])
        if kind == "int":
            return int(spec["v"])
        if kind == "float":
            return _parse_float(spec["v"])
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
                                  f"load(path, types=({short},)), or a template: "
                                  "load(path, like=...)")
        fields = list(getattr(cls, "_fields", ()))   # a named tuple class: _allowed_types
        if fields != list(spec["fields"]):
            raise self.fail(path, f"{qualified} is no longer a named tuple with fields "
                                  f"{spec['fields']} (it has {fields}); pass a "
                                  "template: load(path, like=...)")
        return cls


# fundl's own named-tuple states, rebuilt without ``like=``: (module, class name) pairs
# fixed here, imported by this code, never taken from a file.
_FUNDL_TYPES = (
    ("fundl.step", "TrainState"),
    ("fundl.optim.sgd", "TraceState"),
    ("fundl.optim.adagrad", "AdagradState"),
    ("fundl.optim.rmsprop", "RMSState"),
    ("fundl.optim.adam", "AdamState"),
    ("fundl.optim.adam", "AdamaxState"),
    ("fundl.optim.lion", "LionState"),
    ("fundl.optim.accumulate", "AccumulateState"),
    ("fundl.optim.masking", "MaskedState"),
    ("fundl.optim.masking", "MultiTransformState"),
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
    raises :class:`CheckpointError` saying so.  With ``like`` (a tree of the
    expected structure, e.g. freshly initialised params or a ``TrainState``)
    the result takes ``like``'s container types (named tuples included) and
    dict order, and every container, key, field, leaf kind, array shape and
    dtype must match: otherwise :class:`CheckpointError` names the first
    differing path.  A missing, corrupt or truncated file, or one not
    written by :func:`save`, also raises :class:`CheckpointError` naming ``path``
    (``FileNotFoundError`` if there is no file at all).
    """
    return _load_checked(path, like, types, False)


def load_with_model(path: PathLike, *, types: Iterable[type] = ()) -> Tuple[Any, Any]:
    """``(tree, model record or None)`` of a checkpoint (:func:`fundl.io.load_model`)."""
    return _load_checked(path, None, types, True)


def _load_checked(path: PathLike, like: Any, types: Iterable[type], with_model: bool) -> Any:
    file = os.fspath(path)
    allowed = _allowed_types(types)
    if not os.path.exists(file):
        raise FileNotFoundError(f"no checkpoint at {file}")
    try:
        return _load(file, like, allowed, with_model)
    except (CheckpointError, MemoryError):
        raise
    except Exception as err:  # whatever a damaged zip or record makes the readers raise
        raise CheckpointError(f"{file}: corrupt or truncated checkpoint "
                              f"({type(err).__name__}: {err})") from err


def _load(file: str, like: Any, types: Dict[str, type], with_model: bool = False) -> Any:
    with open(file, "rb") as fh:
        if fh.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
            raise CheckpointError(f"{file}: not a fundl checkpoint (a single .npy array, "
                                  "not an .npz archive)")
        size = os.fstat(fh.fileno()).st_size
        fh.seek(0)
        with zipfile.ZipFile(fh) as zf:
            if _STRUCT_MEMBER not in zf.namelist():
                raise CheckpointError(f"{file}: not a fundl checkpoint (no {_STRUCT_KEY} entry; "
                                      "was it written by fundl.io.save?)")
            archive = _Archive(file, zf, size)
            meta = archive.record()
            version = _check_meta(file, meta)
            checker = _Checker(file, archive.members, version)
            checker.check(meta["tree"], "", 0)
            unused = [m for m in archive.members if m != _STRUCT_MEMBER and m not in checker.used]
            if unused:
                raise CheckpointError(f"{file}: member {unused[0]!r} is not used by the structure "
                                      "record (the file was altered)")
            tree = _Decoder(file, archive, types, version).decode(meta["tree"], "", like,
                                                                 like is not None)
            return (tree, meta.get("model")) if with_model else tree
