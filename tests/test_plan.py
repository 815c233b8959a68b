"""fundl.plan: the speed decisions made once per model -- donation, hints, the ReLU after the
max pool -- give the same results as running plainly; validation and error locations once per
signature; sharing."""

from __future__ import annotations

import numpy as np
import pytest

import fundl as fl
from fundl import Layer, LayerError, Traits, plan, random, stateless_layer, tree
from fundl.combinators import child_keys, parallel, residual, serial
from fundl.core import HINTS
from fundl.plan import run_order
from fundl.layers.activations import relu, sigmoid, tanh
from fundl.layers.conv import conv2d
from fundl.layers.dense import dense
from fundl.layers.pool import avg_pool2d, max_pool1d, max_pool2d
from fundl.testing import check_layer, read_only

KEY = random.key(0)


def _x(shape, seed=1, dtype=np.float32):
    return random.normal(random.key(seed), shape, dtype)


# --- donation inside serial -----------------------------------------------------------

def _recorder(fresh, log):
    """y = x + 1 (a new array); records its output and its pullback's dx in ``log``."""
    def init(key, in_shape):
        return {}, in_shape

    def vjp(params, x):
        y = x + 1.0
        log["y"] = y

        def pullback(dy):
            log["dx"] = dy * 1.0
            return {}, log["dx"]
        return y, pullback

    return stateless_layer("rec", init, lambda p, x: x + 1.0, vjp, fresh=fresh)


@pytest.mark.parametrize("fresh", [("y", "dx"), ()])
def test_serial_donates_only_what_a_layer_declares_fresh(fresh):
    log = {}
    x = read_only(np.array([[-2.0, 0.5, 3.0]], np.float32))
    dy = read_only(np.array([[1.0, 2.0, 3.0]], np.float32))
    # forward: rec's output goes to relu; backward: rec's dx goes to relu's pullback
    model = serial(_recorder(fresh, log), relu(), _recorder(fresh, {}), relu(),
                   _recorder(fresh, log))
    params, state, _ = model.init(KEY, (3,))
    y, _, pullback = model.vjp(params, state, x, key=KEY)
    grads, dx = pullback(dy)
    np.testing.assert_array_equal(y, [[2.0, 3.5, 6.0]])
    np.testing.assert_array_equal(dx, [[0.0, 2.0, 3.0]])
    assert plan.fresh_results(model) == frozenset(fresh)
    # the caller's arrays were never written (they are read-only: a write would raise)
    np.testing.assert_array_equal(x, [[-2.0, 0.5, 3.0]])


def test_serial_runs_relu_in_place_on_a_fresh_output():
    log = {}
    model = serial(_recorder(("y", "dx"), log), relu())
    params, state, _ = model.init(KEY, (3,))
    x = read_only(np.array([[-2.0, 0.5, 3.0]], np.float32))
    y, _, pullback = model.vjp(params, state, x, key=KEY)
    assert y is log["y"]                          # relu wrote into rec's own output
    dy = read_only(np.ones((1, 3), np.float32))
    _, dx = pullback(dy)                          # relu's pullback gets the caller's dy: new dx
    assert not np.shares_memory(dx, dy)
    np.testing.assert_array_equal(dx, [[0.0, 1.0, 1.0]])

    log2 = {}
    model2 = serial(relu(), _recorder(("y", "dx"), log2))
    params2, state2, _ = model2.init(KEY, (3,))
    y2, _, pullback2 = model2.vjp(params2, state2, x, key=KEY)
    _, dx2 = pullback2(dy)
    assert dx2 is log2["dx"]                      # relu's pullback wrote into rec's fresh dx
    np.testing.assert_array_equal(dx2, [[0.0, 1.0, 1.0]])
    no_gift = serial(_recorder((), {}), relu())
    y3, _, _ = no_gift.vjp(*no_gift.init(KEY, (3,))[:2], x, key=KEY)
    np.testing.assert_array_equal(y3, [[0.0, 1.5, 4.0]])


