"""Optimizers: first updates against the papers' equations, convergence, state, dtype, purity."""

import copy

import numpy as np
import pytest

import fundl
from fundl import optim, random, tree
from fundl.testing import read_only

LRS = [0.1, 0.05, 0.02]  # a different lr at each of the three steps


def _tree(a, c):
    return {"a": np.array(a, dtype=np.float64), "b": {"c": np.array(c, dtype=np.float64)}}


def _vec(t):
    """The two-leaf tree as one flat vector: a (3,) then c (2, 2) raveled."""
    return np.concatenate([t["a"], t["b"]["c"].ravel()])


def _unvec(v):
    return _tree(v[:3], v[3:].reshape(2, 2))


P0 = _tree([0.5, -1.0, 2.0], [[0.3, -0.7], [1.5, -2.5]])
GRADS = [_unvec(random.normal(random.key(i), (7,), np.float64)) for i in (11, 12, 13)]


def _run(opt, params=P0, grads=GRADS, lrs=LRS):
    state = opt.init(params)
    out = []
    for g, lr in zip(grads, lrs):
        params, state = opt.update(params, g, state, lr)
        out.append(_vec(params))
    return out


# --- independent references: the equations as written in the papers, on one flat vector --------

def ref_sgd(p, gs):
    out = []
    for g, lr in zip(gs, LRS):
        p = p - lr * g
        out.append(p)
    return out


def ref_momentum(p, gs, beta, nesterov=False):
    v = np.zeros_like(p)
    out = []
    for g, lr in zip(gs, LRS):
        v = beta * v + g
        step = g + beta * v if nesterov else v
        p = p - lr * step
        out.append(p)
    return out


def ref_adagrad(p, gs, init_acc, eps):
    G = np.full_like(p, init_acc)
    out = []
    for g, lr in zip(gs, LRS):
        G = G + g * g
        p = p - lr * g / (np.sqrt(G) + eps)
        out.append(p)
    return out


def ref_rmsprop(p, gs, decay, eps, centered, mom):
    ms, mg, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    out = []
    for g, lr in zip(gs, LRS):
        ms = decay * ms + (1 - decay) * g * g
        if centered:
            mg = decay * mg + (1 - decay) * g
            step = g / (np.sqrt(ms - mg * mg) + eps)
        else:
            step = g / (np.sqrt(ms) + eps)
        if mom > 0:
            buf = mom * buf + step
            step = buf
        p = p - lr * step
        out.append(p)
    return out


def ref_adam(p, gs, b1, b2, eps, wd=0.0):
    m, v = np.zeros_like(p), np.zeros_like(p)
    out = []
    for t, (g, lr) in enumerate(zip(gs, LRS), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)
        out.append(p)
    return out


def ref_adamax(p, gs, b1, b2, eps):
    m, u = np.zeros_like(p), np.zeros_like(p)
    out = []
    for t, (g, lr) in enumerate(zip(gs, LRS), start=1):
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        p = p - (lr / (1 - b1 ** t)) * m / u
        out.append(p)
    return out


def ref_lion(p, gs, b1, b2, wd):
    m = np.zeros_like(p)
    out = []
    for g, lr in zip(gs, LRS):
        c = b1 * m + (1 - b1) * g
        p = p - lr * (np.sign(c) + wd * p)
        m = b2 * m + (1 - b2) * g
        out.append(p)
    return out


