"""fundl.io: bit-identical round trips, atomic writes, clear errors."""

import os
import zipfile
from typing import NamedTuple

import numpy as np
import pytest

import fundl as fl
from fundl import io, random, tree
from fundl.io import CheckpointError
from fundl.io import files as io_files
from fundl.io import checkpoint as io_checkpoint


class Pair(NamedTuple):
    first: object
    second: object


def _tree():
    return {
        "params": {"dense_0": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
                               "b": np.array([np.nan, -np.inf, 1e-30], dtype=np.float32)},
                   "relu_1": {}},
        "ids": np.array([[1, -2], [3, 2 ** 40]], dtype=np.int64),
        "key": random.key(5),
        "big": np.array([2 ** 64 - 1], dtype=np.uint64),
        "f64": np.float64(0.1),
        "pair": Pair((1, [2.5, "s"]), None),
        "list": [np.zeros((0, 3), np.float16), True],
        "empty_tuple": (),
        "step": 12,
        "half": 1 / 3,
    }


def _same(a, b):
    assert tree.all_equal(a, b)
    assert tree.structure(a) == tree.structure(b)
    for la, lb in zip(tree.leaves(a), tree.leaves(b)):
        assert type(la) is type(lb)


def test_round_trip_is_bit_identical(tmp_path):
    t = _tree()
    path = tmp_path / "t.npz"
    io.save(path, t)
    back = io.load(path, types=(Pair,))  # Pair is no fundl type: the caller names it
    _same(t, back)
    assert isinstance(back["pair"], Pair) and isinstance(back["pair"].first, tuple)
    assert isinstance(back["pair"].first[1], list) and back["params"]["relu_1"] == {}
    assert back["half"] == 1 / 3 and back["step"] == 12 and isinstance(back["step"], int)
    assert back["f64"].dtype == np.float64
    assert list(back) == list(t)  # dict order kept
    with np.load(path) as z:  # leaves are readable by path with plain numpy
        np.testing.assert_array_equal(z["params/dense_0/w"], t["params"]["dense_0"]["w"])


def test_round_trip_with_like(tmp_path):
    t = _tree()
    io.save(tmp_path / "t.npz", t)
    _same(t, io.load(tmp_path / "t.npz", like=t))


def test_train_state_round_trip_and_training_continues_identically(tmp_path):
    model = fl.serial(fl.dense(4), fl.relu(), fl.dense(2))
    opt = fl.optim.sgd()
    ts = fl.TrainState.create(random.key(0), model, opt, (3,))
    step = fl.make_step(model, fl.losses.mse, opt)
    batch = (np.ones((5, 3), np.float32), np.zeros((5, 2), np.float32))
    ts, _ = step(ts, batch, 0.1)
    io.save(tmp_path / "ts.npz", ts)
    back = io.load(tmp_path / "ts.npz")
    assert isinstance(back, fl.TrainState) and back.step == 1
    _same(ts, back)
    a, _ = step(ts, batch, 0.1)
    b, _ = step(back, batch, 0.1)
    assert tree.all_equal(a, b)


def test_root_leaf_and_odd_keys(tmp_path):
    io.save(tmp_path / "a.npz", np.arange(3))
    np.testing.assert_array_equal(io.load(tmp_path / "a.npz"), np.arange(3))
    t = {"a/b": np.ones(2), "a": {"b": np.zeros(2)}, "__fundl_structure__": np.ones(1)}
    io.save(tmp_path / "odd.npz", t)
    _same(t, io.load(tmp_path / "odd.npz"))


def test_save_rejects_unstorable_leaves(tmp_path):
    with pytest.raises(CheckpointError, match="'x/0'.*object"):
        io.save(tmp_path / "o.npz", {"x": [np.array([None])]})
    with pytest.raises(CheckpointError, match="type set at 's'"):
        io.save(tmp_path / "o.npz", {"s": {1}})
    with pytest.raises(CheckpointError, match="keys must be strings"):
        io.save(tmp_path / "o.npz", {1: np.ones(1)})
    assert not os.listdir(tmp_path)


def test_atomic_write_keeps_old_file_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    old = {"w": np.ones(3, np.float32)}
    io.save(path, old)

    def crash(src, dst):
        assert os.path.getsize(src) > 0  # the temp file was fully written
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save(path, {"w": np.zeros(3, np.float32), "extra": np.ones(2)})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temp file left behind
    _same(old, io.load(path))