def test_children_that_use_no_key_get_none_and_stochastic_ones_do():
    from fundl.layers.dropout import dropout
    seen = []

    def spy(uses_key):
        def vjp(params, state, x, *, key=None, train=True):
            seen.append(key)
            return x, state, lambda dy: ({}, dy)
        return Layer(lambda k, s: ({}, {}, s), lambda p, s, x, **kw: x, vjp, "spy",
                     traits=Traits(uses_key=uses_key))

    def uses_key(layer):
        return layer.traits.uses_key

    assert not uses_key(dense(2)) and not uses_key(relu()) and uses_key(dropout(0.5))
    det = serial(dense(3), spy(False), relu())
    assert not (uses_key(det) or uses_key(parallel(det, relu())) or uses_key(residual(det)))
    params, state, _ = det.init(KEY, (3,))
    det.vjp(params, state, np.ones((1, 3), np.float32), key=KEY)
    assert seen == [None]                                  # nothing split for keyless children
    mixed = serial(dense(3), spy(True), dropout(0.5))
    assert uses_key(mixed) and uses_key(parallel(mixed))
    params, state, _ = mixed.init(KEY, (3,))
    mixed.vjp(params, state, np.ones((1, 3), np.float32), key=KEY)
    np.testing.assert_array_equal(seen[1], random.split(KEY, 3)[1])   # the same child keys as always


@pytest.mark.parametrize("act", [relu, tanh, sigmoid])
def test_activations_work_in_place_on_a_dense_output_and_keep_exact_gradients(act):
    log = {}
    model = serial(_recorder(("y", "dx"), log), act(), dense(4))
    params, state, _ = model.init(KEY, (3,))
    x = read_only(np.array([[-2.0, 0.5, 3.0], [1.0, -1.0, 0.0]], np.float32))
    model.vjp(params, state, x, key=KEY)
    want = act().apply({}, {}, x + 1.0)
    assert model.children[1][1].traits.fresh == {"dx", "dparams"}
    np.testing.assert_allclose(log["y"], want, rtol=1e-6)   # the recorder's output, overwritten
    check_layer(serial(dense(5), act(), dense(3), act(), dense(2)), (4,))


@pytest.mark.parametrize("act", [relu, tanh, sigmoid])
@pytest.mark.parametrize("in_shape", [(4,), (3, 5)])
def test_donating_dense_chains_pass_the_float64_gradient_check(act, in_shape):
    # every activation here runs in place on the dense output and (relu) on the dense dx
    check_layer(serial(dense(6), act(), dense(5), act(), dense(2)), in_shape)


@pytest.mark.parametrize("in_shape, pool", [((6, 6, 2), 2), ((5, 7, 1), 3)])
def test_donating_conv_pool_chains_pass_the_float64_gradient_check(in_shape, pool):
    from fundl.layers.reshape import flatten
    for pooling in (max_pool2d(pool, padding="same"), avg_pool2d(2)):
        model = serial(conv2d(3, 3, padding="same"), relu(), pooling, conv2d(4, 2), relu(),
                       flatten(), dense(2))
        assert plan.fresh_results(model.children[1][1]) \
            and "y" in plan.fresh_results(model.children[0][1])
        check_layer(model, in_shape)


# --- serial runs a ReLU after the max pool that follows it -------------------------------

def test_specialise_binds_only_the_hints_a_layer_takes():
    calls = []

    def recorder(takes):
        def vjp(params, state, x, *, key=None, train=True, **hints):
            calls.append(hints)
            return x, state, lambda dy: ({}, dy)
        return Layer(lambda k, s: ({}, {}, s), lambda p, s, x, **kw: x, vjp, "rec",
                     traits=Traits(takes=frozenset(takes)))

    x = np.ones((1, 2), np.float32)
    for takes in ((), ("need_dx",), ("x_donated", "dy_donated"), HINTS):
        layer = recorder(takes)
        for hints in ((True, False, False), (False, True, True), (True, True, False)):
            calls.clear()
            plan.specialise(layer, *hints).vjp_fn({}, {}, x, key=None)
            (bound,) = calls
            assert set(bound) <= set(takes)
            defaults = {"need_dx": True, "x_donated": False, "dy_donated": False}
            wanted = dict(zip(defaults, hints))
            assert {**defaults, **bound} == {k: v if k in takes else defaults[k]
                                             for k, v in wanted.items()}
    plain = recorder(HINTS)
    assert plan.specialise(plain, True, False, False) is plain   # the plain call stays plain


