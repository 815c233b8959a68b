import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fundl as fl
from fundl.io import CheckpointError
from fundl.io.safetensors_io import load_safetensors, save_safetensors
from fundl.testing import read_only

st = pytest.importorskip("safetensors.numpy",
                         reason="the safetensors tests need safetensors (pip install safetensors)")


def _model_trees():
    model = fl.serial(fl.conv2d(4, 3), fl.batch_norm(), fl.relu(), fl.flatten(), fl.dense(3))
    params, state, _ = model.init(fl.random.key(0), (5, 5, 2))
    return params, state


def _bit_identical(a, b):
    pa, pb = fl.tree.flatten_with_paths(a), fl.tree.flatten_with_paths(b)
    assert [p for p, _ in pa] == [p for p, _ in pb]
    for (path, x), (_, y) in zip(pa, pb):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert x.tobytes() == y.tobytes(), path


def test_round_trip_keeps_names_dtypes_shapes_and_order(tmp_path):
    params, state = _model_trees()
    tree = read_only({"params": params, "state": state,
                      "extra": {"ids": np.arange(6, dtype=np.int32).reshape(2, 3),
                                "mask": np.array([True, False]), "half": np.ones(3, np.float16),
                                "f64": np.array(2.5), "empty": np.zeros((0, 4), np.float32)}})
    file = tmp_path / "m.safetensors"
    save_safetensors(file, tree)
    names = st.load_file(str(file))
    assert "params/conv2d_0/w" in names and "state/batch_norm_1/var" in names
    assert names["params/dense_4/w"].shape == (36, 3)
    back = load_safetensors(file)
    # without like: the saved tree from the file's fundl.tree metadata, empty dicts included
    assert list(back["params"]) == list(params) and back["params"]["relu_2"] == {}
    assert list(back["state"]) == list(state) and back["state"]["dense_4"] == {}
    assert list(back["extra"]) == ["ids", "mask", "half", "f64", "empty"]
    _bit_identical(back, tree)
    assert fl.tree.structure(back) == fl.tree.structure(tree)
    assert back["extra"]["f64"].shape == () and back["extra"]["half"].dtype == np.float16
    # a file without that metadata (an older fundl's): nested dicts of the names, in the
    # saved order, empty sub-dicts (relu, flatten) dropped
    older = tmp_path / "older.safetensors"
    flat = dict(fl.tree.flatten_with_paths(tree))
    st.save_file(flat, str(older), metadata={"fundl.paths": json.dumps(list(flat))})
    back = load_safetensors(older)
    assert list(back["params"]) == ["conv2d_0", "batch_norm_1", "dense_4"]
    expect = {"params": {k: v for k, v in params.items() if v}, "state": {"batch_norm_1":
              state["batch_norm_1"]}, "extra": tree["extra"]}
    _bit_identical(back, expect)
    # with like: like's structure, empty dicts included, arrays writeable and owned
    again = load_safetensors(file, like=tree)
    _bit_identical(again, tree)
    assert again["params"]["relu_2"] == {} and list(again["params"]) == list(params)
    w = again["params"]["dense_4"]["w"]
    assert w.flags.writeable and w.flags.owndata


def test_lists_and_tuples_by_index(tmp_path):
    tree = {"layers": [{"w": np.ones((2, 2))}, {"w": np.zeros(3)}], "pair": (np.ones(1), np.ones(2))}
    save_safetensors(tmp_path / "t.safetensors", tree)
    back = load_safetensors(tmp_path / "t.safetensors")
    assert isinstance(back["layers"], list) and isinstance(back["pair"], tuple)
    _bit_identical(back, tree)
    like = load_safetensors(tmp_path / "t.safetensors", like=tree)
    assert isinstance(like["layers"], list) and isinstance(like["pair"], tuple)
    _bit_identical(like, tree)


def test_loads_a_file_written_by_safetensors_with_torch_names(tmp_path):
    file = str(tmp_path / "torch.safetensors")
    sd = {"0.weight": np.arange(12, dtype=np.float32).reshape(4, 3),
          "0.bias": np.ones(4, np.float32), "1.weight": np.full((2, 4), 0.5, np.float32)}
    st.save_file(sd, file)
    back = load_safetensors(file)
    assert set(back) == set(sd)  # flat: torch names have no '/'
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
        assert back[k].dtype == np.float32
    # and into a fundl model through the PyTorch interop
    from fundl.interop import torch as fit
    model = fl.serial(fl.dense(4), fl.relu(), fl.dense(2, use_bias=False))
    params, state, _ = model.init(fl.random.key(0), (3,))
    p, _ = fit.load_state_dict(params, state, back, [("dense_0", "0", "dense"),
                                                     ("dense_2", "1", "dense")])
    np.testing.assert_array_equal(p["dense_0"]["w"], sd["0.weight"].T)


