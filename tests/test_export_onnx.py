"""fundl.export.to_onnx against the real ONNX Runtime: every built-in layer kind and the
issue's models give fundl's eval-mode ``apply`` to 1e-5 relative (float32), at batch
sizes 1 and 3 from one exported model (its batch axis is dynamic)."""

import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest

import fundl as fl
from fundl import tree
from fundl.core import BUILDERS

from layer_cases import CASES, f32
from readme_blocks import readme_block

onnx = pytest.importorskip("onnx", reason="the optional onnx package is not installed "
                                          "(pip install 'fundl[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the parity "
                                                "tests need the real runtime")

from fundl.export import ExportError, to_onnx  # noqa: E402
from fundl.export.site import CONVERTERS  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-5          # max |onnx - fundl| / max |fundl|, per output


# --- the harness -------------------------------------------------------------------------

def perturbed(params, state, seed=0):
    """Params moved off their initial values (zero biases, unit scales would hide a wrong
    layout) and batch-norm statistics that are not the identity."""
    rng = np.random.default_rng(seed)

    def move(a):
        if not (isinstance(a, np.ndarray) and a.dtype.kind == "f"):
            return a
        return (a + 0.3 * rng.standard_normal(a.shape)).astype(a.dtype)

    def stats(path, a):
        if path.endswith("var"):
            return rng.uniform(0.5, 2.0, a.shape).astype(a.dtype)
        return move(a)

    return tree.map(move, params), tree.map_with_paths(stats, state)


def leaves(x):
    """The arrays of a (nested) input or output, depth first: the graph's order."""
    if isinstance(x, (tuple, list)):
        return [a for xi in x for a in leaves(xi)]
    return [x]


def session(proto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def worst_difference(model, params, state, proto, xs):
    """The largest ``max |onnx - fundl| / max |fundl|`` over the outputs and the batches
    ``xs`` (shapes and dtypes must match exactly)."""
    sess = session(proto)
    names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    for x in xs:
        want = leaves(model.apply(params, state, x, train=False))
        got = sess.run(None, dict(zip(names, leaves(x))))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
            assert np.isfinite(g).all() == np.isfinite(w).all()
            worst = max(worst, float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)))
    return worst


def export_and_compare(model, in_shape, xs, seed=0):
    """Init, perturb, export once, check the model and compare at every batch in ``xs``."""
    params, state, _ = model.init(fl.random.key(seed), in_shape)
    params, state = perturbed(params, state, seed)
    proto = to_onnx(model, params, state, in_shape)
    onnx.checker.check_model(proto, full_check=True)
    worst = worst_difference(model, params, state, proto, xs)
    assert worst <= TOL, worst
    return proto, worst


def ops(proto):
    return {n.op_type for n in proto.graph.node}


# --- every built-in layer kind: the shared catalogue of layer cases --------------------------

EXPORTABLE = {name: case for name, case in CASES.items() if case.builder != "elementwise_layer"}


@pytest.mark.parametrize("case_id", sorted(EXPORTABLE))
def test_catalogue_case_matches_fundl(case_id):
    make = EXPORTABLE[case_id].make
    model, in_shape, x3 = make(3, 3)
    x1 = make(1, 3)[2]
    export_and_compare(model, in_shape, [x1, x3])


def kinds_in(layer):
    return {layer.kind}.union(*(kinds_in(c) for _, c in layer.children))


def test_every_builtin_kind_has_a_converter_and_cases():
    builtin = {k for k, build in BUILDERS.items() if build.__module__.startswith("fundl.")}
    assert len(builtin) >= 45 and set(CONVERTERS) == builtin, set(CONVERTERS) ^ builtin
    in_catalogue = set().union(*(kinds_in(c.make(1, 2)[0]) for c in EXPORTABLE.values()))
    configured = set().union(*(kinds_in(model) for model, _, _ in KINDS.values()))
    assert in_catalogue == builtin, builtin - in_catalogue
    assert configured >= {"conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d",
                          "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "rnn", "gru",
                          "lstm", "bidirectional", "multi_head_attention", "tied_output"}


# --- more configurations per kind: padding, dilation, groups, masks, lengths ---------------------

def _ids(b, t, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (b, t)).astype(np.int64)