def test_specialise_uses_the_binding_a_stateless_layer_declares():
    seen = []

    def vjp(params, x, x_donated=False, dy_donated=False):
        seen.append((x_donated, dy_donated))
        if x.shape[-1] != 2:
            raise LayerError(f"expected 2 features, got {x.shape[-1]}")
        return x, lambda dy: ({}, dy)

    layer = fl.stateless_layer("twice", lambda k, s: ({}, s), lambda p, x: x, vjp,
                               takes=("x_donated", "dy_donated"))
    assert layer.traits.bind is not None
    run = plan.specialise(layer, True, True, False).vjp_fn
    y, state, pullback = run({}, {}, np.ones((1, 2), np.float32), key=None)
    assert seen == [(True, False)] and state == {} and pullback(y)[1] is y
    model = serial(dense(3), layer)
    params, state, _ = model.init(KEY, (4,))
    with pytest.raises(LayerError, match=r"layer 'twice_1' \(twice\): expected 2 features, got 3"):
        model.vjp(params, state, np.ones((1, 4), np.float32))   # errors still name the layer


def test_step_gives_the_same_next_key_with_and_without_a_keyed_layer():
    from fundl.layers.dropout import dropout
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 0, 1])
    keys = []
    for model in (serial(dense(2)), serial(dropout(0.0), dense(2))):
        assert model.traits.uses_key == (len(model.children) == 2)
        ts = fl.TrainState.create(KEY, model, fl.optim.sgd(), (3,))
        step = fl.make_step(model, fl.losses.softmax_cross_entropy, fl.optim.sgd())
        ts, _ = step(ts, (x, y), 0.1)
        keys.append(ts.key)
    np.testing.assert_array_equal(keys[0], keys[1])
    np.testing.assert_array_equal(keys[0], random.split(random.split(KEY)[1])[0])


def _order(layers):
    """The written indices of ``layers`` in the order :func:`run_order` runs them."""
    children = tuple(zip(child_keys(layers), layers))
    ran = run_order(children)
    assert [k for k, _ in ran] == [k for k, _ in children]   # every layer keeps its key
    return [next(i for i, layer in enumerate(layers) if layer is c) for _, c in ran]


def test_run_order_moves_each_relu_after_the_max_pool_that_follows_it():
    layers = [dense(2), relu(), max_pool2d(2), relu(), relu(), max_pool1d(2), max_pool2d(2),
              relu(), avg_pool2d(2), tanh(), max_pool2d(2)]
    assert _order(layers) == [0, 2, 1, 3, 5, 4, 6, 7, 8, 9, 10]
    assert _order([relu(), max_pool2d(2)]) == [1, 0]
    assert _order([max_pool2d(2), relu()]) == [0, 1]


def _in_written_order(layers, params, x, dy):
    """``serial(*layers)``'s y, grads and dx computed child by child as written (no donation)."""
    pullbacks = []
    for k, layer in zip(child_keys(layers), layers):
        x, _, pb = layer.vjp(params[k], {}, x)
        pullbacks.append((k, pb))
    grads = {}
    for k, pb in reversed(pullbacks):
        grads[k], dy = pb(dy)
    return x, {k: grads[k] for k, _ in pullbacks}, dy