# Each case: (optimizer, reference).  Hyperparameters are off their defaults (and eps is large)
# so that swapped coefficients or a misplaced eps would show.
P, GS = _vec(P0), [_vec(g) for g in GRADS]
CASES = {
    "sgd": (optim.sgd(), ref_sgd(P, GS)),
    "momentum": (optim.momentum(0.8), ref_momentum(P, GS, 0.8)),
    "momentum_default": (optim.momentum(), ref_momentum(P, GS, 0.9)),
    "nesterov": (optim.nesterov(0.7), ref_momentum(P, GS, 0.7, nesterov=True)),
    "adagrad": (optim.adagrad(0.2, 1e-3), ref_adagrad(P, GS, 0.2, 1e-3)),
    "adagrad_default": (optim.adagrad(), ref_adagrad(P, GS, 0.1, 1e-10)),
    "rmsprop": (optim.rmsprop(0.8, 1e-3), ref_rmsprop(P, GS, 0.8, 1e-3, False, 0.0)),
    "rmsprop_default": (optim.rmsprop(), ref_rmsprop(P, GS, 0.9, 1e-8, False, 0.0)),
    "rmsprop_centered": (optim.rmsprop(0.8, 1e-3, centered=True),
                         ref_rmsprop(P, GS, 0.8, 1e-3, True, 0.0)),
    "rmsprop_momentum": (optim.rmsprop(0.8, 1e-3, momentum=0.6),
                         ref_rmsprop(P, GS, 0.8, 1e-3, False, 0.6)),
    "rmsprop_centered_momentum": (optim.rmsprop(0.85, 1e-3, centered=True, momentum=0.6),
                                  ref_rmsprop(P, GS, 0.85, 1e-3, True, 0.6)),
    "adam": (optim.adam(0.8, 0.95, 1e-3), ref_adam(P, GS, 0.8, 0.95, 1e-3)),
    "adam_default": (optim.adam(), ref_adam(P, GS, 0.9, 0.999, 1e-8)),
    "adamw": (optim.adamw(0.8, 0.95, 1e-3, weight_decay=0.3), ref_adam(P, GS, 0.8, 0.95, 1e-3, 0.3)),
    "adamw_default": (optim.adamw(), ref_adam(P, GS, 0.9, 0.999, 1e-8, 1e-4)),
    "adamax": (optim.adamax(0.8, 0.95, 1e-3), ref_adamax(P, GS, 0.8, 0.95, 1e-3)),
    "adamax_default": (optim.adamax(), ref_adamax(P, GS, 0.9, 0.999, 1e-8)),
    "lion": (optim.lion(0.8, 0.95), ref_lion(P, GS, 0.8, 0.95, 0.0)),
    "lion_default": (optim.lion(), ref_lion(P, GS, 0.9, 0.99, 0.0)),
    "lion_wd": (optim.lion(0.8, 0.95, weight_decay=0.5), ref_lion(P, GS, 0.8, 0.95, 0.5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_first_three_updates_match_the_equations(name):
    opt, expected = CASES[name]
    got = _run(opt)
    for t, (g, e) in enumerate(zip(got, expected), start=1):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12, err_msg=f"{name}, step {t}")
    # the update really moved the params (guards against a reference that does nothing)
    assert np.abs(got[-1] - P).max() > 1e-3


def test_adamw_mask_decays_only_selected_leaves():
    mask = lambda path: path.startswith("b/")  # noqa: E731  only the 2x2 leaf "b/c"
    opt = optim.adamw(0.8, 0.95, 1e-3, weight_decay=0.3, mask=mask)
    got = _run(opt)
    wd = np.array([0.0] * 3 + [0.3] * 4)
    m, v, p = np.zeros(7), np.zeros(7), P.copy()
    for t, (g, lr) in enumerate(zip(GS, LRS), start=1):
        m = 0.8 * m + 0.2 * g
        v = 0.95 * v + 0.05 * g * g
        p = p - lr * ((m / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.95 ** t)) + 1e-3) + wd * p)
        np.testing.assert_allclose(got[t - 1], p, rtol=0, atol=1e-12)


def test_first_adam_step_is_lr_times_sign():
    # A hand-computed value: with bias correction the first Adam step is lr * g / (|g| + eps)
    # (eps must be > 0; 1e-300 vanishes next to these |g| in float64).
    opt = optim.adam(eps=1e-300)
    params = {"x": np.array([1.0, 2.0, -3.0])}
    new, state = opt.update(params, {"x": np.array([0.5, -4.0, 1e-3])}, opt.init(params), 0.1)
    np.testing.assert_allclose(new["x"], [0.9, 2.1, -3.1], rtol=0, atol=1e-15)
    assert int(state.count) == 1


