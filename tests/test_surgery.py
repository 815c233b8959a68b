"""Model surgery: sub-models with their params, a replaced layer, a grafted body, fine-tuning."""

import re

import numpy as np
import pytest

import fundl as fl
from fundl import surgery
from fundl.testing import read_only
from fundl.validate import SpecError
from readme_blocks import readme_block

KEY = fl.random.key(0)


def x_of(shape, seed=1, dtype=np.float32):
    return fl.random.normal(fl.random.key(seed), shape, dtype)


def cnn():
    """A small classifier: conv body with batch norm and dropout, a dense head."""
    return fl.serial(fl.conv1d(4, 3), fl.batch_norm(momentum=0.9), fl.relu(), fl.dropout(0.2),
                     fl.max_pool1d(2), fl.flatten(), fl.dense(8), fl.relu(), fl.dense(3))


def trained(model, in_shape, steps=3):
    """Params and state after a few steps (batch-norm statistics away from their init)."""
    ts = fl.TrainState.create(KEY, model, fl.optim.adam(), in_shape)
    step = fl.make_step(model, fl.losses.softmax_cross_entropy, fl.optim.adam())
    x = x_of((16,) + in_shape)
    y = np.arange(16) % model.init(KEY, in_shape)[2][-1]
    for _ in range(steps):
        ts, _ = step(ts, (x, y), 1e-2)
    return read_only(ts.params), read_only(ts.state)


def run_first(model, params, state, x, k):
    """The output of the first k layers of a serial, by hand."""
    for key, layer in model.children[:k]:
        x = layer.apply(params[key], state[key], x)
    return x


# --- first_layers ------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 5, -1, -3])
def test_first_layers_is_the_prefix_with_the_same_arrays(k):
    model = cnn()
    params, state = trained(model, (10, 2))
    body, bp, bs = surgery.first_layers(model, params, state, k)
    kept = model.children[:k]
    assert body.kind == "serial" and [c for c, _ in body.children] == [c for c, _ in kept]
    assert list(bp) == [c for c, _ in kept] and list(bs) == list(bp)
    for c in bp:
        assert all(a is b for a, b in zip(fl.tree.leaves(bp[c]), fl.tree.leaves(params[c])))
        assert all(a is b for a, b in zip(fl.tree.leaves(bs[c]), fl.tree.leaves(state[c])))
    x = x_of((5, 10, 2), seed=2)
    np.testing.assert_array_equal(body.apply(bp, bs, x), run_first(model, params, state, x, k))
    assert repr(body).startswith("serial(conv1d(4, 3)")


def test_first_layers_refuses_what_is_not_a_serial_prefix():
    model = cnn()
    params, state, _ = model.init(KEY, (10, 2))
    with pytest.raises(surgery.SurgeryError, match="keeps no layer of the serial's 9"):
        surgery.first_layers(model, params, state, 0)
    with pytest.raises(surgery.SurgeryError, match="takes a serial model, got a residual"):
        surgery.first_layers(fl.residual(fl.dense(2)), {}, {}, 1)
    with pytest.raises(TypeError, match="k must be an int, got float"):
        surgery.first_layers(model, params, state, 2.0)


def test_first_layers_keeps_a_named_serial_and_its_keys():
    model = fl.serial(fl.dense(3), fl.relu(), fl.dense(2), name="trunk")
    params, state, _ = model.init(KEY, (4,))
    body, bp, _ = surgery.first_layers(model, params, state, 2)
    assert body.name == "trunk" and list(bp) == ["dense_0", "relu_1"]


# --- child -------------------------------------------------------------------------------------

def nested():
    block = lambda: fl.serial(fl.layer_norm(), fl.dense(6), fl.gelu())  # noqa: E731
    return fl.serial(fl.dense(6), fl.serial(fl.residual(block()), fl.batch_norm()),
                     fl.serial(fl.residual(block()), fl.dropout(0.3)), fl.dense(2))