def test_overwrite_keeps_file_mode(tmp_path):
    path = tmp_path / "m.npz"
    io.save(path, {"a": np.ones(1)})
    os.chmod(path, 0o640)
    io.save(path, {"a": np.zeros(1)})
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_corrupt_and_truncated_files_name_the_path(tmp_path):
    path = tmp_path / "c.npz"
    io.save(path, _tree())
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.npz: corrupt or truncated"):
        io.load(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.npz"):
        io.load(tmp_path / "junk.npz")
    np.save(tmp_path / "plain.npy", np.ones(2))
    with pytest.raises(CheckpointError, match="single .npy"):
        io.load(tmp_path / "plain.npy")
    np.savez(tmp_path / "foreign.npz", a=np.ones(2))
    with pytest.raises(CheckpointError, match="not a fundl checkpoint"):
        io.load(tmp_path / "foreign.npz")
    # flip bytes inside a stored array: the zip CRC check catches it
    flipped = bytearray(data)
    at = data.index(b"\x93NUMPY") + 200
    flipped[at:at + 4] = b"\xff\xfe\xfd\xfc"
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"flip\.npz"):
        io.load(tmp_path / "flip.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        io.load(tmp_path / "nope.npz")


def test_missing_entry_names_the_path(tmp_path):
    path = tmp_path / "m.npz"
    io.save(path, {"a": {"w": np.ones(2)}, "b": np.zeros(1)})
    # rewrite the archive without one leaf, keeping the structure record
    with zipfile.ZipFile(path) as src:
        members = {n: src.read(n) for n in src.namelist() if n != "a/w.npy"}
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as dst:
        for n, blob in members.items():
            dst.writestr(n, blob)
    with pytest.raises(CheckpointError, match=r"cut\.npz: at 'a/w': missing array entry"):
        io.load(tmp_path / "cut.npz")


def test_like_mismatch_names_the_path(tmp_path):
    path = tmp_path / "p.npz"
    params = {"dense_0": {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}}
    io.save(path, params)
    with pytest.raises(CheckpointError, match=r"p\.npz: at 'dense_0'.*missing in the file \['v'\]"):
        io.load(path, like={"dense_0": {"w": np.ones((2, 3), np.float32),
                                        "b": np.zeros(3, np.float32), "v": np.ones(1)}})
    with pytest.raises(CheckpointError, match=r"at 'dense_0/w'.*shape \(2, 3\).*shape \(3, 2\)"):
        io.load(path, like={"dense_0": {"w": np.ones((3, 2), np.float32),
                                        "b": np.zeros(3, np.float32)}})
    with pytest.raises(CheckpointError, match=r"at 'dense_0/b'.*float32.*float64"):
        io.load(path, like={"dense_0": {"w": np.ones((2, 3), np.float32),
                                        "b": np.zeros(3, np.float64)}})
    with pytest.raises(CheckpointError, match=r"at 'dense_0'.*a dict.*a list"):
        io.load(path, like={"dense_0": [1, 2]})
    io.save(tmp_path / "t.npz", (np.ones(1), Pair(1, 2)))
    with pytest.raises(CheckpointError, match=r"at '<root>'.*a tuple of length 2.*length 3"):
        io.load(tmp_path / "t.npz", like=(np.ones(1), Pair(1, 2), 3))
    with pytest.raises(CheckpointError, match=r"at '1'.*fields \['first', 'second'\].*\['step'\]"):
        io.load(tmp_path / "t.npz", like=(np.ones(1), NamedTuple("S", [("step", int)])(1)))
    with pytest.raises(CheckpointError, match=r"at '1/first'.*an int.*a float"):
        io.load(tmp_path / "t.npz", like=(np.ones(1), Pair(1.0, 2)))


def test_namedtuple_class_that_cannot_be_imported(tmp_path):
    Local = NamedTuple("Local", [("a", int)])
    Local.__module__ = "no_such_module_xyz"
    io.save(tmp_path / "n.npz", Local(3))
    with pytest.raises(CheckpointError, match="cannot import.*like="):
        io.load(tmp_path / "n.npz")
    back = io.load(tmp_path / "n.npz", like=Local(0))
    assert back == Local(3) and isinstance(back, Local)


# --- hostile files: loading never imports or runs anything the file names ---------

def _rezip(src, dst, replace=None, drop=(), add=None):
    """Copy the archive ``src`` to ``dst`` with some members replaced, dropped or added."""
    replace, add = dict(replace or {}), dict(add or {})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            zout.writestr(info.filename, replace.pop(info.filename, None) or zin.read(info))
        for name, blob in {**replace, **add}.items():
            zout.writestr(name, blob)


def _structure_blob(record):
    """The ``__fundl_structure__.npy`` member holding the JSON ``record``."""
    import io as _pyio
    import json
    buf = _pyio.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(record).encode(), np.uint8))
    return buf.getvalue()