# --- convergence on a convex quadratic and on Rosenbrock --------------------------------------

_Q, _ = np.linalg.qr(np.arange(25.0).reshape(5, 5) ** 1.3 % 7 + np.eye(5))
A = _Q @ np.diag([1.0, 2.0, 3.0, 5.0, 10.0]) @ _Q.T  # SPD, eigenvalues 1..10, minimum at x = 0


def quad_grad(x):
    return A @ x  # gradient of 0.5 x^T A x


def rosen_grad(x):
    a, b = x  # f = (1 - a)^2 + 100 (b - a^2)^2, minimum at (1, 1)
    return np.array([-2.0 * (1.0 - a) - 400.0 * a * (b - a * a), 200.0 * (b - a * a)])


def _minimise(opt, grad, x0, lr, steps):
    params = {"x": np.array(x0, dtype=np.float64)}
    state = opt.init(params)
    for _ in range(steps):
        params, state = opt.update(params, {"x": grad(params["x"])}, state, lr)
    return params["x"]


# (optimizer, lr, steps, tolerance on |x - x*|).  Sign-like methods (rmsprop, lion, adagrad's
# early steps) hover within about lr of the minimum at a fixed lr, hence their looser tolerance.
QUADRATIC = {
    "sgd": (optim.sgd(), 0.15, 200, 1e-6),
    "momentum": (optim.momentum(), 0.05, 300, 1e-5),
    "nesterov": (optim.nesterov(), 0.05, 300, 1e-6),
    "adagrad": (optim.adagrad(), 0.5, 500, 1e-6),
    "rmsprop": (optim.rmsprop(), 0.003, 3000, 1e-2),
    "rmsprop_centered": (optim.rmsprop(centered=True, momentum=0.9), 0.0005, 3000, 1e-2),
    "adam": (optim.adam(), 0.02, 2000, 1e-6),
    "adamw": (optim.adamw(), 0.02, 2000, 1e-3),
    "adamax": (optim.adamax(), 0.05, 1000, 1e-6),
    "lion": (optim.lion(), 0.0007, 2000, 2e-3),
}
ROSENBROCK = {
    "sgd": (optim.sgd(), 0.002, 20000, 5e-3),
    "momentum": (optim.momentum(), 0.0005, 5000, 1e-3),
    "nesterov": (optim.nesterov(), 0.0005, 5000, 1e-3),
    "adagrad": (optim.adagrad(), 1.0, 5000, 5e-2),
    "rmsprop": (optim.rmsprop(), 0.001, 5000, 5e-2),
    "rmsprop_centered": (optim.rmsprop(centered=True, momentum=0.9), 0.0005, 3000, 1e-3),
    "adam": (optim.adam(), 0.02, 3000, 1e-2),
    "adamw": (optim.adamw(), 0.02, 3000, 1e-2),
    "adamax": (optim.adamax(), 0.02, 6000, 1e-4),
    "lion": (optim.lion(), 0.001, 3000, 5e-2),
}


@pytest.mark.parametrize("name", sorted(QUADRATIC))
def test_converges_on_quadratic(name):
    opt, lr, steps, tol = QUADRATIC[name]
    x = _minimise(opt, quad_grad, np.ones(5), lr, steps)
    assert np.linalg.norm(x) < tol, (name, x)


@pytest.mark.parametrize("name", sorted(ROSENBROCK))
def test_converges_on_rosenbrock(name):
    opt, lr, steps, tol = ROSENBROCK[name]
    x = _minimise(opt, rosen_grad, [-1.2, 1.0], lr, steps)
    assert np.linalg.norm(x - 1.0) < tol, (name, x)


# --- state, dtype, purity ------------------------------------------------------------------------

