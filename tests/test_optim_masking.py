"""Masking, freezing and per-group optimizers: frozen params keep their bits, the rest match by-hand runs."""

import numpy as np
import pytest

import fundl as fl
from fundl import optim, tree
from fundl.optim import MaskedState, MaskError, MultiTransformState
from fundl.testing import read_only

MODEL = fl.serial(fl.dense(8), fl.relu(), fl.dense(3))   # params dense_0/{w,b}, dense_2/{w,b}
LOSS = fl.losses.softmax_cross_entropy
HEAD = lambda path: path.startswith("dense_2/")          # noqa: E731
BODY = lambda path: path.startswith("dense_0/")          # noqa: E731


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    return x, y


STATE = MODEL.init(fl.random.key(0), (5,))[1]


def _params(seed=0):
    return MODEL.init(fl.random.key(seed), (5,))[0]


def _grads(params, x, y):
    out, _, pullback = MODEL.vjp(params, STATE, x)
    _, dout = LOSS.value_and_grad(out, y)
    return pullback(dout)[0]


def _same_bits(a, b):
    """Same structure, dtypes, shapes and bytes at every leaf."""
    return tree.all_equal(a, b) and all(
        x.tobytes() == y.tobytes() for x, y in zip(tree.leaves(a), tree.leaves(b)))


def _batches(steps, n=48, batch=16):
    x, y = _data(n)
    return [(x[i:i + batch], y[i:i + batch]) for i in [(s * batch) % n for s in range(steps)]]


def _decaying():
    """Optimizers that move a parameter even with a zero gradient (decay, momentum, accumulate)."""
    return {
        "adamw": optim.adamw(weight_decay=0.1),
        "lion_wd": optim.lion(weight_decay=0.5),
        "momentum": optim.momentum(0.9),
        "sgd": optim.sgd(),
        "accumulate_adamw": optim.accumulate(optim.adamw(weight_decay=0.1), 3),
        "chain_clip_adamw": optim.chain(optim.clip_by_global_norm(0.5), optim.adamw(weight_decay=0.1)),
    }


# ----------------------------------------------------------------------------- freeze under fit

@pytest.mark.parametrize("name", list(_decaying()))
def test_freeze_keeps_frozen_params_bit_identical_through_fit(name):
    opt = optim.freeze(_decaying()[name], BODY)
    ts0 = fl.TrainState.create(fl.random.key(0), MODEL, opt, (5,))
    before = tree.map(np.copy, ts0.params)
    ts, history = fl.fit(MODEL, LOSS, opt, _data(), key=fl.random.key(1), epochs=4, batch_size=16,
                         lr=0.05, train_state=ts0, progress=False)
    assert ts.step == 12 and np.isfinite(history["loss"]).all()
    assert _same_bits(ts.params["dense_0"], before["dense_0"])
    for leaf in ("w", "b"):  # the head did train
        assert not np.array_equal(ts.params["dense_2"][leaf], before["dense_2"][leaf])


def test_freeze_outside_and_inside_accumulate_give_the_same_bits():
    outer = optim.freeze(optim.accumulate(optim.adamw(weight_decay=0.1), 2), BODY)
    inner = optim.accumulate(optim.freeze(optim.adamw(weight_decay=0.1), BODY), 2)
    p0 = _params()
    pa, sa = p0, outer.init(p0)
    pb, sb = p0, inner.init(p0)
    for x, y in _batches(6):
        pa, sa = outer.update(pa, _grads(pa, x, y), sa, 0.05)
        pb, sb = inner.update(pb, _grads(pb, x, y), sb, 0.05)
        assert pa["dense_0"]["w"] is p0["dense_0"]["w"] and pb["dense_0"]["b"] is p0["dense_0"]["b"]
    assert _same_bits(pa, pb)
    assert not np.array_equal(pa["dense_2"]["w"], p0["dense_2"]["w"])


# ----------------------------------------------------------------------------- the others match a run by hand

