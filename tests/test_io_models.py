"""A model's architecture in its checkpoint: records, load_model, safetensors with a whole model."""

import json
import re
import zipfile

import numpy as np
import pytest

import fundl as fl
from fundl.io import CheckpointError, load_model, model_from_record, model_record
from layer_cases import CASES
from readme_blocks import readme_block

KEY = fl.random.key(0)
RECORDABLE = sorted(c for c, case in CASES.items() if case.builder != "elementwise_layer")


def kinds_in(layer):
    return {layer.kind}.union(*(kinds_in(c) for _, c in layer.children))


def test_the_catalogue_covers_every_builtin_kind():
    builtin = set(fl.io.architecture.fundl_builders())
    covered = set().union(*(kinds_in(CASES[c].make(1, 2)[0]) for c in RECORDABLE))
    assert builtin - {"sync_batch_norm"} <= covered, builtin - covered


@pytest.mark.parametrize("case_id", RECORDABLE)
def test_every_builtin_layer_round_trips_through_a_checkpoint(case_id, tmp_path):
    layer, in_shape, x = CASES[case_id].make(3, 3)
    params, state, _ = layer.init(KEY, in_shape)
    ts = fl.TrainState(params, state, fl.optim.adam().init(params), fl.random.key(1), 4)
    fl.io.save(tmp_path / "m.npz", ts, model=layer)      # in_shape found from init
    model, back = load_model(tmp_path / "m.npz")
    assert model is not layer and repr(model) == repr(layer)
    assert json.dumps(model_record(model, in_shape)) == json.dumps(model_record(layer, in_shape))
    assert isinstance(back, fl.TrainState) and back.step == 4
    assert fl.tree.all_equal(back.params, params) and fl.tree.all_equal(back.state, state)
    assert fl.tree.all_equal(model.init(KEY, in_shape)[0], params)   # the same init, too
    key = fl.random.key(2) if layer.traits.uses_key else None
    for train in (False, True):
        want = layer.apply(params, state, x, key=key, train=train)
        assert fl.tree.all_equal(model.apply(back.params, back.state, x, key=key, train=train),
                                 want)
    # the plain load ignores the architecture
    assert fl.tree.all_equal(fl.io.load(tmp_path / "m.npz").params, params)


@pytest.mark.parametrize("case_id", ["serial", "shared", "tied_output", "eval_mode",
                                     "bidirectional(lengths, sum)", "lstm(lengths, state)",
                                     "multi_head_attention(cross, masked, dropout)"])
def test_a_whole_model_in_safetensors_loads_without_like(case_id, tmp_path):
    pytest.importorskip("safetensors.numpy", reason="needs safetensors")
    layer, in_shape, x = CASES[case_id].make(3, 3)
    params, state, _ = layer.init(KEY, in_shape)
    tree = {"params": params, "state": state}
    fl.io.save_safetensors(tmp_path / "m.safetensors", tree, model=layer)
    back = fl.io.load_safetensors(tmp_path / "m.safetensors")
    assert fl.tree.structure(back) == fl.tree.structure(tree)   # {} of parameter-free layers too
    assert fl.tree.all_equal(back, tree)
    model, again = load_model(tmp_path / "m.safetensors")
    assert repr(model) == repr(layer) and fl.tree.all_equal(again, tree)
    assert fl.tree.all_equal(model.apply(again["params"], again["state"], x),
                             layer.apply(params, state, x))