ALL = {
    "sgd": optim.sgd(), "momentum": optim.momentum(), "nesterov": optim.nesterov(),
    "adagrad": optim.adagrad(), "rmsprop": optim.rmsprop(),
    "rmsprop_centered_momentum": optim.rmsprop(centered=True, momentum=0.9),
    "adam": optim.adam(), "adamw": optim.adamw(mask=lambda p: p.endswith("c")),
    "adamax": optim.adamax(), "lion": optim.lion(), "lion_wd": optim.lion(weight_decay=0.1),
    "clipped_adam": optim.chain(optim.clip_by_global_norm(1.0), optim.adam()),
    "accumulate_momentum": optim.accumulate(optim.momentum(), 2),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_state_round_trips_through_paths(name):
    opt = ALL[name]
    params, state = P0, opt.init(P0)
    for g in GRADS[:2]:
        params, state = opt.update(params, g, state, 0.1)
    pairs = tree.flatten_with_paths(state)
    rebuilt = tree.unflatten_from_paths(opt.init(P0), pairs)  # structure from a fresh init
    assert tree.all_equal(rebuilt, state)
    # and training continues identically from the rebuilt state
    a = opt.update(params, GRADS[2], state, 0.1)
    b = opt.update(params, GRADS[2], rebuilt, 0.1)
    assert tree.all_equal(a, b)


@pytest.mark.parametrize("name", sorted(ALL))
def test_a_0d_parameter_updates_like_a_1_element_one(name):
    """A scalar parameter (shape ``()``) gets the update of the same value in shape ``(1,)``,
    as a 0-d array of its dtype (numpy's arithmetic gives scalars for 0-d arrays)."""
    opt = ALL[name]
    scalar = {"c": np.array(0.5, np.float32), "w": np.arange(3, dtype=np.float32)}
    vector = {"c": scalar["c"].reshape(1), "w": scalar["w"]}
    s0, s1 = opt.init(scalar), opt.init(vector)
    for i in range(3):
        g = np.float32(0.3 * (i + 1) - 0.5)
        grads = {"c": np.array(g), "w": np.full(3, g)}
        scalar, s0 = opt.update(scalar, grads, s0, 0.1)
        vector, s1 = opt.update(vector, {"c": grads["c"].reshape(1), "w": grads["w"]}, s1, 0.1)
    assert type(scalar["c"]) is np.ndarray and scalar["c"].shape == () \
        and scalar["c"].dtype == np.float32
    assert scalar["c"] == vector["c"][0] and scalar["c"] != 0.5
    for a, b in zip(tree.leaves(s0), tree.leaves(s1)):
        assert np.array_equal(np.ravel(a), np.ravel(b)) and np.shape(a) in ((), np.shape(b))


@pytest.mark.parametrize("name", sorted(ALL))
def test_float32_stays_float32(name):
    opt = ALL[name]
    params = tree.cast(P0, np.float32)
    state = opt.init(params)
    for g in GRADS:
        # a float64 numpy scalar lr must not upcast either
        params, state = opt.update(params, tree.cast(g, np.float32), state, np.float64(0.1))
    assert {leaf.dtype for leaf in tree.leaves(params)} == {np.dtype(np.float32)}
    for path, leaf in tree.flatten_with_paths(state):
        leaf = np.asarray(leaf)
        assert leaf.dtype in (np.float32, np.int64), (path, leaf.dtype)
        if path.endswith("count"):
            assert leaf.dtype == np.int64 and leaf.shape == ()


@pytest.mark.parametrize("name", sorted(ALL))
def test_update_does_not_mutate_inputs(name):
    opt = ALL[name]
    params = read_only(P0)
    state = read_only(opt.init(params))
    for g in GRADS:
        g = read_only(g)
        before = copy.deepcopy((params, g, state))
        new_params, new_state = opt.update(params, g, state, 0.1)
        again = opt.update(params, g, state, 0.1)
        assert tree.all_equal((params, g, state), before)
        assert tree.all_equal(again, (new_params, new_state))
        params, state = read_only(new_params), read_only(new_state)


def test_make_step_with_adam_and_schedule():
    model = fundl.serial(fundl.dense(8), fundl.tanh(), fundl.dense(1))
    key = random.key(0)
    x = random.normal(random.key(1), (64, 3))
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)
    ts = fundl.TrainState.create(key, model, optim.adam(), in_shape=(3,))
    step = fundl.make_step(model, fundl.losses.mse, optim.adam())
    lr = optim.warmup_cosine(0.05, 10, 200)
    losses = []
    for _ in range(200):
        ts, metrics = step(ts, (x, y), lr)
        losses.append(metrics["loss"])
    assert losses[-1] < 0.1 * losses[0]
    assert int(ts.opt_state.count) == 200
    assert ts.params["dense_0"]["w"].dtype == np.float32


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="b1"):
        optim.adam(b1=1.0)
    with pytest.raises(ValueError, match="decay"):
        optim.rmsprop(decay=-0.1)
    with pytest.raises(ValueError, match="beta"):
        optim.momentum(1.5)
    opt = optim.adam()
    with pytest.raises(TypeError, match="schedule"):
        opt.update(P0, GRADS[0], opt.init(P0), optim.constant(0.1))
    bad = {"a": GRADS[0]["a"], "b": {"d": GRADS[0]["b"]["c"]}}
    with pytest.raises(tree.TreeError, match="b"):
        opt.update(P0, bad, opt.init(P0), 0.1)


