"""fundl.step: TrainState, make_step (checks once per train state, the same results as the
layer calls by hand, gradients handed to an optimizer that reuses their memory), value_and_grad."""

from __future__ import annotations

import numpy as np

import fundl as fl
from fundl import plan, stateless_layer
from fundl import step as step_module
from fundl.step import exclusive_grads


# --- the step hands its gradients to an optimizer that reuses their memory -----------------

def test_exclusive_grads_keeps_fresh_arrays_and_copies_shared_ones():
    fresh = np.ones(3)
    shared_with_params = np.zeros(2)
    owner = np.arange(6.0)
    view = owner[:3]
    grads = {"a": fresh, "b": shared_with_params, "c": owner, "d": view, "e": fresh}
    out = exclusive_grads(grads, ({"w": shared_with_params}, (np.ones(1),)))
    assert out["a"] is not fresh and out["e"] is not fresh  # the same array twice: copied
    assert out["b"] is not shared_with_params and not np.shares_memory(out["b"], shared_with_params)
    assert out["c"] is not owner and out["d"] is not view      # a view of another leaf: both copied
    for k in grads:
        np.testing.assert_array_equal(out[k], grads[k])
    alone = np.ones(4)
    assert exclusive_grads({"x": alone}, ())["x"] is alone     # the common case copies nothing
    frozen = np.ones(2)
    frozen.flags.writeable = False
    assert exclusive_grads({"x": frozen}, ())["x"] is not frozen


def _aliasing_layer(kind, dtype=np.float64):
    """y = x * a (a of shape (d,)); with kind="batch" the pullback's "gradient" is a row of x."""
    def init(key, in_shape):
        return {"a": np.full(in_shape, 0.5, dtype)}, in_shape

    def apply(params, x):
        return x * params["a"]

    def vjp(params, x):
        def pullback(dy):
            true_grad = (dy * x).sum(0)
            if kind == "batch":          # pathological: hands back (a row of) the batch
                grad = x[0]
            else:
                grad = true_grad
            return {"a": grad}, dy * params["a"]
        return apply(params, x), pullback

    return stateless_layer("alias", init, apply, vjp)


def test_make_step_never_writes_into_the_batch_even_if_a_pullback_returns_it():
    model = fl.serial(_aliasing_layer("batch"))
    opt = fl.optim.sgd()
    ts = fl.TrainState.create(fl.random.key(0), model, opt, (3,))
    x = np.arange(6.0).reshape(2, 3)
    y = np.zeros((2, 3))
    x_before = x.copy()
    step = fl.make_step(model, fl.losses.mse, opt)
    ts2, _ = step(ts, (x, y), 0.1)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_allclose(ts2.params["alias_0"]["a"], 0.5 - 0.1 * x_before[0])


def test_donated_sgd_step_equals_the_pure_update():
    model = fl.serial(fl.dense(4), fl.relu(), fl.dense(2))
    opt = fl.optim.sgd()
    ts = fl.TrainState.create(fl.random.key(0), model, opt, (3,))
    x = fl.random.normal(fl.random.key(1), (5, 3))
    y = fl.random.normal(fl.random.key(2), (5, 2))
    params_before = fl.tree.map(np.copy, ts.params)
    ts2, _ = fl.make_step(model, fl.losses.mse, opt)(ts, (x, y), 0.1)
    out, _, pullback = model.vjp(ts.params, ts.state, x)
    grads, _ = pullback(fl.losses.mse.value_and_grad(out, y)[1])
    expected, _ = opt.update(ts.params, grads, {}, 0.1)          # the plain pure update
    assert fl.tree.all_equal(ts2.params, expected)
    assert fl.tree.all_equal(ts.params, params_before)             # old params untouched


def test_make_step_trusts_only_models_that_declare_fresh_gradients(monkeypatch):
    calls = []
    real = step_module.exclusive_grads
    monkeypatch.setattr(step_module, "exclusive_grads",
                        lambda g, keep: calls.append(1) or real(g, keep))
    x = fl.random.normal(fl.random.key(1), (5, 3))
    y = fl.random.normal(fl.random.key(2), (5, 2))
    trusted = fl.serial(fl.dense(4), fl.relu(), fl.dense(2))
    checked = fl.serial(fl.dense(4), _aliasing_layer("plain", np.float32),
                       fl.dense(2))                                          # declares nothing
    assert "dparams" in plan.fresh_results(trusted) \
        and "dparams" not in plan.fresh_results(checked)
    opt = fl.optim.sgd()
    for model, expect_calls in ((trusted, 0), (checked, 1)):
        calls.clear()
        ts = fl.TrainState.create(fl.random.key(0), model, opt, (3,))
        params_before = fl.tree.map(np.copy, ts.params)
        ts2, _ = fl.make_step(model, fl.losses.mse, opt)(ts, (x, y), 0.1)
        assert len(calls) == expect_calls
        out, _, pullback = model.vjp(ts.params, ts.state, x)
        grads, _ = pullback(fl.losses.mse.value_and_grad(out, y)[1])
        assert fl.tree.all_equal(ts2.params, opt.update(ts.params, grads, {}, 0.1)[0])
        assert fl.tree.all_equal(ts.params, params_before)
