import numpy as np
import pytest

import fundl as fl
from fundl import stateless_layer
from fundl.testing import ContractError, check_layer, read_only


def layer_from(apply, vjp=None, out_shape=None, name="l"):
    def init(key, in_shape):
        return {}, (out_shape or in_shape)
    return stateless_layer(name, init, apply, vjp or (lambda p, x: (apply(p, x), lambda dy: ({}, dy))))


def test_read_only_copies():
    t = {"a": np.ones(2)}
    r = read_only(t)
    assert not r["a"].flags.writeable and t["a"].flags.writeable


def test_check_layer_catches_wrong_out_shape():
    with pytest.raises(ContractError, match="out_shape"):
        check_layer(layer_from(lambda p, x: x, out_shape=(7,)), (3,))


def test_check_layer_catches_upcast():
    with pytest.raises(ContractError, match="float32 in gave"):
        check_layer(layer_from(lambda p, x: x * np.float64(2.0)), (3,))


def test_check_layer_catches_mutation_of_dy():
    def vjp(p, x):
        def pullback(dy):
            dy *= 1.0  # writes into a received array
            return {}, dy
        return x * 1.0, pullback
    with pytest.raises(ValueError):  # numpy: assignment destination is read-only
        check_layer(layer_from(lambda p, x: x * 1.0, vjp), (3,))


def test_check_layer_catches_nondeterminism():
    counter = {"n": 0}

    def apply(p, x):
        counter["n"] += 1
        return x + np.float32(counter["n"])
    with pytest.raises(ContractError, match="deterministic"):
        check_layer(layer_from(apply), (3,))


def test_check_layer_passes_builtins():
    assert check_layer(fl.serial(fl.dense(4), fl.relu(), fl.dense(2), fl.sigmoid()), (3,)).passed


def test_check_layer_catches_a_need_dx_path_that_changes_dparams():
    def init(key, in_shape):
        return {"a": np.ones(in_shape, np.float32)}, in_shape

    def apply(p, x):
        return x * p["a"]

    def vjp(p, x, need_dx=True):
        def pullback(dy):
            da = (dy * x).sum(0)
            if not need_dx:
                da = da * 2  # the skip path forgot something
            return {"a": da}, (dy * p["a"] if need_dx else None)
        return apply(p, x), pullback

    with pytest.raises(ContractError, match="need_dx=False"):
        check_layer(stateless_layer("skip", init, apply, vjp, takes=("need_dx",)), (3,))


def _square(fresh, keep_y_view=False, cached_dx=None):
    """y = x * x with a vjp that may lie about what it declares fresh."""
    def init(key, in_shape):
        return {}, in_shape

    def apply(p, x):
        return x * x

    def vjp(p, x):
        y = x * x
        saved = y if keep_y_view else None

        def pullback(dy):
            if saved is not None:          # uses its own output: y must not be donated
                return {}, 2 * np.sqrt(saved) * np.sign(x) * dy
            if cached_dx is not None:      # returns the same array at every call
                cached_dx[...] = 2 * x * dy
                return {}, cached_dx
            return {}, 2 * x * dy
        return y, pullback

    return stateless_layer("square", init, apply, vjp, fresh=fresh)


def test_check_layer_accepts_honest_fresh_declarations():
    check_layer(_square(fresh=("y", "dx")), (4,))


def test_check_layer_catches_a_fresh_output_the_pullback_still_uses():
    with pytest.raises(ContractError, match="overwriting the output it declares fresh"):
        check_layer(_square(fresh=("y",), keep_y_view=True), (4,), gradcheck=False)


def test_check_layer_catches_a_fresh_dx_that_is_a_cached_array():
    with pytest.raises(ContractError, match="declares '(y|dx)' fresh"):
        check_layer(_square(fresh=("dx",), cached_dx=np.zeros((3, 4), np.float32)), (4,),
                    gradcheck=False)


def test_check_layer_catches_a_fresh_output_that_is_the_input():
    # y = x itself declared fresh: check_layer's x is read-only, caught before any write
    ident = stateless_layer("ident", lambda k, s: ({}, s), lambda p, x: x,
                            lambda p, x: (x, lambda dy: ({}, dy * 1.0)), fresh=("y",))
    with pytest.raises(ContractError, match="read-only or shares memory"):
        check_layer(ident, (4,), gradcheck=False)


def test_check_layer_catches_a_donation_path_that_changes_results():
    def init(key, in_shape):
        return {}, in_shape

    def vjp(p, x, dy_donated=False):
        def pullback(dy):
            return {}, (dy * 3.0 if dy_donated else dy * 2.0)  # the donated path is wrong
        return 2.0 * x, pullback

    with pytest.raises(ContractError, match="dy_donated"):
        check_layer(stateless_layer("bad", init, lambda p, x: 2.0 * x, vjp, takes=("dy_donated",)),
                    (3,), gradcheck=False)


def _scaled(fresh, grad_is_param=False, shared=False):
    """y = a * x + c with params a, c of shape (in,); dparams may lie about being fresh
    (``shared`` gives a wrong gradient for c too: only the fresh check runs on it)."""
    def init(key, in_shape):
        return {"a": np.ones(in_shape, np.float32), "c": np.zeros(in_shape, np.float32)}, in_shape

    def apply(p, x):
        return p["a"] * x + p["c"]

    def vjp(p, x):
        def pullback(dy):
            da = (dy * x).sum(0)
            if grad_is_param:
                return {"a": da, "c": p["c"]}, dy * p["a"]   # "gradient" aliases a param
            dc = dy.sum(0)
            if shared:                                        # one array for both gradients
                return {"a": da, "c": da}, dy * p["a"]
            return {"a": da, "c": dc}, dy * p["a"]
        return apply(p, x), pullback

    return stateless_layer("scaled", init, apply, vjp, fresh=fresh)


def test_check_layer_accepts_honest_fresh_dparams():
    check_layer(_scaled(fresh=("dparams",)), (3,))


def test_check_layer_catches_fresh_dparams_that_alias_a_param_or_each_other():
    with pytest.raises(ContractError, match="declares 'dparams' fresh"):
        check_layer(_scaled(fresh=("dparams",), grad_is_param=True), (3,), gradcheck=False)
    with pytest.raises(ContractError, match="declares 'dparams' fresh"):
        check_layer(_scaled(fresh=("dparams",), shared=True), (3,), gradcheck=False)


def test_check_layer_says_how_much_apply_and_vjp_differ_and_that_it_must_be_exact():
    def init(key, in_shape):
        return {}, in_shape

    def apply(p, x):
        return x * 2.0

    def vjp(p, x):
        return x * 2.0 + 1e-3, lambda dy: ({}, dy * 2.0)

    with pytest.raises(ContractError, match=r"max abs difference 0\.001.*bit for bit"):
        check_layer(stateless_layer("off", init, apply, vjp), (3,), gradcheck=False)