@pytest.mark.parametrize("name", list(_decaying()) + ["adamw_masked_decay"])
def test_trainable_params_match_the_optimizer_run_on_the_subtree_by_hand(name):
    make = dict(_decaying(), adamw_masked_decay=optim.adamw(
        weight_decay=0.3, mask=lambda path: path.endswith("/w")))[name]
    opt = optim.freeze(make, BODY)
    p0 = _params()
    full, state = p0, opt.init(p0)
    head, head_state = {"dense_2": p0["dense_2"]}, make.init({"dense_2": p0["dense_2"]})
    for x, y in _batches(7):
        g = _grads(full, x, y)
        full, state = opt.update(full, g, state, 0.05)
        head, head_state = make.update(head, {"dense_2": g["dense_2"]}, head_state, 0.05)
        assert _same_bits(full["dense_2"], head["dense_2"])
        assert _same_bits(full["dense_0"], p0["dense_0"])
    # the inner state is the by-hand state, keyed by the full paths
    assert tree.paths(state.inner) == tree.paths(head_state)
    assert _same_bits(tree.leaves(state.inner), tree.leaves(head_state))


def test_masked_optimizer_is_freeze_of_the_complement():
    p0 = _params()
    g = _grads(p0, *_data())
    a = optim.masked(optim.adamw(weight_decay=0.1), HEAD)
    b = optim.freeze(optim.adamw(weight_decay=0.1), BODY)
    pa, sa = a.update(p0, g, a.init(p0), 0.01)
    pb, sb = b.update(p0, g, b.init(p0), 0.01)
    assert _same_bits(pa, pb) and _same_bits(sa, sb)
    assert pa["dense_0"]["w"] is p0["dense_0"]["w"]


# ----------------------------------------------------------------------------- multi_transform

@pytest.mark.parametrize("make", [optim.adam, optim.momentum, lambda: optim.lion(weight_decay=0.2)])
def test_multi_transform_with_two_learning_rates_matches_separate_runs(make):
    lr, factor = 0.02, 0.1
    opt = optim.multi_transform({"body": optim.scale_lr(make(), factor), "head": make()},
                                lambda path: "head" if HEAD(path) else "body")
    p0 = _params()
    full, state = p0, opt.init(p0)
    body, body_opt = {"dense_0": p0["dense_0"]}, make()
    head, head_opt = {"dense_2": p0["dense_2"]}, make()
    bs, hs = body_opt.init(body), head_opt.init(head)
    for x, y in _batches(5):
        g = _grads(full, x, y)
        full, state = opt.update(full, g, state, lr)
        body, bs = body_opt.update(body, {"dense_0": g["dense_0"]}, bs, lr * factor)
        head, hs = head_opt.update(head, {"dense_2": g["dense_2"]}, hs, lr)
        assert _same_bits(full, {"dense_0": body["dense_0"], "relu_1": {}, "dense_2": head["dense_2"]})
    assert isinstance(state, MultiTransformState) and list(state.inner) == ["body", "head"]
    assert _same_bits(tree.leaves(state.inner["body"]), tree.leaves(bs))


def test_multi_transform_of_transforms_and_a_frozen_group():
    p0 = _params()
    g = _grads(p0, *_data())
    labels = {"dense_0": {"w": "zero", "b": "double"}, "relu_1": {},
              "dense_2": {"w": "double", "b": "keep"}}
    t = optim.multi_transform({"double": optim.scale(2.0), "zero": optim.set_to_zero(),
                               "keep": optim.identity()}, labels)
    assert isinstance(t, optim.GradientTransform)
    u, state = t.update(p0, g, t.init(p0))
    assert state == MultiTransformState({"double": {}, "zero": {}, "keep": {}})
    np.testing.assert_array_equal(u["dense_0"]["w"], np.zeros_like(g["dense_0"]["w"]))
    np.testing.assert_array_equal(u["dense_0"]["b"], 2.0 * g["dense_0"]["b"])
    np.testing.assert_array_equal(u["dense_2"]["w"], 2.0 * g["dense_2"]["w"])
    assert u["dense_2"]["b"] is g["dense_2"]["b"]
    # with an optimizer part it is an optimizer; set_to_zero there keeps the params as they are
    opt = optim.multi_transform({"train": optim.adamw(weight_decay=0.5), "frozen": optim.set_to_zero()},
                                lambda path: "train" if HEAD(path) else "frozen")
    p, s = opt.update(p0, g, opt.init(p0), 1.0)
    assert p["dense_0"]["w"] is p0["dense_0"]["w"] and p["dense_0"]["b"] is p0["dense_0"]["b"]
    assert s.inner["frozen"] == {} and tree.paths(s.inner["train"][0].mu) == ["dense_2/w", "dense_2/b"]
    # a transform part next to an optimizer runs as descend(t)
    opt = optim.multi_transform({"a": optim.sgd(), "b": optim.scale(3.0)},
                                lambda path: "a" if HEAD(path) else "b")
    p, _ = opt.update(p0, g, opt.init(p0), 0.5)
    want_b = optim.descend(optim.scale(3.0)).update(p0["dense_0"], g["dense_0"], {}, 0.5)[0]
    assert _same_bits(p["dense_0"], want_b)