def test_a_checkpoint_with_a_model_is_format_3_and_one_without_stays_2(tmp_path):
    model = fl.serial(fl.dense(3), fl.relu())
    params, state, _ = model.init(KEY, (2,))
    fl.io.save(tmp_path / "a.npz", params)
    fl.io.save(tmp_path / "b.npz", {"params": params, "state": state}, model=model)
    for name, version in (("a.npz", 2), ("b.npz", 3)):
        with zipfile.ZipFile(tmp_path / name) as zf:
            meta = json.loads(np.load(zf.open("__fundl_structure__.npy")).tobytes())
        assert meta["version"] == version and ("model" in meta) == (version == 3)
    assert meta["model"]["in_shape"] == {"$tuple": [2]}
    assert meta["model"]["model"]["children"][0] == [
        "dense_0", {"kind": "dense", "name": "dense", "config": {
            "features": 3, "use_bias": True, "w_init": {"$init": "glorot_uniform"},
            "b_init": {"$init": "zeros"}, "dtype": {"$dtype": "float32"}, "name": "dense"}}]
    with pytest.raises(CheckpointError, match="holds no model architecture; write it with "
                                              r"fundl.io.save\(path, tree, model=model\)"):
        load_model(tmp_path / "a.npz")


def test_config_values_are_encoded_safely_and_exactly():
    from fundl import initializers as I
    model = fl.serial(
        fl.embedding(9, 4, w_init=I.normal(0.02)),
        fl.conv1d(5, (3,), padding=((1, 1),), w_init=I.variance_scaling(2.0, "fan_out", "uniform"),
                  b_init=I.constant(0.25), dtype=np.float64),
        fl.batch_norm(momentum=np.float32(0.5), eps=1e-3),
        fl.lstm(3, forget_bias=float("inf"), w_h_init=I.orthogonal(0.5)),
        fl.dense(2, w_init=I.lecun_uniform, b_init=I.uniform(-0.1, 0.2)))
    record = json.loads(json.dumps(model_record(model, (6,))))
    rebuilt, in_shape = model_from_record(record)
    assert in_shape == (6,) and repr(rebuilt) == repr(model)
    conv = rebuilt.children[1][1].config
    assert conv["padding"] == ((1, 1),) and conv["kernel_size"] == (3,)
    assert conv["dtype"] is np.float64 and conv["b_init"](None, (2,))[0] == 0.25
    assert rebuilt.children[2][1].config["momentum"] == np.float32(0.5)
    assert type(rebuilt.children[2][1].config["momentum"]) is np.float32
    assert rebuilt.children[3][1].config["forget_bias"] == float("inf")
    assert rebuilt.children[4][1].config["w_init"] is I.lecun_uniform
    p1, _, _ = model.init(KEY, (6,))
    p2, _, _ = rebuilt.init(KEY, (6,))
    assert fl.tree.all_equal(p1, p2)   # every initializer rebuilt with its arguments


def test_values_without_a_safe_encoding_are_refused_at_save_time(tmp_path):
    def my_init(key, shape, dtype=np.float32):
        return np.full(shape, 0.5, dtype)

    model = fl.serial(fl.dense(3), fl.residual(fl.serial(fl.dense(3, w_init=my_init))))
    params, state, _ = model.init(KEY, (3,))
    with pytest.raises(CheckpointError, match=re.escape(
            "cannot record the architecture: layer 'residual_1/serial_0/dense_0' (dense): its "
            "argument 'w_init' is the function test_values_without_a_safe_encoding_are_refused_"
            "at_save_time.<locals>.my_init, which is not one of fundl's initializers")):
        fl.io.save(tmp_path / "m.npz", params, model=model)
    assert not (tmp_path / "m.npz").exists()
    cube = fl.elementwise_layer("cube", lambda x: x ** 3, lambda x, y, dy: 3 * x * x * dy,
                                saves="x")
    with pytest.raises(CheckpointError, match=re.escape(
            "layer 'serial_1/cube_1' (cube) has no registered builder")):
        model_record(fl.serial(fl.dense(2), fl.serial(fl.relu(), cube)))
    from fractions import Fraction
    with pytest.raises(CheckpointError, match=re.escape(
            "layer '<model>' (layer_norm): its argument 'eps' is a fractions.Fraction")):
        model_record(fl.layer_norm(eps=Fraction(1, 1000)))
    renamed = fl.serial(fl.dense(2), fl.serial(fl.dense(2)).replace(init_fn=None))
    model_record(renamed)        # functions are not part of a record (documented)