@pytest.mark.parametrize("transform", [
    lambda: optim.scale_by_adam(), lambda: optim.scale_by_adamax(), lambda: optim.scale_by_rss(),
    lambda: optim.scale_by_rms(centered=True), lambda: optim.scale_by_rms(),
    lambda: optim.scale_by_lion(), lambda: optim.trace(0.9, nesterov=True)])
def test_fused_per_leaf_descent_equals_the_transform_then_descent(transform):
    """descend() runs a leafwise transform's rule and the descent in one pass over the leaves;
    through chain() (no per-leaf declaration) the same update goes tree by tree: same bits."""
    fused = optim.descend(transform())
    assert transform().per_leaf is not None
    tree_by_tree = optim.descend(optim.chain(transform(), optim.identity()))
    assert tree_by_tree.update is not fused.update
    for a, b in zip(_run(fused), _run(tree_by_tree)):
        np.testing.assert_array_equal(a, b)
    state_a, state_b = fused.init(P0), tree_by_tree.init(P0)
    _, state_a = fused.update(P0, GRADS[0], state_a, 0.1)
    _, state_b = tree_by_tree.update(P0, GRADS[0], state_b, 0.1)
    assert tree.all_equal(state_a, state_b[0])


@pytest.mark.parametrize("transform", [
    lambda: optim.scale_by_adam(), lambda: optim.scale_by_adamax(), lambda: optim.scale_by_rss(),
    lambda: optim.scale_by_rms(centered=True), lambda: optim.scale_by_rms(),
    lambda: optim.scale_by_lion(), lambda: optim.trace(0.9), lambda: optim.trace(0.9, nesterov=True),
    lambda: optim.chain(optim.scale_by_adam(), optim.add_weight_decay(0.05)),     # adamw's
    lambda: optim.chain(optim.scale_by_lion(), optim.add_weight_decay(0.1))])     # lion's
def test_large_leaves_descend_in_blocks_with_the_same_bits(transform):
    """Leaves larger than one block (2**16 float32, 2**15 float64 elements) run the rule
    and the descent block by block; the result is the unblocked one, bit for bit, for
    contiguous, strided and read-only gradients, and nothing passed in is written."""
    assert transform().per_leaf(transform().init({"a": np.zeros(1)})).elementwise
    rng = np.random.default_rng(0)
    params = read_only({"w": rng.standard_normal((300, 250)).astype(np.float32),  # 75000
                        "v": rng.standard_normal(40000),                             # float64
                        "b": rng.standard_normal(7).astype(np.float32)})
    grads = [read_only({"w": rng.standard_normal((250, 300)).astype(np.float32).T,  # strided
                        "v": rng.standard_normal(40000),
                        "b": rng.standard_normal(7).astype(np.float32)}) for _ in range(3)]
    blocked = optim.descend(transform())
    unblocked = optim.descend(optim.chain(transform(), optim.identity()))
    state_a, state_b = blocked.init(params), unblocked.init(params)
    pa = pb = params
    for g in grads:
        pa, state_a = blocked.update(pa, g, state_a, 0.05)
        pb, state_b = unblocked.update(pb, g, state_b, 0.05)
        assert tree.all_equal(pa, pb)
        assert tree.all_equal(state_a, state_b[0])
        assert pa["w"].dtype == np.float32 and pa["v"].dtype == np.float64
    assert not np.array_equal(pa["w"], params["w"])


