import numpy as np
import pytest

import fundl as fl
from fundl.core import stateless_layer
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
        check_layer(stateless_layer("skip", init, apply, vjp), (3,))