def _lengths(b, t):
    return np.array([t, 1, 0, t - 1, 2][:b] if b > 1 else [t - 1], np.int64)


def _key_mask(b, s):
    m = np.ones((b, s), bool)
    m[:, -1] = False
    if b > 1:
        m[1, :] = False                  # an example with every key masked: zero weights
    return m


def _tied():
    emb = fl.shared(fl.embedding(9, 4))
    return fl.serial(emb, fl.dense(4), fl.tanh(), fl.tied_output(emb))


def _one(layer, shape):
    return layer, shape, lambda b: f32((b,) + shape, seed=b)


KINDS = {
    "conv1d(same, stride 2, dilation 2)": _one(
        fl.conv1d(4, 3, stride=2, padding="same", dilation=2), (9, 3)),
    "conv1d(explicit pads, depthwise)": _one(fl.conv1d(6, 3, padding=[(2, 1)], groups=3), (7, 3)),
    "conv2d(same, stride 2, no bias)": _one(
        fl.conv2d(5, (3, 2), stride=(2, 1), padding="same", use_bias=False), (7, 6, 3)),
    "conv2d(explicit pads, dilation)": _one(
        fl.conv2d(4, 3, padding=[(2, 0), (1, 3)], dilation=(2, 1)), (8, 7, 2)),
    "conv2d(groups 3)": _one(fl.conv2d(6, 2, groups=3), (5, 5, 6)),
    "conv_transpose1d(padding, output_padding, dilation)": _one(
        fl.conv_transpose1d(3, 3, stride=3, padding=1, output_padding=2, dilation=2), (5, 2)),
    "conv_transpose2d(same)": _one(fl.conv_transpose2d(3, 4, stride=2, padding="same"),
                                   (3, 4, 2)),
    "conv_transpose2d(dilation, no bias)": _one(
        fl.conv_transpose2d(2, (2, 3), stride=(1, 2), dilation=(2, 1), use_bias=False),
        (4, 3, 2)),
    "max_pool1d(same)": _one(fl.max_pool1d(3, stride=2, padding="same"), (8, 2)),
    "max_pool2d(explicit pads)": _one(fl.max_pool2d((3, 2), stride=(1, 2),
                                                    padding=[(1, 1), (0, 1)]), (5, 5, 2)),
    "avg_pool1d(same, overlap)": _one(fl.avg_pool1d(3, stride=1, padding="same"), (6, 2)),
    "avg_pool2d(same, stride)": _one(fl.avg_pool2d(3, stride=2, padding="same"), (7, 6, 2)),
    "avg_pool2d(explicit pads)": _one(fl.avg_pool2d(2, stride=1, padding=[(1, 0), (1, 1)]),
                                      (4, 4, 3)),
    "global_avg_pool(1d)": _one(fl.global_avg_pool(), (6, 4)),
    "batch_norm(no scale, no bias)": _one(fl.batch_norm(use_scale=False, use_bias=False),
                                          (4, 3)),
    # a numpy float64 eps once made the folded scale float64 in a float32 graph
    "batch_norm(np.float64 eps, axis 1 of 3)": _one(fl.batch_norm(axis=1, eps=np.float64(1e-3)),
                                                    (3, 4)),
    "layer_norm(no scale, offset input)": (
        fl.layer_norm(use_scale=False), (3, 16), lambda b: f32((b, 3, 16), seed=b) * 2 + 5),
    "layer_norm(no bias)": _one(fl.layer_norm(use_bias=False), (5,)),
    "group_norm(no affine)": _one(fl.group_norm(3, affine=False), (2, 3, 6)),
    "instance_norm": _one(fl.instance_norm(), (5, 3)),
    "rms_norm(no affine)": _one(fl.rms_norm(affine=False), (3, 6)),
    "gelu(large inputs)": (fl.gelu(), (40,), lambda b: f32((b, 40), seed=b) * 6),
    "gelu(approximate, large inputs)": (fl.gelu(approximate=True), (40,),
                                        lambda b: f32((b, 40), seed=b) * 6),
    "softplus(large inputs)": (fl.softplus(), (30,), lambda b: f32((b, 30), seed=b) * 40),
    "elu(alpha 0.5)": _one(fl.elu(0.5), (6,)),
    "log_softmax(axis -2)": _one(fl.log_softmax(axis=-2), (4, 3)),
    "softmax(axis 1 of 3)": _one(fl.softmax(axis=1), (4, 3, 2)),
    "upsample2d(bilinear, align_corners)": _one(fl.upsample2d(3, "bilinear", align_corners=True),
                                                (3, 4, 2)),
    "upsample2d(bilinear, 1 row)": _one(fl.upsample2d((2, 2), "bilinear"), (1, 3, 2)),
    "rnn(lengths, state, return_state)": (
        fl.rnn(3, with_lengths=True, with_initial_state=True, return_state=True),
        ((5, 2), (), (3,)),
        lambda b: (f32((b, 5, 2), seed=b), _lengths(b, 5), f32((b, 3), seed=b + 7))),
    "gru(lengths, last)": (
        fl.gru(4, with_lengths=True, return_sequences=False), ((6, 3), ()),
        lambda b: (f32((b, 6, 3), seed=b), _lengths(b, 6))),
    "lstm(last)": _one(fl.lstm(3, return_sequences=False), (5, 2)),
    "bidirectional(rnn relu, last, concat)": _one(
        fl.bidirectional(fl.rnn(3, activation="relu", return_sequences=False)), (5, 2)),
    "bidirectional(gru, lengths)": (
        fl.bidirectional(fl.gru(3, with_lengths=True)), ((6, 2), ()),
        lambda b: (f32((b, 6, 2), seed=b), _lengths(b, 6))),
    "bidirectional(gru + lstm, two ops)": _one(fl.bidirectional(fl.gru(3), fl.lstm(2)), (5, 2)),
    "bidirectional(gru + lstm, lengths, sum)": (
        fl.bidirectional(fl.gru(3, with_lengths=True), fl.lstm(3, with_lengths=True),
                         merge="sum"), ((6, 2), ()),
        lambda b: (f32((b, 6, 2), seed=b), _lengths(b, 6))),
    "bidirectional(rnn + gru, last, lengths)": (
        fl.bidirectional(fl.rnn(2, with_lengths=True, return_sequences=False),
                         fl.gru(3, with_lengths=True, return_sequences=False)), ((6, 2), ()),
        lambda b: (f32((b, 6, 2), seed=b), _lengths(b, 6))),
    "multi_head_attention(causal)": _one(fl.multi_head_attention(2, causal=True), (5, 6)),
    "multi_head_attention(key mask, a fully masked example)": (
        fl.multi_head_attention(3, masked=True, head_dim=2), ((4, 6), (4,)),
        lambda b: (f32((b, 4, 6), seed=b), _key_mask(b, 4))),
    "multi_head_attention(per-head mask, causal, no bias)": (
        fl.multi_head_attention(2, masked=True, causal=True, use_bias=False), ((4, 4), (2, 4, 4)),
        lambda b: (f32((b, 4, 4), seed=b), np.random.default_rng(b).random((b, 2, 4, 4)) > 0.3)),
    "multi_head_attention(cross)": (
        fl.multi_head_attention(2, cross=True), ((3, 4), (5, 6)),
        lambda b: (f32((b, 3, 4), seed=b), f32((b, 5, 6), seed=b + 9))),
    "multi_head_attention(cross, causal, shared mask)": (
        fl.multi_head_attention(2, cross=True, causal=True, masked=True), ((3, 4), (5, 2), (3, 5)),
        lambda b: (f32((b, 3, 4), seed=b), f32((b, 5, 2), seed=b + 9),
                   np.broadcast_to(np.arange(5) < 4, (b, 3, 5)).copy())),
    "embedding(2-D ids) + flatten": (
        fl.serial(fl.embedding(11, 3), fl.flatten()), (2, 4),
        lambda b: _ids(b, 8, 11, b).reshape(b, 2, 4)),
    "flatten ids, then embedding": (
        fl.serial(fl.flatten(), fl.embedding(9, 2)), (2, 3),
        lambda b: _ids(b, 6, 9, b).reshape(b, 2, 3)),
    "fan_in_concat(axis 0)": (
        fl.serial(fl.fan_out(3), fl.parallel(fl.identity(), fl.dense(4), fl.tanh()),
                  fl.fan_in_concat(axis=0)), (2, 4), lambda b: f32((b, 2, 4), seed=b)),
    "fan_in_sum(three)": (
        fl.serial(fl.fan_out(3), fl.parallel(fl.dense(3), fl.relu(), fl.identity()),
                  fl.fan_in_sum()), (3,), lambda b: f32((b, 3), seed=b)),
    "tuple output": (fl.serial(fl.fan_out(2), fl.parallel(fl.dense(2), fl.softmax())), (4,),
                     lambda b: f32((b, 4), seed=b)),
    "identity of a tuple": (fl.identity(), ((3,), (2, 2)),
                            lambda b: (f32((b, 3), seed=b), f32((b, 2, 2), seed=b + 1))),
    "tied_output(one id per example)": (_tied(), (), lambda b: _ids(b, 1, 9, b)[:, 0]),
    "tied_output(2-D ids)": (_tied(), (2, 3), lambda b: _ids(b, 6, 9, b).reshape(b, 2, 3)),
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_configuration_matches_fundl(name):
    model, in_shape, make = KINDS[name]
    export_and_compare(model, in_shape, [make(1), make(3)])


def test_one_op_per_bidirectional_pair_of_recurrent_layers():
    proto, _ = export_and_compare(fl.bidirectional(fl.lstm(3)), (4, 2),
                                  [f32((1, 4, 2)), f32((3, 4, 2))])
    assert [n.op_type for n in proto.graph.node].count("LSTM") == 1
    node = next(n for n in proto.graph.node if n.op_type == "LSTM")
    assert {a.name: a.s for a in node.attribute}["direction"] == b"bidirectional"
    proto, _ = export_and_compare(fl.bidirectional(fl.gru(3), fl.lstm(2)), (4, 2),
                                  [f32((1, 4, 2)), f32((3, 4, 2))])
    assert {"GRU", "LSTM", "Slice"} <= ops(proto)


# --- sharing, dtypes, inputs and outputs ---------------------------------------------------------

def test_shared_params_are_one_initializer():
    enc = fl.shared(fl.serial(fl.conv1d(4, 3), fl.relu(), fl.flatten(), fl.dense(3)))
    model = fl.serial(fl.parallel(enc, enc), fl.fan_in_sum())
    proto, _ = export_and_compare(model, ((6, 2), (6, 2)),
                                  [(f32((1, 6, 2)), f32((1, 6, 2), 5)),
                                   (f32((3, 6, 2)), f32((3, 6, 2), 5))])
    sizes = sorted(int(np.prod(t.dims)) for t in proto.graph.initializer)
    assert sizes.count(3 * 2 * 4) == 1 and sizes.count(16 * 3) == 1, sizes
    assert [i.name for i in proto.graph.input] == ["x_0", "x_1"]


def test_tied_output_uses_the_embedding_table_once():
    emb = fl.shared(fl.embedding(10, 4))
    model = fl.serial(emb, fl.layer_norm(), fl.tied_output(emb))
    proto, _ = export_and_compare(model, (5,), [_ids(1, 5, 10), _ids(3, 5, 10, 1)])
    tables = [t for t in proto.graph.initializer if list(t.dims) == [10, 4]]
    assert len(tables) == 1
    inp = proto.graph.input[0]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_graph_signature_batch_axis_is_dynamic():
    model = fl.serial(fl.gru(3, with_lengths=True), fl.flatten())
    params, state, _ = model.init(fl.random.key(0), ((4, 2), ()))
    proto = to_onnx(model, params, state, ((4, 2), ()))
    x, lengths = proto.graph.input
    y, = proto.graph.output

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert dims(x) == ["batch", 4, 2] and dims(lengths) == ["batch"] and dims(y) == ["batch", 12]
    assert x.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert lengths.type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_float64_models_export_in_float64():
    model = fl.serial(fl.dense(4, dtype=np.float64), fl.tanh(), fl.layer_norm(dtype=np.float64))
    params, state, _ = model.init(fl.random.key(0), (3,))
    proto = to_onnx(model, params, state, (3,))
    x = np.random.default_rng(0).normal(size=(2, 3))
    assert worst_difference(model, params, state, proto, [x]) < 1e-10


def test_path_writes_the_model(tmp_path):
    model = fl.serial(fl.dense(2))
    params, state, _ = model.init(fl.random.key(0), (3,))
    proto = to_onnx(model, params, state, (3,), path=str(tmp_path / "m.onnx"))
    assert onnx.load(str(tmp_path / "m.onnx")) == proto
    assert proto.opset_import[0].version == 17
    newer = to_onnx(model, params, state, (3,), opset=21)
    assert newer.opset_import[0].version == 21
    x = f32((2, 3))
    assert worst_difference(model, params, state, newer, [x]) == 0.0


# --- errors ------------------------------------------------------------------------------------

def test_a_custom_layer_is_refused_with_its_path():
    cube = fl.elementwise_layer("cube", lambda x: x * x * x, lambda x, y, dy: 3 * x * x * dy)
    model = fl.serial(fl.dense(3), fl.residual(fl.serial(fl.dense(3), cube)))
    params, state, _ = model.init(fl.random.key(0), (3,))
    with pytest.raises(ExportError, match=r"layer 'residual_1/serial_0/cube_1' \(cube\): "
                                          r"there is no ONNX converter"):
        to_onnx(model, params, state, (3,))


def test_a_custom_kind_with_a_registered_converter_exports(monkeypatch):
    cube = fl.elementwise_layer("cube", lambda x: x * x * x, lambda x, y, dy: 3 * x * x * dy)
    model = fl.serial(fl.dense(3), cube)
    monkeypatch.setitem(CONVERTERS, "cube", lambda s, x: s.params["missing"])
    params, state, _ = model.init(fl.random.key(0), (3,))
    with pytest.raises(ExportError, match=r"layer 'cube_1' \(cube\): its ONNX converter "
                                          r"failed: KeyError"):
        to_onnx(model, params, state, (3,))
    monkeypatch.setitem(CONVERTERS, "cube", lambda s, x: s.g.op("Mul", s.g.op("Mul", x, x), x))
    export_and_compare(model, (3,), [f32((1, 3)), f32((3, 3))])


def test_a_custom_layer_named_like_a_builtin_is_refused():
    fake = fl.stateless_layer("dense", lambda k, s: ({}, s), lambda p, x: x,
                              lambda p, x: (x, lambda dy: ({}, dy)))
    model = fl.serial(fl.relu(), fake)
    params, state, _ = model.init(fl.random.key(0), (3,))
    with pytest.raises(ExportError, match=r"layer 'dense_1' .*not built by fundl.dense"):
        to_onnx(model, params, state, (3,))


def test_wrong_params_and_shapes_are_named():
    model = fl.serial(fl.dense(3), fl.dense(2))
    params, state, _ = model.init(fl.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"cannot take in_shape \(\): layer 'dense_0'"):
        to_onnx(model, params, state, ())
    with pytest.raises(TypeError, match="in_shape must be"):
        to_onnx(model, params, state, (4, "a"))
    with pytest.raises(ValueError, match="dense_1/w"):
        to_onnx(model, {**params, "dense_1": {"w": params["dense_1"]["w"][:2],
                                              "b": params["dense_1"]["b"]}}, state, (4,))
    with pytest.raises(ValueError, match="opset"):
        to_onnx(model, params, state, (4,), opset=11)


def test_import_fundl_does_not_import_onnx():
    code = ("import sys, fundl, fundl.export; import fundl as fl; "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_without_onnx_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)        # import onnx raises ImportError
    model = fl.serial(fl.dense(2))
    params, state, _ = model.init(fl.random.key(0), (3,))
    with pytest.raises(ImportError, match=r'pip install "fundl\[onnx\]"'):
        to_onnx(model, params, state, (3,))


# --- the models --------------------------------------------------------------------------

def _mnist1d_models():
    return runpy.run_path(str(ROOT / "examples" / "mnist1d.py"))


def test_mlp():
    model = _mnist1d_models()["mlp"]()
    proto, _ = export_and_compare(model, (40,), [f32((1, 40)), f32((3, 40), 2)])
    assert ops(proto) == {"MatMul", "Add", "Relu", "Identity"}


def test_mnist1d_cnn_and_bidirectional_gru():
    models = _mnist1d_models()
    proto, _ = export_and_compare(models["cnn"](), (40,), [f32((1, 40)), f32((3, 40), 2)])
    assert {"Conv", "Relu", "Flatten", "MatMul"} <= ops(proto)
    proto, _ = export_and_compare(models["gru"](), (40,), [f32((1, 40)), f32((3, 40), 2)])
    assert [n.op_type for n in proto.graph.node].count("GRU") == 1


def test_cnn_with_batch_norm_and_pooling():
    model = fl.serial(
        fl.conv2d(8, 3, padding="same"), fl.batch_norm(), fl.relu(), fl.max_pool2d(2),
        fl.conv2d(16, 3, padding="same"), fl.batch_norm(), fl.relu(),
        fl.avg_pool2d(3, stride=2, padding="same"), fl.dropout(0.3),
        fl.conv2d(16, 3), fl.batch_norm(), fl.relu(), fl.global_avg_pool(), fl.dense(10))
    export_and_compare(model, (16, 16, 3), [f32((1, 16, 16, 3)), f32((3, 16, 16, 3), 2)])


def test_grouped_and_depthwise_conv_net():
    model = fl.serial(
        fl.conv2d(8, 3, padding="same"), fl.relu(),
        fl.conv2d(8, 3, padding="same", groups=8), fl.relu(),           # depthwise
        fl.conv2d(16, 1), fl.relu(),                                     # pointwise
        fl.conv2d(16, 3, stride=2, groups=4), fl.relu(),                 # grouped
        fl.global_avg_pool(), fl.dense(5))
    export_and_compare(model, (12, 12, 4), [f32((1, 12, 12, 4)), f32((3, 12, 12, 4), 2)])


def test_transposed_conv_decoder():
    model = fl.serial(
        fl.dense(4 * 4 * 8), fl.relu(), fl.reshape((4, 4, 8)),
        fl.conv_transpose2d(8, 4, stride=2, padding=1), fl.batch_norm(), fl.relu(),   # 8x8
        fl.conv_transpose2d(4, 3, stride=2, padding=1, output_padding=1), fl.relu(),  # 16x16
        fl.upsample2d(2, "bilinear"), fl.conv2d(1, 3, padding="same"), fl.sigmoid())
    export_and_compare(model, (6,), [f32((1, 6)), f32((3, 6), 2)])


def test_two_block_pre_ln_transformer_with_causal_and_padding_masks():
    take = fl.take
    vocab, steps, width, heads = 13, 6, 16, 4

    def block():
        # (h, mask) -> (h', mask): h + attn(ln(h), mask), then h + mlp(ln(h))
        attention = fl.serial(fl.parallel(fl.layer_norm(), fl.identity()),
                              fl.multi_head_attention(heads, causal=True, masked=True))
        mixed = fl.serial(fl.fan_out(2), fl.parallel(take(0), attention), fl.fan_in_sum())
        mlp = fl.residual(fl.serial(fl.layer_norm(), fl.dense(4 * width), fl.gelu(),
                                    fl.dropout(0.1), fl.dense(width)))
        return fl.serial(fl.fan_out(2), fl.parallel(fl.serial(mixed, mlp), take(1)))

    model = fl.serial(
        fl.parallel(fl.serial(fl.embedding(vocab, width), fl.positional_embedding(steps)),
                    fl.identity()),
        block(), block(), take(0), fl.layer_norm(), fl.dense(vocab), fl.log_softmax())

    def inputs(b, seed):
        lengths = np.array([steps, 3, 1][:b])
        return _ids(b, steps, vocab, seed), np.arange(steps)[None, :] < lengths[:, None]

    proto, _ = export_and_compare(model, ((steps,), (steps,)), [inputs(1, 0), inputs(3, 1)])
    assert {"LayerNormalization", "Softmax", "Where", "Erf", "Gather"} <= ops(proto)
    types = [i.type.tensor_type.elem_type for i in proto.graph.input]
    assert types == [onnx.TensorProto.INT64, onnx.TensorProto.BOOL]


# --- the README's block ---------------------------------------------------------------------------

def test_readme_export_block_runs(tmp_path, monkeypatch):
    block = readme_block("to_onnx")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["difference"] < 1e-5
    assert (tmp_path / "mlp.onnx").exists()