def _record(path):
    import json
    with np.load(path) as z:
        return json.loads(z["__fundl_structure__"].tobytes())


def test_load_never_imports_a_module_named_by_the_file(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    (tmp_path / "evil_ckpt_mod.py").write_text(
        "import pathlib, typing\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "class S(typing.NamedTuple):\n    a: int\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    good = tmp_path / "good.npz"
    io.save(good, Pair(1, 2))
    rec = _record(good)
    rec["tree"]["type"] = "evil_ckpt_mod:S"
    rec["tree"]["fields"] = ["a", "b"]
    _rezip(good, tmp_path / "evil.npz", replace={"__fundl_structure__.npy": _structure_blob(rec)})
    with pytest.raises(CheckpointError, match=r"evil\.npz.*evil_ckpt_mod:S.*types="):
        io.load(tmp_path / "evil.npz")
    assert not marker.exists()
    import sys
    assert "evil_ckpt_mod" not in sys.modules


def test_named_tuple_types_come_from_an_allow_list(tmp_path):
    # fundl's own states load without help; the caller's own types through `types=`
    ts_like = (fl.optim.AdamState(np.int64(3), {"w": np.ones(2)}, {"w": np.zeros(2)}),
               fl.optim.TraceState({"w": np.ones(1)}), Pair(np.ones(1), 2))
    io.save(tmp_path / "s.npz", ts_like)
    with pytest.raises(CheckpointError, match=r"test_io:Pair.*types=\(Pair,\)"):
        io.load(tmp_path / "s.npz")
    back = io.load(tmp_path / "s.npz", types=(Pair,))
    _same(ts_like, back)
    assert type(back[0]) is fl.optim.AdamState and type(back[2]) is Pair
    # a type with the right name but other fields is refused
    Other = NamedTuple("Pair", [("first", int)])
    Other.__module__, Other.__qualname__ = Pair.__module__, Pair.__qualname__
    with pytest.raises(CheckpointError, match="fields"):
        io.load(tmp_path / "s.npz", types=[Other])
    with pytest.raises(TypeError, match="named tuple"):
        io.load(tmp_path / "s.npz", types=[dict])


def test_every_optimizer_state_is_allowed():
    import importlib
    import inspect
    states = set()
    for mod_name in ("sgd", "adagrad", "rmsprop", "adam", "lion", "accumulate", "transforms"):
        mod = importlib.import_module(f"fundl.optim.{mod_name}")
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if (issubclass(obj, tuple) and hasattr(obj, "_fields")
                    and obj.__name__.endswith("State")):
                states.add(obj)
    assert {fl.optim.TraceState, fl.optim.AdagradState, fl.optim.RMSState, fl.optim.AdamState,
            fl.optim.LionState, fl.optim.AccumulateState} <= states
    assert states | {fl.TrainState} <= set(io_checkpoint._allowed_types().values())


# --- save: permissions, symlinks, stale temp files -----------------------------------

def test_new_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        io.save(tmp_path / "private.npz", {"a": np.ones(1)})
        os.umask(0o022)
        io.save(tmp_path / "shared.npz", {"a": np.ones(1)})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "private.npz").st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "shared.npz").st_mode & 0o777 == 0o644