def test_scale_lr_is_the_optimizer_at_the_scaled_rate():
    p0 = _params()
    g = _grads(p0, *_data())
    opt = optim.scale_lr(optim.adamw(weight_decay=0.1), 0.25)
    pa, sa = opt.update(p0, g, opt.init(p0), 0.04)
    pb, sb = optim.adamw(weight_decay=0.1).update(p0, g, opt.init(p0), 0.04 * 0.25)
    assert _same_bits(pa, pb) and _same_bits(sa, sb)
    sgd = optim.scale_lr(optim.sgd(), 0.5)  # keeps sgd's owning-grads update
    assert sgd.update_owning_grads is not None
    owned = tree.map(np.copy, g)
    assert _same_bits(sgd.update_owning_grads(p0, owned, {}, 0.2)[0],
                      optim.sgd().update(p0, g, {}, 0.1)[0])
    with pytest.raises(TypeError, match="scale_lr: expected an Optimizer"):
        optim.scale_lr(optim.scale(2.0), 0.5)


# ----------------------------------------------------------------------------- masks

def test_masks_as_predicate_bool_tree_and_globs_agree():
    p0 = _params()
    g = _grads(p0, *_data())
    bools = {"dense_0": {"w": True, "b": np.bool_(True)}, "relu_1": {},
             "dense_2": {"b": False, "w": False}}
    results = []
    for mask in (BODY, bools, "dense_0/*", ["dense_0/w", "dense_0/b"]):
        opt = optim.freeze(optim.adamw(weight_decay=0.1), mask)
        results.append(opt.update(p0, g, opt.init(p0), 0.01))
    for r in results[1:]:
        assert _same_bits(r, results[0])
    assert tree.paths(results[0][1].inner[0].mu) == ["dense_2/w", "dense_2/b"]


def test_masked_transform_passes_the_other_gradients_through():
    p0 = _params()
    g = read_only(_grads(p0, *_data()))
    t = optim.masked(optim.scale(-1.0), ["*/b"])
    u, state = t.update(p0, g, t.init(p0))
    assert state == MaskedState({})
    assert u["dense_0"]["w"] is g["dense_0"]["w"] and u["dense_2"]["w"] is g["dense_2"]["w"]
    np.testing.assert_array_equal(u["dense_2"]["b"], -g["dense_2"]["b"])
    # params=None works for a transform that does not need them
    assert _same_bits(t.update(None, g, state)[0], u)
    # freeze of a transform: zero updates for the frozen leaves
    u, _ = optim.freeze(optim.scale(2.0), BODY).update(p0, g, MaskedState({}))
    np.testing.assert_array_equal(u["dense_0"]["w"], np.zeros_like(g["dense_0"]["w"]))
    np.testing.assert_array_equal(u["dense_2"]["w"], 2.0 * g["dense_2"]["w"])


def test_masked_transform_in_a_chain_and_descend():
    p0 = _params()
    g = _grads(p0, *_data())
    opt = optim.descend(optim.chain(optim.masked(optim.scale_by_adam(), HEAD), optim.scale(1.0)))
    p, state = opt.update(p0, g, opt.init(p0), 0.1)
    head = optim.adam()
    want, _ = head.update({"dense_2": p0["dense_2"]}, {"dense_2": g["dense_2"]},
                          head.init({"dense_2": p0["dense_2"]}), 0.1)
    assert _same_bits(p["dense_2"], want["dense_2"])
    assert _same_bits(p["dense_0"], optim.sgd().update(p0["dense_0"], g["dense_0"], {}, 0.1)[0])