def _int_valued(shape, seed, dtype, low=-2, high=3):
    """Small integers as floats: many ties, zeros and negative windows."""
    return random.randint(random.key(seed), shape, low, high).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("build, in_shape", [
    (lambda: [relu(), max_pool2d(2)], (4, 6, 3)),
    (lambda: [relu(), max_pool2d(3, stride=1, padding="same")], (5, 4, 2)),
    (lambda: [relu(), max_pool1d(2, padding="same")], (7, 3)),
    (lambda: [conv2d(3, 2, padding="same"), relu(), max_pool2d(2), relu(),
              max_pool2d(2, padding="same")], (6, 6, 2)),
])
def test_relu_then_max_pool_gives_exactly_the_results_of_the_written_order(build, in_shape, dtype):
    layers = build()
    model = serial(*layers)
    params, state, out_shape = model.init(KEY, in_shape)
    params = tree.map(lambda a: _int_valued(a.shape, 7, dtype, -1, 2), params)  # integer weights
    x = read_only(_int_valued((5,) + in_shape, 3, dtype))
    dy = read_only(_int_valued((5,) + out_shape, 4, dtype, -3, 4))
    want_y, want_grads, want_dx = _in_written_order(layers, params, x, dy)
    y, _, pullback = model.vjp(params, state, x)
    grads, dx = pullback(dy)
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
    assert list(grads) == list(want_grads)
    for a, b in zip(tree.leaves(grads), tree.leaves(want_grads)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.apply(params, state, x), want_y)
    assert np.count_nonzero(want_dx) > 0 and np.count_nonzero(want_y == 0) > 0  # ties were there


def test_a_max_pool_after_a_relu_sees_the_relus_input_and_errors_still_name_the_relu():
    seen = []
    pool = max_pool2d(2)

    def spy_vjp(params, state, x, **kw):
        seen.append(x)
        return pool.vjp_fn(params, state, x, **kw)

    model = serial(dense(4), relu(), pool.replace(vjp_fn=spy_vjp))
    params, state, _ = model.init(KEY, (2, 2, 3))
    x = _x((3, 2, 2, 3))
    y, _, _ = model.vjp(params, state, x)
    assert seen[0].min() < 0                       # the pool got the dense output, before the relu
    assert y.shape == (3, 1, 1, 4) and y.min() >= 0

    pair = serial(relu(), max_pool2d(2))
    params, state, _ = pair.init(KEY, (2, 2, 3))
    for bad in (x.astype(np.int64), x.astype(np.int64)[:, 0]):   # the relu objects first
        with pytest.raises(LayerError, match=r"layer 'relu_0' \(relu\): .*floating-point"):
            pair.apply(params, state, bad)
        with pytest.raises(LayerError, match=r"layer 'relu_0' \(relu\): .*floating-point"):
            pair.vjp(params, state, bad)
    with pytest.raises(LayerError, match=r"layer 'max_pool2d_1' \(max_pool2d\): .*rank 4"):
        pair.apply(params, state, x[:, 0])


@pytest.mark.parametrize("in_shape", [(6, 6, 2), (5, 7, 1)])
def test_conv_relu_max_pool_models_pass_check_layer(in_shape):
    from fundl.layers.reshape import flatten
    model = serial(relu(), max_pool2d(2, padding="same"), conv2d(3, 3, padding="same"), relu(),
                   max_pool2d(2, padding="same"), flatten(), dense(2))
    check_layer(model, in_shape)


@pytest.mark.parametrize("pool", [lambda: max_pool2d(2), lambda: max_pool2d(2, padding=1)])
def test_relu_then_max_pool_match_the_written_order_with_nan_and_inf(pool):
    layers = [relu(), pool()]
    model = serial(*layers)
    params, state, out_shape = model.init(KEY, (4, 4, 2))
    x = _int_valued((3, 4, 4, 2), 5, np.float64)
    x[0, 0, 0, 0] = np.nan                      # a NaN window
    x[1, :2, :2, 1] = -np.inf                   # a window of -inf only
    x[2, 2:, 2:, 0] = np.inf                    # a window of +inf ties
    x = read_only(x)
    dy = read_only(_int_valued((3,) + out_shape, 6, np.float64, -3, 4))
    want_y, want_grads, want_dx = _in_written_order(layers, params, x, dy)
    y, _, pullback = model.vjp(params, state, x)
    _, dx = pullback(dy)
    np.testing.assert_array_equal(y, want_y)     # NaN where the written order has NaN
    np.testing.assert_array_equal(dx, want_dx)
    assert np.isnan(y).any() and np.isinf(y).any()




# --- validation once per signature, errors located at the entry ---------------------------