def test_a_layer_changed_after_it_was_built_is_refused():
    changed = fl.serial(fl.dense(2), fl.bidirectional(fl.gru(2), fl.gru(2).replace(kind="lstm")))
    with pytest.raises(CheckpointError, match=re.escape(
            "cannot record the architecture: layer 'bidirectional_1/backward' (lstm): its "
            "builder refused the recorded arguments")):
        model_record(changed)
    renamed = fl.serial(fl.dense(2), fl.dense(3).replace(name="head"))
    assert model_from_record(model_record(renamed))[0].children[1][0] == "head_1"


def test_load_model_allows_only_fundl_builders_and_the_ones_given(tmp_path):
    @fl.builder
    def scaled_dense(features: int, scale: float = 2.0):
        layer = fl.dense(features)
        return layer

    model = fl.serial(scaled_dense(3, 0.5), fl.relu())
    params, state, _ = model.init(KEY, (2,))
    fl.io.save(tmp_path / "m.npz", {"params": params, "state": state}, model=model)
    with pytest.raises(CheckpointError, match=re.escape(
            "layer 'dense_0' is a 'scaled_dense', which is not one of fundl's builders: "
            "a layer of your own loads with load_model(path, builders=[scaled_dense])")):
        load_model(tmp_path / "m.npz")
    again, tree = load_model(tmp_path / "m.npz", builders=[scaled_dense])
    assert again.children[0][1].config == {"features": 3, "scale": 0.5}


