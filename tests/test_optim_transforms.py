"""Gradient transforms, chain and accumulation: exact expected values."""

import numpy as np
import pytest

from fundl import optim, tree
from fundl.testing import read_only


def _g(a, c):
    return {"a": np.array(a, dtype=np.float64), "b": {"c": np.array(c, dtype=np.float64)}}


def _update(t, grads, params=None):
    params = grads if params is None else params
    return t.update(params, grads, t.init(params))[0]


def _assert_tree_close(got, want, atol=1e-15):
    tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=atol), got, want)


def test_clip_by_global_norm_rescales_above_the_limit():
    grads = _g([3.0, 0.0, 0.0], [[0.0, 4.0], [0.0, 0.0]])          # global norm 5
    _assert_tree_close(_update(optim.clip_by_global_norm(1.0), grads),
                       _g([0.6, 0.0, 0.0], [[0.0, 0.8], [0.0, 0.0]]))
    _assert_tree_close(_update(optim.clip_by_global_norm(2.5), grads),
                       _g([1.5, 0.0, 0.0], [[0.0, 2.0], [0.0, 0.0]]))


def test_clip_by_global_norm_keeps_gradients_at_or_below_the_limit():
    grads = _g([3.0, 0.0, 0.0], [[0.0, 4.0], [0.0, 0.0]])
    for limit in (5.0, 10.0):
        assert tree.all_equal(_update(optim.clip_by_global_norm(limit), grads), grads)


def test_clip_by_value():
    grads = _g([-3.0, 0.5, 7.0], [[-1.0, 2.0], [2.5, -0.25]])
    _assert_tree_close(_update(optim.clip_by_value(-1.0, 2.0), grads),
                       _g([-1.0, 0.5, 2.0], [[-1.0, 2.0], [2.0, -0.25]]))
    with pytest.raises(ValueError):
        optim.clip_by_value(1.0, -1.0)


def test_add_weight_decay_with_mask_on_paths():
    params = {"dense_0": {"w": np.array([[1.0, -2.0]]), "b": np.array([3.0, 4.0])},
              "dense_1": {"w": np.array([[0.5], [-0.5]])}}
    grads = {"dense_0": {"w": np.array([[0.1, 0.2]]), "b": np.array([0.3, 0.4])},
             "dense_1": {"w": np.array([[1.0], [1.0]])}}
    t = optim.add_weight_decay(0.5, mask=lambda path: path.endswith("/w"))
    got = _update(t, grads, params)
    _assert_tree_close(got, {"dense_0": {"w": np.array([[0.6, -0.8]]), "b": np.array([0.3, 0.4])},
                             "dense_1": {"w": np.array([[1.25], [0.75]])}})
    # without a mask every leaf is decayed
    got = _update(optim.add_weight_decay(0.5), grads, params)
    np.testing.assert_allclose(got["dense_0"]["b"], [1.8, 2.4], rtol=0, atol=1e-15)


def test_add_weight_decay_in_a_chain_with_sgd():
    params = {"w": np.array([2.0, -4.0]), "b": np.array([1.0])}
    grads = {"w": np.array([1.0, 1.0]), "b": np.array([1.0])}
    opt = optim.chain(optim.add_weight_decay(0.1, mask=lambda p: p == "w"), optim.sgd())
    new, state = opt.update(params, grads, opt.init(params), 0.5)
    # w <- w - 0.5 (g + 0.1 w) ;  b <- b - 0.5 g
    _assert_tree_close(new, {"w": np.array([2.0 - 0.5 * 1.2, -4.0 - 0.5 * 0.6]), "b": np.array([0.5])})
    assert state == ({}, {})


def test_chain_of_transforms_and_clipped_optimizer():
    grads = _g([3.0, 0.0, 0.0], [[0.0, 4.0], [0.0, 0.0]])
    t = optim.chain(optim.clip_by_global_norm(1.0), optim.scale(10.0), optim.clip_by_value(-5.0, 5.0))
    assert isinstance(t, optim.GradientTransform)
    _assert_tree_close(_update(t, grads), _g([5.0, 0.0, 0.0], [[0.0, 5.0], [0.0, 0.0]]))

    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.momentum(0.5))
    assert isinstance(opt, optim.Optimizer)
    params = _g([0.0, 0.0, 0.0], [[0.0, 0.0], [0.0, 0.0]])
    state = opt.init(params)
    params, state = opt.update(params, grads, state, 1.0)     # v = clipped g
    params, state = opt.update(params, grads, state, 1.0)     # v = 0.5 v + clipped g
    _assert_tree_close(params, _g([-0.6 - 0.9, 0.0, 0.0], [[0.0, -0.8 - 1.2], [0.0, 0.0]]))
    assert state[0] == {} and isinstance(state[1], optim.TraceState)
    with pytest.raises(TypeError):
        optim.chain(optim.adam(), optim.clip_by_value(-1, 1))