def test_params_are_checked_once_per_call_not_once_per_combinator(monkeypatch):
    """The exact test of the params runs once per model call, at the entry: nested
    combinators check nothing (on 76c14af the example transformer's params guard ran
    1 + 4 x blocks times per step)."""
    from fundl import validate
    calls = []
    real = validate.TreeSpec.matches_exactly
    monkeypatch.setattr(validate.TreeSpec, "matches_exactly",
                        lambda self, t: calls.append(1) or real(self, t))
    block = lambda: fl.residual(fl.serial(fl.layer_norm(), fl.dense(8), fl.relu()))  # noqa: E731
    model = serial(dense(8), block(), block(), block(), dense(2))
    params, state, _ = model.init(KEY, (4,))
    x = _x((3, 4))
    calls.clear()
    model.apply(params, state, x)
    assert len(calls) == 2                                 # params and state, once each
    calls.clear()
    y, _, pullback = model.vjp(params, state, x)
    pullback(np.ones_like(y))
    assert len(calls) == 2
    step = fl.make_step(model, fl.losses.mse, fl.optim.adam())
    ts = fl.TrainState.create(KEY, model, fl.optim.adam(), (4,))
    calls.clear()
    ts, _ = step(ts, (x, _x((3, 2))), 1e-3)                # a train state it did not make
    first = len(calls)
    calls.clear()
    for _ in range(3):
        ts, _ = step(ts, (x, _x((3, 2))), 1e-3)            # its own: trusted
    assert first == 2 and calls == []


def test_a_bad_param_is_named_by_its_path_at_any_depth():
    model = serial(dense(8), residual(serial(dense(8), relu())), dense(2))
    params, state, _ = model.init(KEY, (4,))
    bad = tree.map(lambda a: a, params)
    bad["residual_1"]["serial_0"]["dense_0"]["b"] = np.zeros((1, 8), np.float32)
    with pytest.raises(fl.validate.SpecError,
                       match=r"params/residual_1/serial_0/dense_0/b: expected shape \(8,\), "
                             r"got shape \(1, 8\)"):
        model.apply(bad, state, _x((3, 4)))
    lone = dense(3)
    p, s, _ = lone.init(KEY, (4,))
    with pytest.raises(fl.validate.SpecError, match="missing keys: params/b"):
        lone.apply({"w": p["w"]}, s, _x((2, 4)))           # a lone layer is checked too
    with pytest.raises(fl.validate.SpecError, match=r"params/b: expected shape \(3,\)"):
        lone.apply({"w": p["w"], "b": np.zeros((2, 3), np.float32)}, s, _x((2, 4)))


def test_an_error_anywhere_names_the_failing_layer_and_other_errors_get_a_note():
    def boom():
        def vjp(params, x):
            raise ZeroDivisionError("boom")
        return stateless_layer("boom", lambda k, s: ({}, s), lambda p, x: 1 / 0, vjp)

    model = serial(fl.fan_out(2), parallel(relu(), serial(tanh(), boom())))
    params, state, _ = model.init(KEY, (2,))
    with pytest.raises(ZeroDivisionError) as info:
        model.vjp(params, state, _x((2, 2)))
    assert "in layer 'parallel_1/serial_1/boom_1' (boom)" in "\n".join(info.value.__notes__)
    model2 = parallel(relu(), serial(tanh(), dense(2)))
    params2, state2, _ = model2.init(KEY, ((3,), (3,)))
    y, _, pullback = model2.vjp(params2, state2, (_x((2, 3)), _x((2, 3))))
    with pytest.raises(LayerError, match=r"the pullback's dy must match the output y\[1\]: "
                                         r"expected shape \(2, 2\)"):
        pullback((np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)))
    with pytest.raises(LayerError, match=r"layer 'dense_0' \(dense\): expected an input shape "
                                         r"\(a tuple of ints\), got \(\(3,\), \(3,\)\)"):
        serial(dense(3), relu()).init(KEY, ((3,), (3,)))