def test_save_through_a_symlink_writes_its_target(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "ckpt-7.npz"
    io.save(target, {"a": np.ones(2)})
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    io.save(link, {"a": np.zeros(3)})
    assert link.is_symlink() and os.readlink(link) == str(target)
    _same({"a": np.zeros(3)}, io.load(target))
    assert sorted(os.listdir(tmp_path)) == ["latest.npz", "runs"]
    assert os.listdir(tmp_path / "runs") == ["ckpt-7.npz"]
    # a dangling link: the file is created where it points, the link stays
    dangling = tmp_path / "next.npz"
    dangling.symlink_to(tmp_path / "runs" / "ckpt-8.npz")
    io.save(dangling, {"a": np.ones(1)})
    assert dangling.is_symlink()
    _same({"a": np.ones(1)}, io.load(tmp_path / "runs" / "ckpt-8.npz"))


def _dead_pid():
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_save_removes_stale_temp_files_of_dead_writers(tmp_path):
    path = tmp_path / "ckpt.npz"
    io.save(path, {"a": np.ones(1)})
    host = io_files._host_tag()
    dead = tmp_path / f".ckpt.npz.{host}.{_dead_pid()}.0123abcd.tmp"
    alive = tmp_path / f".ckpt.npz.{host}.{os.getpid()}.4567abcd.tmp"   # a writer still at work
    elsewhere = tmp_path / f".ckpt.npz.other-host.{_dead_pid()}.89abcdef.tmp"  # not ours to judge
    other = tmp_path / f".other.npz.{host}.{_dead_pid()}.0123abcd.tmp"  # another checkpoint's
    for p in (dead, alive, elsewhere, other):
        p.write_bytes(b"half a checkpoint")
    io.save(path, {"a": np.zeros(1)})
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (path, alive, elsewhere, other))
    _same({"a": np.zeros(1)}, io.load(path))


def test_temp_file_is_named_for_its_writer(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    io.save(tmp_path / "c.npz", {"a": np.ones(1)})
    import re
    assert re.fullmatch(rf"\.c\.npz\.{re.escape(io_files._host_tag())}\.{os.getpid()}\.[0-9a-f]+\.tmp",
                        seen[0])


def test_depth_limit(tmp_path):
    deep = np.ones(1)
    for _ in range(128):
        deep = [deep]
    io.save(tmp_path / "d.npz", deep)
    _same(deep, io.load(tmp_path / "d.npz"))
    with pytest.raises(CheckpointError, match="deeper than 128"):
        io.save(tmp_path / "e.npz", [deep])


# --- hostile archives: only CheckpointError, and never a large allocation ----------

def _npy(arr):
    import io as _pyio
    buf = _pyio.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_with_header(header, data=b"", version=(1, 0)):
    """An .npy member whose header dict (a Python literal, as text) is ``header``."""
    import struct
    text = header.encode("latin1") + b"\n"
    if version == (1, 0):
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(text)) + text + data


def _checkpoint(path, record_tree, members, version=2):
    """A checkpoint written by hand: ``members`` (name -> bytes) plus the record."""
    record = {"format": "fundl.io", "version": version, "tree": record_tree}
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)
        z.writestr("__fundl_structure__.npy", _structure_blob(record))
    return path


def test_compressed_member_is_refused_before_it_is_read(tmp_path, monkeypatch):
    good = tmp_path / "good.npz"
    io.save(good, {"w": np.zeros(1 << 16, np.float32)})
    with zipfile.ZipFile(good) as z:
        blob = z.read("w.npy")
    bomb = tmp_path / "bomb.npz"
    _rezip(good, bomb, drop={"w.npy"})
    with zipfile.ZipFile(bomb, "a") as z:
        z.writestr("w.npy", blob, compress_type=zipfile.ZIP_DEFLATED)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: (
        opened.append(getattr(name, "filename", name)), real_open(self, name, *a, **k))[1])
    with pytest.raises(CheckpointError, match=r"bomb\.npz.*'w\.npy' is compressed"):
        io.load(bomb)
    assert "w.npy" not in opened


@pytest.mark.parametrize("header, data, message", [
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,)}", b"\0" * 16,
     "declares 4398046511104 bytes of data.*has 16"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", b"\0" * 12,
     "declares 8 bytes.*has 12"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (-4,)}", b"", "shape"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (True,)}", b"\0" * 4, "shape"),
    ("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", b"\0" * 4, "fortran_order"),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (1,)}", b"\0" * 8, "object"),
    ("{'descr': 'nonsense', 'fortran_order': False, 'shape': (1,)}", b"\0" * 8, "dtype"),
    ("{'descr': '<f4', 'shape': (1,)}", b"\0" * 4, "header"),
    ("__import__('os').system('touch PWNED')", b"", "header"),
    ("(" * 5000 + ")" * 5000, b"", "header"),
], ids=["2**40 elements", "extra bytes", "negative", "bool dim", "int order", "object", "bad dtype",
        "missing key", "code", "deep"])
