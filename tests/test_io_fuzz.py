"""fundl.io under random trees and random damage: bit-identical, or a CheckpointError."""

import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (the `test` extra)")

import io as pyio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402
import zipfile  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import fundl as fl  # noqa: E402
from fundl import io  # noqa: E402
from fundl.io import CheckpointError  # noqa: E402
from fundl.io import checkpoint as io_checkpoint

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Pair(NamedTuple):
    first: object
    second: object


# --- bit-identical comparison --------------------------------------------------------

def identical(a, b):
    """Same containers (types, keys in order, fields) and the same bits in every leaf."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if isinstance(a, (np.ndarray, np.generic)):
        a, b = np.asarray(a), np.asarray(b)
        return (a.dtype == b.dtype and a.dtype.str == b.dtype.str and a.shape == b.shape
                and a.tobytes() == b.tobytes()
                and (not a.flags.f_contiguous or a.flags.c_contiguous or b.flags.f_contiguous))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


# --- random pytrees --------------------------------------------------------------------

_dtypes = st.one_of(
    hnp.boolean_dtypes(), hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"), hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"), hnp.datetime64_dtypes(),
    hnp.byte_string_dtypes(max_len=3), hnp.unicode_string_dtypes(max_len=3))
_arrays = st.builds(
    lambda a, fortran: np.asfortranarray(a) if fortran else a,
    hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)),
    st.booleans())
_numpy_scalars = _dtypes.flatmap(hnp.from_dtype)
_text = st.text(st.characters(exclude_categories=()), max_size=6)
_keys = st.one_of(_text, st.sampled_from(
    ["k", "k.npy", "k.npy#1", "__fundl_structure__", "__fundl_structure__.npy", "<root>", "",
     "a/b", "a", "a\x00b", "x.npy.npy"]))
_leaves = st.one_of(
    _arrays, _numpy_scalars, st.none(), st.booleans(), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), _text)
trees = st.recursive(_leaves, lambda children: st.one_of(
    st.lists(children, max_size=3),
    st.lists(children, max_size=3).map(tuple),
    st.dictionaries(_keys, children, max_size=4),
    st.builds(Pair, children, children),
    st.builds(fl.optim.TraceState, children),
), max_leaves=10)


@settings(FUZZ, max_examples=150)
@given(trees)
def test_random_trees_round_trip_bit_identically(tmp_path_factory, t):
    path = tmp_path_factory.getbasetemp() / "round_trip.npz"
    io.save(path, t)
    assert identical(t, io.load(path, types=(Pair,)))
    assert identical(t, io.load(path, like=t))


# --- damaged files ---------------------------------------------------------------------

def _reference():
    return {
        "params": {"dense_0": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
                               "b": np.array([np.nan, -0.0, 1e-30], np.float32)}},
        "k.npy": np.array([1, 2], np.int16), "k": np.float64(0.5),
        "opt": fl.optim.TraceState({"w": np.ones((2, 2), np.float64, order="F")}),
        "meta": [12, 1 / 3, "s", None, True, ()],
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "ref.npz"
    t = _reference()
    io.save(path, t)
    return t, path.read_bytes(), path.parent


def _load_or_error(path, original):
    """The rule: a damaged file loads as the original, or raises CheckpointError."""
    try:
        back = io.load(path)
    except CheckpointError:
        return
    assert identical(original, back)


_damage = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(1, 255)),
                                        min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 30)),
    st.tuples(st.just("insert"), st.tuples(st.integers(0, 1 << 30), st.binary(min_size=1,
                                                                              max_size=8))),
    st.tuples(st.just("delete"), st.tuples(st.integers(0, 1 << 30), st.integers(1, 8))),
    st.tuples(st.just("random"), st.binary(max_size=600)),
)


def _apply(data, damage):
    kind, arg = damage
    if kind == "flip":
        out = bytearray(data)
        for at, mask in arg:
            out[at % len(out)] ^= mask
        return bytes(out)
    if kind == "truncate":
        return data[:arg % len(data)]
    if kind == "insert":
        at = arg[0] % (len(data) + 1)
        return data[:at] + arg[1] + data[at:]
    if kind == "delete":
        at = arg[0] % len(data)
        return data[:at] + data[at + arg[1]:]
    return arg


@settings(FUZZ, max_examples=400)
@given(_damage)
def test_damaged_bytes_load_as_the_original_or_raise_checkpoint_error(reference, damage):
    original, data, directory = reference
    path = directory / "damaged.npz"
    path.write_bytes(_apply(data, damage))
    _load_or_error(path, original)


@settings(FUZZ, max_examples=60)
@given(st.lists(st.integers(0, 1 << 30), min_size=1, max_size=2))
def test_damage_in_the_zip_structures_is_caught(reference, where):
    # flips aimed at the zip's own records (headers, central directory), not at array data
    original, data, directory = reference
    spots = [i for sig in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06")
             for at in range(len(data)) if data.startswith(sig, at) for i in range(at, at + 46)]
    out = bytearray(data)
    for w in where:
        out[spots[w % len(spots)] % len(out)] ^= 0xFF
    path = directory / "zipdamage.npz"
    path.write_bytes(bytes(out))
    _load_or_error(path, original)


# --- damaged structure records -----------------------------------------------------------
# The record is re-zipped with a fresh CRC, so an edit can be a valid record of another tree
# (an int changed, two keys swapped).  The rule here: load raises CheckpointError, or returns
# exactly the tree the edited record describes -- nothing dropped, nothing turned into a
# string, every leaf from the member the record names (compared through _normal).

def _members(data):
    with zipfile.ZipFile(pyio.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rezip(path, members, record_bytes):
    buf = pyio.BytesIO()
    np.save(buf, np.frombuffer(record_bytes, np.uint8))
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in members.items():
            if name != "__fundl_structure__.npy":
                z.writestr(name, blob)
        z.writestr("__fundl_structure__.npy", buf.getvalue())


def _normal(spec, members, version):
    """A record's meaning: each leaf resolved to its data (member bytes, float bits)."""
    kind = spec["t"]
    if kind in ("array", "scalar"):
        return kind, members[io_checkpoint._member_of(spec, version)]
    if kind == "float":
        return kind, struct.pack("<d", io_checkpoint._parse_float(spec["v"]))
    if kind in ("bool", "int", "str"):
        return kind, type(spec["v"]), spec["v"]
    parts = tuple(_normal(s, members, version) for s in spec.get("items", ()))
    return kind, tuple(spec.get("keys", ())), spec.get("type"), tuple(spec.get("fields", ())), parts