def test_repr_reads_like_the_code_and_shapes_show_the_params():
    model = serial(dense(16), relu(), dense(10))
    assert repr(model) == "serial(dense(16), relu(), dense(10))"
    assert len(repr(model)) < 300 and "0x" not in repr(model)
    assert repr(fl.conv2d(8, 3, stride=2, padding="same")) == \
        "conv2d(8, 3, stride=2, padding='same')"
    assert repr(fl.dense(8, name="head")) == "dense(8, name='head')"
    assert repr(fl.dense(4, dtype=np.float64)) == "dense(4, dtype=np.float64)"
    assert repr(fl.residual(fl.eval_mode(fl.batch_norm(momentum=0.9)))) == \
        "residual(eval_mode(batch_norm(momentum=0.9)))"
    params, _, _ = model.init(KEY, (8,))
    assert repr(tree.shapes(params)) == ("{'dense_0': {'w': f32[8,16], 'b': f32[16]}, "
                                         "'relu_1': {}, 'dense_2': {'w': f32[16,10], 'b': f32[10]}}")


# --- eval mode -----------------------------------------------------------------------------

def _cnn_bn_dropout():
    from fundl.layers.reshape import flatten
    from fundl.layers.dropout import dropout
    return serial(conv2d(3, 3, padding="same"), fl.batch_norm(momentum=0.8), relu(),
                  dropout(0.3), max_pool2d(2), flatten(), dense(4))


def test_eval_mode_vjp_is_apply_bit_for_bit_and_its_pullback_is_exact():
    model = _cnn_bn_dropout()
    params, state, _ = model.init(KEY, (6, 6, 2))
    x = _x((3, 6, 6, 2))
    # trained-looking statistics, so that eval mode is not the identity's special case
    state = tree.map(lambda a: a, state)
    state["batch_norm_1"] = {"mean": _x((3,), seed=5) * 0.5,
                             "var": np.abs(_x((3,), seed=6)) + 0.5}
    y, new_state, pullback = model.vjp(params, state, x, key=KEY, train=False)
    assert np.array_equal(y, model.apply(params, state, x))
    assert new_state is state or tree.all_equal(new_state, state)
    assert not np.array_equal(y, model.vjp(params, state, x, key=KEY)[0])   # training differs
    result = fl.check_vjp(model, (6, 6, 2), params=params, state=state, train=False, batch=2)
    assert result.max_error < 1e-6
    assert {"x", "params/conv2d_0/w", "params/batch_norm_1/scale", "params/batch_norm_1/bias",
            "params/dense_6/w"} <= set(result.errors)


def test_eval_mode_keeps_the_statistics_of_its_body_while_its_params_train():
    body = serial(dense(6), fl.batch_norm(momentum=0.5), relu())
    model = serial(fl.eval_mode(body), dense(2))
    opt = fl.optim.sgd()
    ts = fl.TrainState.create(KEY, model, opt, (4,))
    step = fl.make_step(model, fl.losses.mse, opt)
    stats = ts.state["eval_mode_0"]["batch_norm_1"]
    w0 = ts.params["eval_mode_0"]["dense_0"]["w"]
    for i in range(5):
        ts, _ = step(ts, (_x((8, 4), seed=i), _x((8, 2), seed=10 + i)), 0.1)
    assert tree.all_equal(ts.state["eval_mode_0"]["batch_norm_1"], stats)   # bit for bit
    assert not np.array_equal(ts.params["eval_mode_0"]["dense_0"]["w"], w0)  # params moved
    plain = serial(body, dense(2))   # without eval_mode the statistics move
    ts2 = fl.TrainState.create(KEY, plain, opt, (4,))
    ts2, _ = fl.make_step(plain, fl.losses.mse, opt)(ts2, (_x((8, 4)), _x((8, 2))), 0.1)
    assert not tree.all_equal(ts2.state["serial_0"]["batch_norm_1"], stats)
    check_layer(fl.eval_mode(serial(dense(3), fl.batch_norm(), fl.dropout(0.5))), (4,))


def test_value_and_grad_gives_the_deployed_models_input_gradient():
    model = _cnn_bn_dropout()
    params, state, _ = model.init(KEY, (6, 6, 2))
    x, y = _x((3, 6, 6, 2)), np.array([0, 3, 1])
    value, dparams, dx = fl.value_and_grad(model, fl.losses.softmax_cross_entropy,
                                           params, state, x, y)
    out = model.apply(params, state, x)
    assert value == pytest.approx(float(fl.losses.softmax_cross_entropy(out, y)))
    _, dout = fl.losses.softmax_cross_entropy.value_and_grad(out, y)
    _, _, pullback = model.vjp(params, state, x, train=False)
    want_dparams, want_dx = pullback(dout)
    assert np.array_equal(dx, want_dx) and tree.all_equal(dparams, want_dparams)