def test_accumulate_steps_every_k_calls_with_the_mean_gradient():
    opt = optim.accumulate(optim.sgd(), 3)
    p0 = {"x": np.array([1.0, 2.0])}
    gs = [{"x": np.array([1.0, 0.0])}, {"x": np.array([2.0, 3.0])}, {"x": np.array([6.0, -9.0])},
          {"x": np.array([3.0, 3.0])}, {"x": np.array([0.0, 3.0])}, {"x": np.array([0.0, 0.0])}]
    lrs = [9.0, 9.0, 0.5, 9.0, 9.0, 1.0]  # only every third call's lr is used
    params, state = p0, opt.init(p0)
    seen = []
    for g, lr in zip(gs, lrs):
        params, state = opt.update(params, g, state, lr)
        seen.append(params["x"].copy())
    np.testing.assert_array_equal(seen[0], [1.0, 2.0])
    np.testing.assert_array_equal(seen[1], [1.0, 2.0])
    np.testing.assert_allclose(seen[2], [1.0 - 0.5 * 3.0, 2.0 - 0.5 * (-2.0)], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(seen[3], seen[2])
    np.testing.assert_array_equal(seen[4], seen[2])
    np.testing.assert_allclose(seen[5], seen[2] - 1.0 * np.array([1.0, 2.0]), rtol=0, atol=1e-15)
    assert int(state.count) == 0 and tree.all_equal(state.grad_sum, {"x": np.zeros(2)})


def test_accumulate_advances_the_inner_state_only_on_steps():
    opt = optim.accumulate(optim.adam(), 2)
    p = {"x": np.array([1.0])}
    state = opt.init(p)
    p, state = opt.update(p, {"x": np.array([2.0])}, state, 0.1)
    assert int(state.inner.count) == 0 and int(state.count) == 1
    np.testing.assert_array_equal(state.grad_sum["x"], [2.0])
    p, state = opt.update(p, {"x": np.array([4.0])}, state, 0.1)
    assert int(state.inner.count) == 1 and int(state.count) == 0
    np.testing.assert_allclose(p["x"], [1.0 - 0.1 * 3.0 / (3.0 + 1e-8)], rtol=0, atol=1e-15)  # lr g/(|g|+eps)
    np.testing.assert_allclose(state.inner.mu["x"], [0.1 * 3.0], rtol=0, atol=1e-15)


def test_accumulate_with_k_1_equals_the_inner_optimizer():
    p = _g([1.0, 2.0, 3.0], [[1.0, 0.0], [0.0, 1.0]])
    grads = [_g([1.0, -1.0, 2.0], [[0.5, 0.5], [1.0, -2.0]]), _g([0.5, 1.0, -1.0], [[1.0, 0.0], [0.0, 1.0]])]
    a, b = optim.accumulate(optim.adam(), 1), optim.adam()
    pa, sa, pb, sb = p, a.init(p), p, b.init(p)
    for g in grads:
        pa, sa = a.update(pa, g, sa, 0.1)
        pb, sb = b.update(pb, g, sb, 0.1)
    assert tree.all_equal(pa, pb) and tree.all_equal(sa.inner, sb)
    with pytest.raises(ValueError):
        optim.accumulate(optim.sgd(), 0)


@pytest.mark.parametrize("t", [optim.clip_by_global_norm(1.0), optim.clip_by_value(-1.0, 1.0),
                               optim.add_weight_decay(0.1, mask=lambda p: "c" in p), optim.scale(2.0)])
def test_transforms_are_pure_and_keep_float32(t):
    grads = read_only(tree.cast(_g([3.0, -2.0, 0.5], [[0.0, 4.0], [1.0, -1.0]]), np.float32))
    params = read_only(tree.cast(_g([1.0, 1.0, 1.0], [[2.0, 2.0], [2.0, 2.0]]), np.float32))
    out, state = t.update(params, grads, t.init(params))
    assert {x.dtype for x in tree.leaves(out)} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(grads["a"], [3.0, -2.0, 0.5])
    np.testing.assert_array_equal(params["a"], [1.0, 1.0, 1.0])
