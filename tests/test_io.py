"""fundl.io: bit-identical round trips, atomic writes, clear errors."""

import os
import zipfile
from typing import NamedTuple

import numpy as np
import pytest

import fundl as fl
from fundl import io, random, tree
from fundl.io import CheckpointError


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
            if issubclass(obj, tuple) and hasattr(obj, "_fields") and obj.__name__.endswith("State"):
                states.add(obj)
    assert {fl.optim.TraceState, fl.optim.AdagradState, fl.optim.RMSState, fl.optim.AdamState,
            fl.optim.LionState, fl.optim.AccumulateState} <= states
    assert states | {fl.TrainState} <= set(io._allowed_types().values())


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
    host = io._host_tag()
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
    assert re.fullmatch(rf"\.c\.npz\.{re.escape(io._host_tag())}\.{os.getpid()}\.[0-9a-f]+\.tmp",
                        seen[0])


def test_depth_limit(tmp_path):
    deep = np.ones(1)
    for _ in range(128):
        deep = [deep]
    io.save(tmp_path / "d.npz", deep)
    _same(deep, io.load(tmp_path / "d.npz"))
    with pytest.raises(CheckpointError, match="deeper than 128"):
        io.save(tmp_path / "e.npz", [deep])