def test_inner_state_covers_only_the_selected_leaves():
    p0 = _params()
    opt = optim.freeze(optim.adam(), BODY)
    state = opt.init(p0)
    assert isinstance(state, MaskedState)
    assert list(state.inner.mu) == ["dense_2/w", "dense_2/b"]
    assert tree.size(state.inner.mu) == tree.size(p0["dense_2"]) == 8 * 3 + 3
    assert tree.size(state) == 1 + 2 * (8 * 3 + 3)   # count + mu + nu of the head only
    empty = optim.masked(optim.adam(), lambda path: False)
    s = empty.init(p0)
    assert s.inner.mu == {} and s.inner.nu == {}
    p, s = empty.update(p0, _grads(p0, *_data()), s, 0.1)
    assert all(a is b for a, b in zip(tree.leaves(p), tree.leaves(p0)))
    assert int(s.inner.count) == 1


# ----------------------------------------------------------------------------- state, purity

def test_state_round_trips_through_save_and_load(tmp_path):
    opt = optim.multi_transform(
        {"body": optim.freeze(optim.adamw(weight_decay=0.1), "dense_0/b"),
         "head": optim.accumulate(optim.momentum(), 2)},
        lambda path: "head" if HEAD(path) else "body")
    p0 = _params()
    p, s = p0, opt.init(p0)
    batches = _batches(6)
    for x, y in batches[:3]:
        p, s = opt.update(p, _grads(p, x, y), s, 0.05)
    fl.io.save(tmp_path / "s.npz", s)
    for loaded in (fl.io.load(tmp_path / "s.npz"), fl.io.load(tmp_path / "s.npz", like=opt.init(p0))):
        assert isinstance(loaded, MultiTransformState) and isinstance(loaded.inner["body"], MaskedState)
        assert _same_bits(loaded, s)
        pa, sa, pb, sb = p, s, p, loaded
        for x, y in batches[3:]:
            pa, sa = opt.update(pa, _grads(pa, x, y), sa, 0.05)
            pb, sb = opt.update(pb, _grads(pb, x, y), sb, 0.05)
        assert _same_bits(pa, pb) and _same_bits(sa, sb)
        assert pa["dense_0"]["b"] is p0["dense_0"]["b"]


@pytest.mark.parametrize("make", [
    lambda: optim.freeze(optim.adamw(weight_decay=0.1), BODY),
    lambda: optim.masked(optim.sgd(), "dense_2/w"),
    lambda: optim.multi_transform({"a": optim.lion(weight_decay=0.1), "b": optim.set_to_zero()},
                                  lambda path: "a" if HEAD(path) else "b"),
    lambda: optim.freeze(optim.accumulate(optim.adam(), 2), BODY),
])
def test_optimizers_are_pure_on_read_only_inputs(make):
    opt = make()
    p0 = _params()
    g0 = _grads(p0, *_data())
    s0 = opt.init(p0)
    p1, s1 = opt.update(p0, g0, s0, 0.05)
    params, grads, state = read_only(p1), read_only(g0), read_only(s1)
    want = opt.update(p1, g0, s1, 0.05)
    assert _same_bits(opt.update(params, grads, state, 0.05), want)
    assert _same_bits(params, p1) and _same_bits(grads, g0) and _same_bits(state, s1)
    if opt.update_owning_grads is not None:  # sgd inside: the owning update writes only the grads
        owned = tree.map(np.copy, g0)
        assert _same_bits(opt.update_owning_grads(params, owned, state, 0.05), want)


def test_transforms_are_pure_on_read_only_inputs():
    p0 = _params()
    g0 = _grads(p0, *_data())
    for t in (optim.masked(optim.scale_by_adam(), HEAD), optim.freeze(optim.trace(0.9), BODY),
              optim.multi_transform({"x": optim.scale_by_lion(), "y": optim.clip_by_value(-0.01, 0.01)},
                                    lambda path: "x" if path.endswith("/w") else "y")):
        s1 = t.update(p0, g0, t.init(p0))[1]
        want = t.update(p0, g0, s1)
        params, grads, state = read_only(p0), read_only(g0), read_only(s1)
        assert _same_bits(t.update(params, grads, state), want)
        assert _same_bits(params, p0) and _same_bits(grads, g0) and _same_bits(state, s1)


# ----------------------------------------------------------------------------- errors