def test_npy_header_is_checked_before_anything_is_allocated(tmp_path, monkeypatch, header, data,
                                                            message):
    monkeypatch.chdir(tmp_path)
    path = _checkpoint(tmp_path / "h.npz", {"t": "array", "member": "x.npy"},
                       {"x.npy": _npy_with_header(header, data)})
    with pytest.raises(CheckpointError, match=rf"h\.npz.*'x\.npy'.*{message}"):
        io.load(path)
    assert not (tmp_path / "PWNED").exists()


def test_npy_versions_and_bad_magic(tmp_path):
    good = "{'descr': '<i2', 'fortran_order': False, 'shape': (2,)}"
    for version in ((1, 0), (2, 0), (3, 0)):
        path = _checkpoint(tmp_path / "v.npz", {"t": "array", "member": "x.npy"},
                           {"x.npy": _npy_with_header(good, b"\x01\x00\x02\x00", version)})
        np.testing.assert_array_equal(io.load(path), np.array([1, 2], np.int16))
    for blob in (_npy_with_header(good, b"\x01\x00\x02\x00", (9, 0)), b"\x93NUMPY", b"PK"):
        path = _checkpoint(tmp_path / "m.npz", {"t": "array", "member": "x.npy"}, {"x.npy": blob})
        with pytest.raises(CheckpointError, match=r"m\.npz.*'x\.npy'"):
            io.load(path)


def _patched(data, signature, offset, value):
    """``data`` with 2 bytes at ``offset`` after every ``signature`` set to ``value``."""
    out, at = bytearray(data), data.find(signature)
    while at >= 0:
        out[at + offset:at + offset + 2] = value.to_bytes(2, "little")
        at = data.find(signature, at + 1)
    return bytes(out)