def test_child_by_path_computes_what_the_model_computes_there():
    model = nested()
    params, state = trained(model, (5,))
    x = x_of((7, 5), seed=3)
    sub, sp, ss = surgery.child(model, params, state, "serial_2/residual_0/serial_0")
    assert sub.kind == "serial" and list(sp) == ["layer_norm_0", "dense_1", "gelu_2"]
    assert sp["dense_1"]["w"] is params["serial_2"]["residual_0"]["serial_0"]["dense_1"]["w"]
    h = run_first(model, params, state, x, 2)                     # the input of serial_2
    np.testing.assert_array_equal(sub.apply(sp, ss, h) + h,
                                  model.children[2][1].children[0][1].apply(
                                      params["serial_2"]["residual_0"],
                                      state["serial_2"]["residual_0"], h))
    whole = surgery.child(model, params, state, "")
    assert whole[0] is model and whole[1] is params
    bn, bp, bs = surgery.child(model, params, state, ("serial_1", "batch_norm_1"))
    assert bn.kind == "batch_norm"
    assert bs["mean"] is state["serial_1"]["batch_norm_1"]["mean"]


def test_child_names_the_keys_it_could_take():
    model = nested()
    params, state, _ = model.init(KEY, (5,))
    with pytest.raises(surgery.SurgeryError,
                       match=re.escape("no layer at 'serial_2/dense_0': 'serial_2' (serial) has "
                                       "the children residual_0, dropout_1")):
        surgery.child(model, params, state, "serial_2/dense_0")
    with pytest.raises(SpecError, match=r"params/serial_1: has no 'residual_0'"):
        surgery.child(model, {"serial_1": {}}, state, "serial_1/residual_0")
    with pytest.raises(TypeError, match="a path is a string"):
        surgery.child(model, params, state, 3)


def test_child_through_transparent_wrappers():
    model = fl.serial(fl.eval_mode(fl.serial(fl.dense(4), fl.batch_norm())), fl.dense(2))
    params, state, _ = model.init(KEY, (3,))
    wrapper, wp, _ = surgery.child(model, params, state, "eval_mode_0")
    assert wrapper.kind == "eval_mode" and wp is params["eval_mode_0"]
    bn, _, bs = surgery.child(model, params, state, "eval_mode_0/batch_norm_1")
    assert bn.kind == "batch_norm" and bs is state["eval_mode_0"]["batch_norm_1"]


def test_child_holding_a_second_use_of_a_shared_layer_gets_its_params():
    enc = fl.shared(fl.serial(fl.dense(3), fl.tanh()))
    model = fl.serial(fl.fan_out(2), fl.parallel(enc, fl.serial(enc, fl.dense(2))),
                      fl.parallel(fl.identity(), fl.identity()))
    params, state, _ = model.init(KEY, (4,))
    assert params["parallel_1"]["serial_1"]["shared_0"] == {}     # the second use: none here
    sub, sp, ss = surgery.child(model, params, state, "parallel_1/serial_1")
    assert sp["shared_0"]["dense_0"]["w"] is params["parallel_1"]["shared_0"]["dense_0"]["w"]
    x = x_of((3, 4))
    full = model.apply(params, state, x)[1]
    np.testing.assert_array_equal(sub.apply(sp, ss, x), full)


def test_child_refuses_a_tied_head_without_its_embedding():
    emb = fl.shared(fl.embedding(7, 3))
    model = fl.serial(emb, fl.dense(3), fl.tied_output(emb))
    params, state, _ = model.init(KEY, (4,))
    with pytest.raises(surgery.SurgeryError, match="tied_output tied to a shared layer outside"):
        surgery.child(model, params, state, "tied_output_2")


# --- replace -----------------------------------------------------------------------------------

def test_replace_the_head_keeps_every_other_array():
    model = cnn()
    params, state = trained(model, (10, 2))
    k_head = fl.random.key(7)
    new, np_, ns = surgery.replace(model, params, state, "dense_8", fl.dense(5), key=k_head,
                                   in_shape=(10, 2))
    assert repr(new).endswith("dense(8), relu(), dense(5))")
    assert list(np_) == list(params)
    for key in list(params)[:-1]:
        assert all(a is b for a, b in zip(fl.tree.leaves(np_[key]), fl.tree.leaves(params[key])))
        assert all(a is b for a, b in zip(fl.tree.leaves(ns[key]), fl.tree.leaves(state[key])))
    want, _, _ = fl.dense(5).init(k_head, (8,))
    assert fl.tree.all_equal(np_["dense_8"], want)
    x = x_of((6, 10, 2), seed=4)
    h = run_first(model, params, state, x, 8)
    np.testing.assert_array_equal(new.apply(np_, ns, x), h @ want["w"] + want["b"])