def crafted(tmp_path, change):
    """A checkpoint whose model record ``change`` edits (the zip rewritten)."""
    model = fl.serial(fl.dense(3), fl.relu())
    params, state, _ = model.init(KEY, (2,))
    fl.io.save(tmp_path / "ok.npz", {"params": params, "state": state}, model=model)
    with zipfile.ZipFile(tmp_path / "ok.npz") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    raw = np.load(zipfile.ZipFile(tmp_path / "ok.npz").open("__fundl_structure__.npy"))
    meta = json.loads(raw.tobytes())
    change(meta["model"])
    out = tmp_path / "bad.npz"
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in members.items():
            if n == "__fundl_structure__.npy":
                import io
                buf = io.BytesIO()
                np.save(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
                data = buf.getvalue()
            zf.writestr(n, data)
    return out


@pytest.mark.parametrize("change,message", [
    (lambda m: m["model"]["children"][0][1].update(kind="os.system"),
     "layer 'dense_0' is a 'os.system', which is not one of fundl's builders"),
    (lambda m: m["model"]["children"][0][1]["config"].update(w_init={"$init": "eval"}),
     "layer 'dense_0' (dense): argument 'w_init': unknown initializer"),
    (lambda m: m["model"]["children"][0][1]["config"].update(dtype={"$dtype": "object"}),
     "argument 'dtype': malformed value"),
    (lambda m: m["model"]["children"][0][1]["config"].update(features="3"),
     "its builder refused the recorded arguments"),
    (lambda m: m["model"]["children"][0][1]["config"].update(features=4),
     "the saved tree does not match the recorded model: params/dense_0/w: expected shape (2, 4)"),
    (lambda m: m["model"]["children"].reverse(),
     "rebuilt with the children ['relu_0', 'dense_1'], the record has ['relu_1', 'dense_0']"),
    (lambda m: m["model"]["children"][0].__setitem__(1, {"ref": 0}),
     "refers to shared layer 0, which the record does not define before it"),
    (lambda m: m.update(version=7), "model record version 7"),
    (lambda m: m["model"].update(extra=1), "layer '<model>': malformed layer record"),
])
def test_a_crafted_record_is_refused_naming_the_layer(tmp_path, change, message):
    bad = crafted(tmp_path, change)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model(bad)
    assert fl.io.load(bad)["params"]["relu_1"] == {}   # the tree itself still loads


def test_an_older_reader_refuses_format_3_and_a_model_field_needs_it(tmp_path):
    bad = crafted(tmp_path, lambda m: None)
    with zipfile.ZipFile(bad) as zf:
        meta = json.loads(np.load(zf.open("__fundl_structure__.npy")).tobytes())
    assert meta["version"] == 3
    from fundl.io.checkpoint import _check_meta
    meta["version"] = 2
    with pytest.raises(CheckpointError, match="expected format, tree, version"):
        _check_meta("f", meta)


def test_safetensors_metadata_is_checked(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="needs safetensors")
    tree = {"a": {"w": np.ones(2, np.float32)}, "b": {}}
    fl.io.save_safetensors(tmp_path / "t.safetensors", tree)
    tensors = st.load_file(str(tmp_path / "t.safetensors"))
    for skeleton, message in [
            ({"t": "dict", "keys": ["a"], "items": [{"t": "tensor", "name": "zz"}]},
             "names the tensor 'zz', which the file does not hold"),
            ({"t": "dict", "keys": ["a"], "items": [{"t": "oops"}]},
             "malformed fundl.tree metadata at 'a'"),
            ({"t": "dict", "keys": [], "items": []}, "the tensor 'a/w' is not in the fundl.tree"),
            ({"t": "list", "items": [{"t": "tensor", "name": "a/w"}] * 2},
             "the tensor 'a/w' is used twice")]:
        st.save_file(tensors, str(tmp_path / "bad.safetensors"),
                     metadata={"fundl.tree": json.dumps(skeleton)})
        with pytest.raises(CheckpointError, match=re.escape(message)):
            fl.io.load_safetensors(tmp_path / "bad.safetensors")
    st.save_file(tensors, str(tmp_path / "nomodel.safetensors"))
    with pytest.raises(CheckpointError, match="holds no model architecture"):
        load_model(tmp_path / "nomodel.safetensors")


def test_a_two_rank_sync_batch_norm_checkpoint_loads_into_the_batch_norm_model(tmp_path):
    from test_distributed import SCRIPTS, launch
    proc, _ = launch(2, str(SCRIPTS / "sync_bn_checkpoint.py"), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "rank_0.json").read_text())
    assert not got["refused_file"]
    assert re.search(r"layer 'batch_norm_1' \(sync_batch_norm\): its argument 'comm' is a "
                     r"fundl.distributed.comm.Comm.*loads into the same model built with "
                     r"fl.batch_norm", got["refusal"]), got["refusal"]
    model, ts = load_model(tmp_path / "ckpt.npz")
    assert [c.kind for _, c in model.children] == ["dense", "batch_norm", "relu", "dense"]
    x = np.load(tmp_path / "x.npy")
    np.testing.assert_array_equal(model.apply(ts.params, ts.state, x),
                                  np.load(tmp_path / "y_eval.npy"))
    # and it is what one process trains on the global batch (float64)
    k_x, k_y = fl.random.split(fl.random.key(5))
    y = fl.random.randint(k_y, (24,), 0, 3).astype(np.int64)
    opt = fl.optim.momentum(0.9)
    single = fl.TrainState.create(fl.random.key(1), model, opt, (4,))
    single = single._replace(params=fl.tree.cast(single.params, np.float64),
                             state=fl.tree.cast(single.state, np.float64))
    single = single._replace(opt_state=opt.init(single.params))
    step = fl.make_step(model, fl.losses.softmax_cross_entropy, opt)
    for _ in range(3):
        single, _ = step(single, (x, y), 0.1)
    for a, b in zip(fl.tree.leaves((ts.params, ts.state)), fl.tree.leaves((single.params,
                                                                           single.state))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_readme_whole_model_block_runs(tmp_path, monkeypatch):
    pytest.importorskip("safetensors.numpy", reason="needs safetensors")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile("import numpy as np\nimport fundl as fl\n" + readme_block("load_model("),
                 "README.md", "exec"), namespace)
    assert isinstance(namespace["ts2"], fl.TrainState)
    assert fl.tree.all_equal(namespace["tree"]["params"], namespace["ts"].params)