def test_corrupt_files_raise_only_checkpoint_errors(tmp_path):
    good = tmp_path / "good.npz"
    io.save(good, {"a": np.arange(3), "b": [1, 2.5]})
    data = good.read_bytes()
    cases = {
        "text.npz": b"a,b\n1,2\n",
        "empty.npz": b"",
        "pickle.npz": b"\x80\x04K\x01.",
        # an unknown compression method, in the local and the central headers
        "method.npz": _patched(_patched(data, b"PK\x03\x04", 8, 99), b"PK\x01\x02", 10, 99),
        # the 'encrypted' flag
        "crypt.npz": _patched(_patched(data, b"PK\x03\x04", 6, 1), b"PK\x01\x02", 8, 1),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    for name in cases:
        with pytest.raises(CheckpointError, match=rf"{name}"):
            io.load(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"text\.npz") as err:
        io.load(tmp_path / "text.npz")
    assert "pickle" not in str(err.value)


def _record_of(tmp_path, text):
    """A checkpoint whose structure record is the raw bytes ``text``."""
    import io as _pyio
    buf = _pyio.BytesIO()
    np.save(buf, np.frombuffer(text, np.uint8))
    with zipfile.ZipFile(tmp_path / "r.npz", "w") as z:
        z.writestr("x.npy", _npy(np.ones(2)))
        z.writestr("__fundl_structure__.npy", buf.getvalue())
    return tmp_path / "r.npz"


@pytest.mark.parametrize("text", [
    b"[" * 100000 + b"]" * 100000,
    b'{"format": "fundl.io", "version": 2, "tree": ' + b'{"t": "list", "items": [' * 5000
    + b'{"t": "array", "member": "x.npy"}' + b"]}" * 5000 + b"}",
    b'{"format": "fundl.io", "version": 2, "tree": ' + b'{"t": "list", "items": [' * 200
    + b'{"t": "array", "member": "x.npy"}' + b"]}" * 200 + b"}",
    b"\xff\xfe not utf-8",
    b'{"format": "fundl.io", "version": 2, "tree"',
    b"[]", b"null", b'"fundl.io"',
    b'{"format": "fundl.io", "version": 2, "version": 2, '
    b'"tree": {"t": "array", "member": "x.npy"}}',
    b'{"format": "fundl.io", "version": "2", "tree": {"t": "array", "member": "x.npy"}}',
    b'{"format": "fundl.io", "version": true, "tree": {"t": "array", "member": "x.npy"}}',
    b'{"format": "fundl.io", "version": 0, "tree": {"t": "array", "member": "x.npy"}}',
    b'{"format": "fundl.io", "version": 2, "tree": {"t": "array", "member": "x.npy"}, "x": 1}',
    b'{"format": "fundl.io", "version": 2, "tree": {"t": "array", "member": 1e400}}',
    b'{"format": "fundl.io", "version": 2, "tree": {"t": "array", "member": "x.npy"}, '
    b'"big": ' + b"9" * 5000 + b"}",
], ids=lambda text: repr(text[:30] + text[-6:]))
def test_malformed_structure_records_raise_checkpoint_errors(tmp_path, text):
    with pytest.raises(CheckpointError, match=r"r\.npz"):
        io.load(_record_of(tmp_path, text))


def test_newer_version_says_so(tmp_path):
    path = _record_of(tmp_path, b'{"format": "fundl.io", "version": 99, "tree": {"t": "none"}}')
    with pytest.raises(CheckpointError, match="newer fundl.*99"):
        io.load(path)


# --- the encoding is collision-free, the record is checked strictly ------------------

@pytest.mark.parametrize("t", [
    {"k": np.ones(2), "k.npy": np.zeros(3)},
    {"k.npy": np.zeros(3), "k": np.ones(2), "k.npy.npy": np.arange(2), "k.npy#1": np.arange(4)},
    {"__fundl_structure__.npy": np.arange(3), "__fundl_structure__": np.ones(1),
     "__fundl_structure__#1": np.zeros(1)},
    {"a\x00b": np.ones(1), "a\x00c": np.zeros(1), "a": np.arange(2)},
    {"\udc80": np.ones(1), "?": np.zeros(1), "é/ü": np.arange(3)},
    {"": np.ones(1), "<root>": np.zeros(2)},
    {"x" * 70000: np.ones(1), "x" * 70001: np.zeros(1)},
    [{"k": np.float32(1.5)}, {"k.npy": np.float32(2.5)}],
], ids=["npy suffix", "suffix chain", "record name", "NUL", "not utf-8", "root", "long",
                           "scalars"])
def test_colliding_names_round_trip_bit_identically(tmp_path, t):
    path = tmp_path / "c.npz"
    io.save(path, t)
    _same(t, io.load(path))
    _same(t, io.load(path, like=t))
    with np.load(path) as z:  # numpy reads the plain names it lists as the right members
        for name in z.files:
            z[name]


def test_numpy_names_are_the_tree_paths(tmp_path):
    io.save(tmp_path / "p.npz", {"k": np.ones(2), "k.npy": np.zeros(3), "a": {"b": np.arange(2)}})
    with np.load(tmp_path / "p.npz") as z:
        np.testing.assert_array_equal(z["k"], np.ones(2))
        np.testing.assert_array_equal(z["a/b"], np.arange(2))
        assert sorted(z.files) == sorted(["k", "k.npy#1", "a/b", "__fundl_structure__"])
        np.testing.assert_array_equal(z["k.npy#1"], np.zeros(3))


def test_version_1_files_still_load(tmp_path):
    # as fundl wrote them before: leaf `name`, member `name + ".npy"`
    tree_v1 = {"t": "dict", "keys": ["k", "k.npy", "n"],
               "items": [{"t": "array", "name": "k"}, {"t": "array", "name": "k.npy"},
                         {"t": "namedtuple", "type": "fundl.optim.sgd:TraceState",
                          "fields": ["velocity"], "items": [{"t": "float", "v": (0.1).hex()}]}]}
    path = _checkpoint(tmp_path / "v1.npz", tree_v1,
                       {"k.npy": _npy(np.ones(2)), "k.npy.npy": _npy(np.zeros(3))}, version=1)
    back = io.load(path)
    np.testing.assert_array_equal(back["k"], np.ones(2))
    np.testing.assert_array_equal(back["k.npy"], np.zeros(3))
    assert back["n"] == fl.optim.TraceState(0.1) and type(back["n"]) is fl.optim.TraceState


def test_python_float_bits_survive(tmp_path):
    import struct
    odd_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF0_0000_0000_0123))[0]
    t = [odd_nan, -0.0, float("inf"), 5e-324]
    io.save(tmp_path / "f.npz", t)
    back = io.load(tmp_path / "f.npz")
    assert [struct.pack("<d", v) for v in back] == [struct.pack("<d", v) for v in t]


_A = {"t": "array", "member": "x.npy"}