def test_replace_finds_the_input_shape_of_params_made_here_and_names_the_new_key():
    model = nested()
    params, state, _ = model.init(KEY, (5,))
    new, np_, ns = surgery.replace(model, params, state, "dense_3",
                                   fl.serial(fl.dense(4), fl.relu(), fl.dense(3)), key=KEY)
    assert "serial_3" in np_ and "dense_3" not in np_ and list(np_)[-1] == "serial_3"
    assert new.apply(np_, ns, x_of((2, 5))).shape == (2, 3)
    fresh = fl.serial(fl.dense(6))
    p2, s2, _ = fresh.init(KEY, (3,))
    other = fl.serial(fl.dense(6))
    with pytest.raises(surgery.SurgeryError, match="pass in_shape="):
        surgery.replace(other, p2, s2, "dense_0", fl.dense(2), key=KEY)


def test_replace_inside_nested_and_wrapped_layers():
    model = fl.serial(fl.eval_mode(nested()), fl.dense(2))
    params, state, _ = model.init(KEY, (5,))
    new, np_, ns = surgery.replace(model, params, state,
                                   "eval_mode_0/serial_1/residual_0/serial_0/gelu_2", fl.tanh(),
                                   key=KEY)
    inner = np_["eval_mode_0"]["serial_1"]["residual_0"]["serial_0"]
    assert list(inner) == ["layer_norm_0", "dense_1", "tanh_2"]
    assert new.children[0][1].kind == "eval_mode"
    assert "tanh()" in repr(new) and "gelu" in repr(new)      # the other block keeps its gelu
    x = x_of((4, 5), seed=5)
    assert new.apply(np_, ns, x).shape == (4, 2)
    # the rebuilt model's gradient is exact (float64 finite differences)
    fl.check_vjp(new, (5,), params=fl.tree.cast(np_, np.float64),
                 state=fl.tree.cast(ns, np.float64), train=False)


def test_replace_with_a_layer_that_changes_what_follows_names_the_params():
    model = cnn()
    params, state, _ = model.init(KEY, (10, 2))
    with pytest.raises(SpecError, match=r"params/dense_6/w: expected shape \(12, 8\), got shape "
                                        r"\(16, 8\) \(the conv1d at 'conv1d_0' changes what the "
                                        r"layers after it receive: replace them too\)"):
        surgery.replace(model, params, state, "conv1d_0", fl.conv1d(4, 5), key=KEY)


def test_replace_refuses_to_break_sharing():
    enc = fl.shared(fl.dense(3))
    model = fl.serial(fl.fan_out(2), fl.parallel(enc, enc), fl.fan_in_sum())
    params, state, _ = model.init(KEY, (4,))
    with pytest.raises(surgery.SurgeryError, match="also used at 'parallel_1/shared_1'"):
        surgery.replace(model, params, state, "parallel_1/shared_0", fl.dense(3), key=KEY)
    new, np_, _ = surgery.replace(model, params, state, "parallel_1",
                                  fl.parallel(fl.dense(3), fl.dense(3)), key=KEY)
    assert set(np_["parallel_1"]) == {"dense_0", "dense_1"}


def test_replace_with_a_keyed_layer_gets_a_key():
    model = fl.serial(fl.dense(4), fl.relu(), fl.dense(2))
    params, state, _ = model.init(KEY, (3,))
    new, np_, ns = surgery.replace(model, params, state, "relu_1",
                                   fl.serial(fl.relu(), fl.dropout(0.5)), key=KEY)
    assert new.traits.uses_key
    y, _, _ = new.vjp(np_, ns, x_of((4, 3)), key=fl.random.key(3))
    assert y.shape == (4, 2)


# --- graft -------------------------------------------------------------------------------------

def test_graft_a_pretrained_body_into_a_new_model():
    pre = cnn()
    params, state = trained(pre, (10, 2))
    body, bp, bs = surgery.first_layers(pre, params, state, -1)
    model = fl.serial(fl.eval_mode(body), fl.dense(5))
    p0, s0, _ = model.init(fl.random.key(9), (10, 2))
    p1, s1 = surgery.graft(p0, s0, "eval_mode_0", bp, bs)
    assert p1["eval_mode_0"] is bp and s1["eval_mode_0"] is bs and p1["dense_1"] is p0["dense_1"]
    x = x_of((4, 10, 2), seed=6)
    feats = body.apply(bp, bs, x)
    np.testing.assert_array_equal(model.apply(p1, s1, x),
                                  feats @ p0["dense_1"]["w"] + p0["dense_1"]["b"])
    # from a source path directly, without taking the body first
    p2, s2 = surgery.graft(p0, s0, "eval_mode_0/conv1d_0", params, state,
                           source_path="conv1d_0")
    assert p2["eval_mode_0"]["conv1d_0"] is params["conv1d_0"]
    assert p2["eval_mode_0"]["dense_6"] is p0["eval_mode_0"]["dense_6"]