def test_a_chain_of_rules_is_one_rule_unless_a_part_has_none():
    decay = optim.add_weight_decay(0.05)
    masked = optim.add_weight_decay(0.05, mask=lambda path: path.endswith("c"))
    assert optim.chain(optim.scale_by_adam(), decay).per_leaf is not None
    assert optim.chain(optim.scale_by_adam(), masked).per_leaf is None    # the mask needs paths
    assert optim.chain(optim.clip_by_global_norm(1.0), optim.scale_by_adam()).per_leaf is None
    # the chained rule gives the chain's result: adam's update, then p * rate added
    adam_u, _ = optim.scale_by_adam().update(P0, GRADS[0], optim.scale_by_adam().init(P0))
    both = optim.chain(optim.scale_by_adam(), decay)
    u, state = both.update(P0, GRADS[0], both.init(P0))
    np.testing.assert_array_equal(u["a"], adam_u["a"] + 0.05 * P0["a"])
    assert isinstance(state, tuple) and state[1] == {} and int(state[0].count) == 1
    # masked: only "b/c" is decayed
    u, _ = optim.chain(optim.scale_by_adam(), masked).update(P0, GRADS[0], both.init(P0))
    np.testing.assert_array_equal(u["a"], adam_u["a"])
    for transform in (decay, masked):
        with pytest.raises(ValueError, match="needs the params"):
            transform.update(None, GRADS[0], {})


def test_sgd_declares_the_update_that_reuses_owned_gradients():
    opt = optim.sgd()
    grads = tree.map(np.copy, GRADS[0])
    new, _ = opt.update_owning_grads(P0, grads, {}, 0.1)
    want, _ = opt.update(P0, GRADS[0], {}, 0.1)
    assert tree.all_equal(new, want)
    assert new["a"] is grads["a"]                     # built in the handed-over memory
    assert optim.adam().update_owning_grads is None


def test_sgd_owning_update_walks_nested_dicts_and_names_a_differing_path():
    opt = optim.sgd()
    params = {"dense_0": {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)},
              "relu_1": {}, "lstm_2": {"cell": (np.ones(2, np.float32),)}}
    grads = tree.map(lambda p: np.full_like(p, 2.0), params)
    grads["dense_0"]["b"] = np.full(3, 2.0)               # float64: a new float32 array instead
    new, _ = opt.update_owning_grads(params, grads, {}, 0.25)
    np.testing.assert_array_equal(new["dense_0"]["w"], np.full((2, 3), 0.5, np.float32))
    assert new["dense_0"]["w"] is grads["dense_0"]["w"]
    assert new["dense_0"]["b"].dtype == np.float32 and new["dense_0"]["b"][0] == -0.5
    assert new["relu_1"] == {} and new["lstm_2"]["cell"][0][1] == 0.5   # a tuple, via tree.map
    wrong = tree.map(np.copy, grads)
    wrong["dense_0"] = {"w": wrong["dense_0"]["w"], "bias": wrong["dense_0"]["b"]}
    with pytest.raises(tree.TreeError, match="dense_0"):
        opt.update_owning_grads(params, wrong, {}, 0.1)
    wrong = tree.map(np.copy, grads)
    wrong["dense_0"]["w"] = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"shape \(3, 2\) for a parameter of shape \(2, 3\)"):
        opt.update_owning_grads(params, wrong, {}, 0.1)