@pytest.mark.parametrize("tree_record, message", [
    ({"t": "dict", "keys": ["a", "b"], "items": [_A]}, "2 keys.*1 item"),
    ({"t": "dict", "keys": ["a", "a"], "items": [_A, {"t": "none"}]}, "duplicate key 'a'"),
    ({"t": "dict", "keys": [1], "items": [_A]}, "keys"),
    ({"t": "dict", "keys": "a", "items": [_A]}, "keys"),
    ({"t": "dict", "keys": ["a"], "items": _A}, "items"),
    ({"t": "list", "items": [_A, _A]}, "'x.npy' is used twice"),
    ({"t": "list", "items": []}, "'x.npy' .*not used"),
    ({"t": "list", "items": [_A, {"t": "array", "member": "y.npy"}]},
     "missing array entry 'y.npy'"),
    ({"t": "list", "items": [_A, {"t": "scalar", "member": "__fundl_structure__.npy"}]},
     "structure record"),
    ({"t": "list", "items": [_A, {"t": "array", "member": 3}]}, "member"),
    ({"t": "list", "items": [_A, {"t": "array"}]}, "fields"),
    ({"t": "list", "items": [_A, {"t": "none", "extra": 1}]}, "fields"),
    ({"t": "list", "items": [_A, {"t": "set", "items": []}]}, "unknown node type 'set'"),
    ({"t": "list", "items": [_A, {"t": ["none"]}]}, "node type"),
    ({"t": "list", "items": [_A, "none"]}, "malformed"),
    ({"t": "list", "items": [_A, {"t": "int", "v": "3"}]}, "int"),
    ({"t": "list", "items": [_A, {"t": "int", "v": True}]}, "int"),
    ({"t": "list", "items": [_A, {"t": "int", "v": 1.0}]}, "int"),
    ({"t": "list", "items": [_A, {"t": "bool", "v": 1}]}, "bool"),
    ({"t": "list", "items": [_A, {"t": "float", "v": 1.5}]}, "float"),
    ({"t": "list", "items": [_A, {"t": "float", "v": "one"}]}, "float"),
    ({"t": "list", "items": [_A, {"t": "float", "v": "nan:zz"}]}, "float"),
    ({"t": "list", "items": [_A, {"t": "str", "v": 5}]}, "str"),
    ({"t": "namedtuple", "type": "fundl.optim.sgd:TraceState", "fields": ["momentum", "x"],
      "items": [_A]}, "2 fields.*1 item"),
    ({"t": "namedtuple", "type": "fundl.optim.sgd:TraceState", "fields": ["m", "m"],
      "items": [_A, _A]}, "duplicate field 'm'"),
    ({"t": "namedtuple", "type": 5, "fields": ["momentum"], "items": [_A]}, "type"),
    ({"t": "namedtuple", "type": "fundl.optim.sgd:TraceState", "fields": ["other"],
      "items": [_A]}, "fields"),
])
def test_bad_records_are_refused(tmp_path, tree_record, message):
    path = _checkpoint(tmp_path / "b.npz", tree_record, {"x.npy": _npy(np.ones(2))})
    with pytest.raises(CheckpointError, match=rf"b\.npz.*{message}"):
        io.load(path)
    with pytest.raises(CheckpointError, match=r"b\.npz"):
        io.load(path, like=[np.ones(2), None])


def test_unreferenced_and_duplicate_members_are_refused(tmp_path):
    good = tmp_path / "g.npz"
    io.save(good, {"a": np.ones(2)})
    _rezip(good, tmp_path / "extra.npz", add={"b.npy": _npy(np.zeros(1))})
    with pytest.raises(CheckpointError, match=r"extra\.npz.*'b\.npy'.*not used"):
        io.load(tmp_path / "extra.npz")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        _rezip(good, tmp_path / "dup.npz", add={"a.npy": _npy(np.zeros(2))})
    with pytest.raises(CheckpointError, match=r"dup\.npz.*'a\.npy'.*twice"):
        io.load(tmp_path / "dup.npz")


def test_empty_string_scalars_round_trip_with_like(tmp_path):
    t = [np.bytes_(b""), np.str_(""), np.bytes_(b"ab")]
    io.save(tmp_path / "s.npz", t)
    _same(t, io.load(tmp_path / "s.npz", like=t))
    assert [v.dtype for v in io.load(tmp_path / "s.npz", like=t)] == [v.dtype for v in t]