def test_graft_checks_structure_shapes_and_dtypes_by_path():
    model = fl.serial(fl.dense(4), fl.batch_norm(), fl.dense(2))
    params, state, _ = model.init(KEY, (3,))
    other = fl.serial(fl.dense(5), fl.batch_norm(), fl.dense(2))
    op, os_, _ = other.init(KEY, (3,))
    with pytest.raises(SpecError, match=re.escape("params/dense_0/w: the model has shape (3, 4) "
                                                  "float32, the source (3, 5) float32")):
        surgery.graft(params, state, "", op, os_)
    with pytest.raises(SpecError, match=re.escape("params/dense_0/w: the model has shape (3, 4) "
                                                  "float32, the source (3, 4) float64 (cast")):
        surgery.graft(params, state, "", fl.tree.cast(params, np.float64), state)
    with pytest.raises(SpecError, match=re.escape("params/batch_norm_1: the keys differ: the "
                                                  "source lacks ['bias'], the model lacks []")):
        surgery.graft(params, state, "batch_norm_1",
                      {"scale": params["batch_norm_1"]["scale"]}, state["batch_norm_1"])
    with pytest.raises(SpecError, match=re.escape(
            "state/batch_norm_1/mean: the model has shape (4,) float32, the source (5,)")):
        surgery.graft(params, state, "batch_norm_1", params["batch_norm_1"], os_["batch_norm_1"])
    with pytest.raises(SpecError, match="source params: has no 'dense_9'"):
        surgery.graft(params, state, "dense_2", op, os_, source_path="dense_9")


# --- the fine-tuning recipe --------------------------------------------------------------------

def fine_tune_setup():
    pre = cnn()
    params, state = trained(pre, (10, 2))
    body, bp, bs = surgery.first_layers(pre, params, state, -1)
    model = fl.serial(fl.eval_mode(body), fl.dense(5))
    p0, s0, _ = model.init(fl.random.key(1), (10, 2))
    p0, s0 = surgery.graft(p0, s0, "eval_mode_0", bp, bs)
    x = x_of((32, 10, 2), seed=8)
    y = np.arange(32) % 5
    return model, p0, s0, x, y


@pytest.mark.parametrize("freeze", [False, True])
def test_fine_tuning_keeps_the_body_statistics_and_optionally_its_params(freeze):
    model, params, state, x, y = fine_tune_setup()
    opt = fl.optim.adam()
    if freeze:
        opt = fl.optim.freeze(opt, "eval_mode_0/*")
    ts = fl.TrainState(params, state, opt.init(params), fl.random.key(2), 0)
    step = fl.make_step(model, fl.losses.softmax_cross_entropy, opt)
    for _ in range(4):
        ts, _ = step(ts, (x, y), 1e-2)
    assert fl.tree.all_equal(ts.state, state)                   # batch norm: frozen statistics
    assert not fl.tree.all_equal(ts.params["dense_1"], params["dense_1"])
    assert fl.tree.all_equal(ts.params["eval_mode_0"], params["eval_mode_0"]) == freeze


def test_readme_fine_tuning_block_runs():
    block = readme_block("surgery.first_layers")
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    ts, body_params = namespace["ts"], namespace["body_params"]
    assert fl.tree.all_equal(ts.params["eval_mode_0"], body_params)   # frozen by freeze
    assert ts.step == 24 and list(namespace["p"]) == ["dense_0", "batch_norm_1", "relu_2",
                                                      "dense_3"]
    assert namespace["p"]["dense_3"]["w"].shape == (64, 3)


def test_no_call_changes_what_it_is_given():
    import copy
    model = cnn()
    params, state = trained(model, (10, 2))
    before = copy.deepcopy((params, state))
    keys = (list(params), list(state))
    surgery.first_layers(model, params, state, -2)
    surgery.child(model, params, state, "batch_norm_1")
    surgery.replace(model, params, state, "dense_6", fl.dense(8), key=KEY, in_shape=(10, 2))
    surgery.graft(params, state, "dense_6", params, state, source_path="dense_6")
    assert fl.tree.all_equal((params, state), before) and (list(params), list(state)) == keys
    assert repr(model) == repr(cnn())