def test_atomic_overwrite_keeps_no_temp_files_and_mode(tmp_path):
    file = tmp_path / "p.safetensors"
    save_safetensors(file, {"a": np.zeros(2)})
    os.chmod(file, 0o600)
    save_safetensors(file, {"a": np.ones(2)})
    assert os.stat(file).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["p.safetensors"]
    np.testing.assert_array_equal(load_safetensors(file)["a"], [1.0, 1.0])
    # a failing save leaves the old file as it was
    with pytest.raises(CheckpointError):
        save_safetensors(file, {"a": np.zeros(2), "b": "text"})
    np.testing.assert_array_equal(load_safetensors(file)["a"], [1.0, 1.0])
    assert sorted(os.listdir(tmp_path)) == ["p.safetensors"]


def test_non_array_leaves_raise_naming_the_path(tmp_path):
    ts = fl.TrainState.create(fl.random.key(0), fl.dense(2), fl.optim.sgd(), in_shape=(3,))
    with pytest.raises(CheckpointError, match=r"'step'.*int.*params.*state"):
        save_safetensors(tmp_path / "ts.safetensors", ts)
    with pytest.raises(CheckpointError, match="'a/b'.*str"):
        save_safetensors(tmp_path / "x.safetensors", {"a": {"b": "x"}})
    with pytest.raises(CheckpointError, match="complex128 is not a safetensors dtype"):
        save_safetensors(tmp_path / "x.safetensors", {"c": np.zeros(2, complex)})
    with pytest.raises(CheckpointError, match="bare array"):
        save_safetensors(tmp_path / "x.safetensors", np.zeros(2))
    with pytest.raises(CheckpointError, match="share the name 'a/b'"):
        save_safetensors(tmp_path / "x.safetensors", {"a/b": np.zeros(1), "a": {"b": np.ones(1)}})
    assert not list(tmp_path.iterdir())


def test_like_mismatches_name_the_path(tmp_path):
    params, state = _model_trees()
    file = tmp_path / "p.safetensors"
    save_safetensors(file, params)
    with pytest.raises(CheckpointError, match=r"'dense_4/w' is float32 \(36, 3\) in the file "
                                              r"but like expects float32 \(36, 4\)"):
        bad = dict(params, dense_4={"w": np.zeros((36, 4), np.float32), "b": np.zeros(4)})
        load_safetensors(file, like=bad)
    with pytest.raises(CheckpointError, match="'conv2d_0/w' is float32 .* expects float64"):
        load_safetensors(file, like=fl.tree.cast(params, np.float64))
    with pytest.raises(CheckpointError, match="no value for path 'extra/w'"):
        load_safetensors(file, like=dict(params, extra={"w": np.zeros(1)}))
    with pytest.raises(CheckpointError, match="unexpected path 'dense_4/b'"):
        load_safetensors(file, like=dict(params, dense_4={"w": params["dense_4"]["w"]}))


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_safetensors(junk)


def test_without_safetensors_the_error_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['safetensors'] = None; sys.modules['safetensors.numpy'] = None\n"
            "import numpy as np\n"
            "from fundl.io.safetensors_io import save_safetensors\n"
            "try:\n"
            "    save_safetensors('x.safetensors', {'a': np.zeros(1)})\n"
            "except ImportError as err:\n"
            "    assert 'fundl[safetensors]' in str(err), err\n"
            "    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(Path(fl.__file__).parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_save_safetensors_follows_the_umask_and_a_symlink_like_io_save(tmp_path):
    pytest.importorskip("safetensors", reason="the optional safetensors package is not installed")
    import os
    target, link = tmp_path / "real.safetensors", tmp_path / "link.safetensors"
    old = os.umask(0o077)
    try:
        fl.io.save_safetensors(target, {"w": np.ones(2, np.float32)})
    finally:
        os.umask(old)
    assert (target.stat().st_mode & 0o777) == 0o600
    os.symlink(target.name, link)
    fl.io.save_safetensors(link, {"w": np.zeros(3, np.float32)})
    assert link.is_symlink() and fl.io.load_safetensors(target)["w"].shape == (3,)