# --- sharing ---------------------------------------------------------------------------------

def test_a_shared_encoder_has_one_set_of_params_and_the_sum_of_its_uses_gradients():
    enc = fl.shared(serial(dense(4), tanh()))
    siamese = serial(fl.parallel(enc, enc), fl.fan_in_concat(), dense(1))
    params, state, _ = siamese.init(KEY, ((3,), (3,)))
    assert params["parallel_0"]["shared_1"] == {}          # the second use holds nothing
    assert tree.size(params) == (3 * 4 + 4) + (8 + 1)
    a, b = _x((5, 3)), _x((5, 3), seed=2)
    y, _, pullback = siamese.vjp(params, state, (a, b))
    grads, _ = pullback(np.ones_like(y))
    # the same function with two copies of the encoder's params: its gradients, summed
    twin = serial(fl.parallel(serial(dense(4), tanh()), serial(dense(4), tanh())),
                  fl.fan_in_concat(), dense(1))
    enc_params = params["parallel_0"]["shared_0"]
    twin_params = {"parallel_0": {"serial_0": enc_params, "serial_1": enc_params},
                   "fan_in_concat_1": {}, "dense_2": params["dense_2"]}
    y2, _, pullback2 = twin.vjp(twin_params, state | {"parallel_0": {"serial_0": {
        "dense_0": {}, "tanh_1": {}}, "serial_1": {"dense_0": {}, "tanh_1": {}}}}, (a, b))
    g2, _ = pullback2(np.ones_like(y2))
    assert np.array_equal(y, y2)
    want = tree.map(np.add, g2["parallel_0"]["serial_0"], g2["parallel_0"]["serial_1"])
    assert tree.all_equal(grads["parallel_0"]["shared_0"], want)
    assert grads["parallel_0"]["shared_1"] == {}
    result = fl.check_vjp(siamese, ((3,), (3,)))           # float64 finite differences
    assert result.max_error < 1e-7
    assert "params/parallel_0/shared_0/dense_0/w" in result.errors
    check_layer(siamese, ((3,), (3,)))


def test_a_tied_output_head_trains_with_the_embeddings_one_matrix():
    emb = fl.shared(fl.embedding(11, 6))
    lm = serial(emb, fl.layer_norm(), fl.tied_output(emb))
    params, state, out_shape = lm.init(KEY, (5,))
    assert out_shape == (5, 11) and params["tied_output_2"] == {}
    assert [p for p in tree.paths(params) if p.endswith("/w")] == ["shared_0/w"]
    ids = (np.arange(15).reshape(3, 5) * 7) % 11
    assert fl.check_vjp(lm, x=ids).max_error < 1e-7       # the table's two uses, summed
    opt = fl.optim.adam()
    ts = fl.TrainState.create(KEY, lm, opt, (5,))
    step = fl.make_step(lm, fl.losses.softmax_cross_entropy, opt)
    losses = []
    for _ in range(30):
        ts, m = step(ts, (ids, np.roll(ids, -1, axis=1)), 0.05)
        losses.append(m["loss"])
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(TypeError, match=r"tied_output needs fl.shared\(fl.embedding"):
        fl.tied_output(fl.embedding(11, 6))


def test_reusing_a_layer_with_params_without_sharing_is_an_error_that_says_how_to_share():
    d = dense(4)
    with pytest.raises(ValueError, match=r"one dense Layer object is used at 'dense_0' and at "
                                         r"'dense_2'.*fl.shared\(dense\(\.\.\.\)\).*build the "
                                         r"layer twice"):
        serial(d, relu(), d).init(KEY, (4,))
    r = relu()
    serial(dense(3), r, dense(3), r).init(KEY, (4,))      # a layer without params may repeat
    with pytest.raises(ValueError, match="nested sharing is not supported"):
        inner = fl.shared(dense(2))
        fl.shared(serial(inner, inner))
        _ = plan.of(serial(fl.shared(serial(inner, inner)))).groups