def test_a_mask_tree_of_another_structure_names_the_path():
    p0 = _params()
    opt = optim.freeze(optim.adam(), {"dense_0": {"w": True, "b": True}, "relu_1": {},
                                      "dense_2": {"w": False}})
    with pytest.raises(MaskError, match=r"freeze\(adam\): the mask tree does not match the params "
                                        r"\(params vs mask\): "
                                        r".*differ at 'dense_2'"):
        opt.init(p0)
    opt = optim.masked(optim.adam(), {"dense_0": {"w": True, "b": True}, "relu_1": {},
                                      "dense_2": {"w": False, "b": 0}})
    with pytest.raises(MaskError, match="True/False at every leaf, got int 0 at 'dense_2/b'"):
        opt.init(p0)
    opt = optim.masked(optim.adam(), {"dense_0": {"w": True, "b": True}, "relu_1": {}, "dense_2": False})
    with pytest.raises(MaskError, match=r"\(params vs mask\): tree structures differ at 'dense_2': "
                                        r"dict with keys \['b', 'w'\] vs a leaf"):
        opt.init(p0)


def test_a_label_with_no_transform_names_the_label_and_a_path():
    p0 = _params()
    opt = optim.multi_transform({"body": optim.adam(), "head": optim.sgd()},
                                lambda path: "head" if HEAD(path) else "neck")
    with pytest.raises(MaskError, match=r"label 'neck' of path 'dense_0/w' has no transform "
                                        r"\(the transforms are for labels \['body', 'head'\]\)"):
        opt.init(p0)
    labels = {"dense_0": {"w": "body", "b": "body"}, "relu_1": {}, "dense_2": {"w": "head", "b": "tail"}}
    opt = optim.multi_transform({"body": optim.adam(), "head": optim.sgd()}, labels)
    with pytest.raises(MaskError, match="label 'tail' of path 'dense_2/b'"):
        opt.update(p0, p0, optim.MultiTransformState({}), 0.1)
    with pytest.raises(MaskError, match="labels tree does not match the params"):
        optim.multi_transform({"a": optim.sgd()}, {"dense_0": "a", "dense_2": "a"}).init(p0)


def test_a_predicate_that_raises_is_reraised_with_the_path():
    def bad(path):
        if path.startswith("dense_2"):
            raise KeyError("no such layer")
        return True

    with pytest.raises(MaskError, match="mask predicate raised on path 'dense_2/w': KeyError") as err:
        optim.freeze(optim.adam(), bad).init(_params())
    assert isinstance(err.value.__cause__, KeyError)
    with pytest.raises(MaskError, match="labels function raised on path 'dense_2/w'"):
        optim.multi_transform({"a": optim.sgd()}, lambda p: bad(p) and "a").init(_params())


def test_bad_arguments():
    with pytest.raises(MaskError, match="the pattern 'dense_1/\\*' matches no parameter path"):
        optim.freeze(optim.adam(), ["dense_0/*", "dense_1/*"]).init(_params())
    with pytest.raises(TypeError, match=r"freeze\(\?\): expected a GradientTransform or an Optimizer"):
        optim.freeze(lambda p: p, BODY)
    with pytest.raises(TypeError, match="labels must be strings"):
        optim.multi_transform({0: optim.sgd()}, lambda p: 0)
    with pytest.raises(TypeError, match="the part for label 'a'"):
        optim.multi_transform({"a": 0.1}, lambda p: "a")
    with pytest.raises(TypeError, match="non-empty dict"):
        optim.multi_transform({}, lambda p: "a")


def test_the_readme_snippet_runs():
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Freezing and fine-tuning", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    x, y = fl.datasets.spirals(fl.random.key(3), 20, classes=10)
    namespace = {"fl": fl, "x_train": x, "y_train": y}
    exec(compile(block.replace("epochs=5", "epochs=2"), "README.md", "exec"), namespace)
    ts = namespace["ts"]
    k_init, _ = fl.random.split(fl.random.key(0))   # as fit initialises
    ts0 = fl.TrainState.create(k_init, namespace["model"], namespace["head_only"], (2,))
    assert _same_bits(ts.params["dense_0"], ts0.params["dense_0"]) and ts.step == 4
    assert not np.array_equal(ts.params["dense_2"]["w"], ts0.params["dense_2"]["w"])
    assert isinstance(namespace["two_rates"], optim.Optimizer)