def _meaning_of_tree(t):
    enc = io_checkpoint._Encoder("<memory>")
    spec = enc.encode(t, "")
    blobs = {}
    for name, value in enc.arrays.items():
        buf = pyio.BytesIO()
        np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
        blobs[name] = buf.getvalue()
    return _normal(spec, blobs, io_checkpoint._VERSION)


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 1 << 70), st.floats(allow_nan=False),
              st.sampled_from(["array", "scalar", "dict", "list", "tuple", "namedtuple", "none",
                               "int", "float", "str", "bool", "x.npy", "k.npy", "nan",
                               "0x1p-2", "fundl.optim.sgd:TraceState", "velocity"]), _text),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.sampled_from(
        ["t", "keys", "items", "member", "name", "v", "type", "fields", "format", "version",
         "tree"]), c, max_size=3)),
    max_leaves=6)


def _spots(node):
    """Every (container, key) pair in a JSON value."""
    pairs = list(node.items()) if isinstance(node, dict) else \
        list(enumerate(node)) if isinstance(node, list) else []
    out = []
    for key, value in pairs:
        out.append((node, key))
        out += _spots(value)
    return out


@st.composite
def _edited_records(draw, record):
    record = json.loads(json.dumps(record))
    for _ in range(draw(st.integers(1, 3))):
        spots = _spots(record)
        parent, key = spots[draw(st.integers(0, len(spots) - 1))]
        op = draw(st.sampled_from(["replace", "delete", "copy", "add", "swap"]))
        if op == "replace":
            parent[key] = draw(_json)
        elif op == "delete":
            del parent[key]
        elif op == "copy":  # another part of the record, put here
            other_parent, other_key = spots[draw(st.integers(0, len(spots) - 1))]
            parent[key] = json.loads(json.dumps(other_parent[other_key]))
        elif op == "add":
            if isinstance(parent, dict):
                parent[draw(_json.filter(lambda v: isinstance(v, str)) | st.just("extra"))] = \
                    draw(_json)
            else:
                parent.insert(key, draw(_json))
        elif isinstance(parent[key], list) and len(parent[key]) > 1:
            parent[key] = parent[key][::-1]
    return record


def _record_of(data):
    blob = _members(data)["__fundl_structure__.npy"]
    return json.loads(np.load(pyio.BytesIO(blob)).tobytes())


def _check_edited(reference, record_bytes, name):
    original, data, directory = reference
    members = _members(data)
    path = directory / name
    _rezip(path, members, record_bytes)
    try:
        back = io.load(path, types=(Pair,))
    except CheckpointError:
        return
    # a record that loads is a faithful one: the tree means exactly what the record says
    record = json.loads(record_bytes)
    assert _meaning_of_tree(back) == _normal(record["tree"], members, record["version"])


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_edited_structure_records_load_faithfully_or_raise(reference, data):
    record = data.draw(_edited_records(_record_of(reference[1])))
    _check_edited(reference, json.dumps(record).encode(), "edited.npz")


@settings(FUZZ, max_examples=200)
@given(st.data())
def test_damaged_record_text_loads_faithfully_or_raises(reference, data):
    text = bytearray(json.dumps(_record_of(reference[1])).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text) - 1))
        text[at:at + 1] = data.draw(st.binary(max_size=2))
    try:
        json.loads(bytes(text))
    except (ValueError, RecursionError):  # not JSON: load must say so with a CheckpointError
        path = reference[2] / "badtext.npz"
        _rezip(path, _members(reference[1]), bytes(text))
        with pytest.raises(CheckpointError):
            io.load(path)
        return
    _check_edited(reference, bytes(text), "text.npz")


def test_reference_checkpoint_is_intact(reference):
    original, data, directory = reference
    assert identical(original, io.load(directory / "ref.npz"))
    assert os.path.getsize(directory / "ref.npz") == len(data)
