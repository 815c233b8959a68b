from typing import NamedTuple

import numpy as np
import pytest

from fundl import tree


class Pair(NamedTuple):
    mu: object
    count: object


def sample():
    return {"dense_0": {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)},
            "relu_1": {},
            "list": [np.arange(2.0), (np.float64(3.0), np.array([1], np.int64))],
            "opt": Pair({"a": np.full(2, 2.0)}, np.array(5))}


def test_flatten_with_paths_readable_and_ordered():
    pairs = tree.flatten_with_paths(sample())
    assert [p for p, _ in pairs] == ["dense_0/w", "dense_0/b", "list/0", "list/1/0",
                                     "list/1/1", "opt/mu/a", "opt/count"]
    assert tree.paths(sample()) == [p for p, _ in pairs]


def test_flatten_unflatten_round_trip_keeps_containers():
    t = sample()
    leaves, treedef = tree.flatten(t)
    back = tree.unflatten(treedef, leaves)
    assert tree.all_equal(back, t)
    assert isinstance(back["opt"], Pair) and isinstance(back["list"][1], tuple)
    assert back["relu_1"] == {}
    with pytest.raises(tree.TreeError, match="expected 7 leaves"):
        tree.unflatten(treedef, leaves[:-1])


def test_unflatten_from_paths_names_missing_and_extra():
    t = sample()
    pairs = dict(tree.flatten_with_paths(t))
    assert tree.all_equal(tree.unflatten_from_paths(t, pairs), t)
    missing = dict(pairs)
    del missing["dense_0/b"]
    with pytest.raises(tree.TreeError, match="dense_0/b"):
        tree.unflatten_from_paths(t, missing)
    with pytest.raises(tree.TreeError, match="extra/x"):
        tree.unflatten_from_paths(t, {**pairs, "extra/x": 1})


def test_map_over_several_trees():
    a = {"x": np.array([1.0, 2.0]), "y": [np.array(3.0)]}
    b = {"y": [np.array(10.0)], "x": np.array([1.0, 1.0])}  # same keys, other order
    out = tree.map(lambda u, v: u + v, a, b)
    np.testing.assert_array_equal(out["x"], [2.0, 3.0])
    assert float(out["y"][0]) == 13.0
    assert list(out) == ["x", "y"]


def test_map_mismatch_names_first_differing_path():
    a = {"dense_0": {"w": 1, "b": 2}, "dense_1": {"w": 3}}
    b = {"dense_0": {"w": 1, "b": 2}, "dense_1": {"v": 3}}
    with pytest.raises(tree.TreeError, match="'dense_1'"):
        tree.map(lambda u, v: u, a, b)
    with pytest.raises(tree.TreeError, match="'list'.*list of length 2 vs list of length 1"):
        tree.map(lambda u, v: u, {"list": [1, 2]}, {"list": [1]})
    with pytest.raises(tree.TreeError, match="'a/0'"):
        tree.map(lambda u, v: u, {"a": [1]}, {"a": [[1]]})


def test_zeros_like_global_norm_cast_size():
    t = {"a": np.array([3.0, 0.0], np.float32), "b": [np.array([[4.0]], np.float32)],
         "n": np.array([2], np.int64)}
    z = tree.zeros_like(t)
    assert z["a"].dtype == np.float32 and not z["a"].any()
    assert tree.global_norm({"a": t["a"], "b": t["b"]}) == 5.0
    c = tree.cast(t, np.float64)
    assert c["a"].dtype == np.float64 and c["b"][0].dtype == np.float64
    assert c["n"].dtype == np.int64  # integer leaves untouched
    assert tree.size(t) == 4


def test_none_is_an_empty_node():
    assert tree.leaves({"a": None, "b": 1}) == [1]
    assert tree.map(lambda x: x + 1, {"a": None, "b": 1}) == {"a": None, "b": 2}


def test_all_equal_distinguishes_dtype_and_values():
    a = {"w": np.array([1.0, np.nan])}
    assert tree.all_equal(a, {"w": np.array([1.0, np.nan])})
    assert not tree.all_equal(a, {"w": np.array([1.0, np.nan], np.float32)})
    assert not tree.all_equal(a, {"w": np.array([2.0, np.nan])})
    assert not tree.all_equal(a, {"v": np.array([1.0, np.nan])})


def test_map_accepts_dict_subclasses_alongside_dicts():
    from collections import OrderedDict
    out = tree.map(lambda a, b: a + b, {"x": 1, "y": 2}, OrderedDict(y=20, x=10))
    assert out == {"x": 11, "y": 22}


def test_treedef_leaves_of_takes_dict_keys_in_any_order_and_names_a_mismatch():
    t = {"a": np.arange(2.0), "b": {"c": np.ones(3), "d": (np.zeros(1), 4.0)}}
    leaves, treedef = tree.flatten(t)
    other = {"b": {"d": (np.full(1, 7.0), 5.0), "c": np.full(3, 6.0)}, "a": np.full(2, 8.0)}
    got = treedef.leaves_of(other)
    assert [np.asarray(x).tolist() for x in got] == [[8.0, 8.0], [6.0, 6.0, 6.0], [7.0], 5.0]
    assert tree.all_equal(treedef.unflatten(leaves), t)
    with pytest.raises(tree.TreeError, match="'b/d'"):
        treedef.leaves_of({"a": np.ones(2), "b": {"c": np.ones(3), "d": [np.ones(1)]}})
    with pytest.raises(tree.TreeError, match="'b/c'"):
        treedef.leaves_of({"a": np.ones(2), "b": {"c": {"x": np.ones(3)}, "d": (np.ones(1), 1.0)}})


def test_map_with_paths_passes_each_leaf_path():
    t = {"dense_0": {"w": np.ones(2), "b": np.zeros(1)}, "scale": (np.ones(1),)}
    out = tree.map_with_paths(lambda path, a, b: f"{path}:{a.size + b.size}", t, t)
    assert out == {"dense_0": {"w": "dense_0/w:4", "b": "dense_0/b:2"}, "scale": ("scale/0:2",)}


def test_replace_at_builds_new_dicts_along_the_path_and_writes_nothing():
    w, b = np.ones((2, 3)), np.zeros(3)
    params = {"block_0": {"dense_0": {"w": w, "b": b}}, "relu_1": {}}
    new = tree.replace_at(params, ("block_0", "dense_0", "b"), np.full(3, 2.0))
    assert np.array_equal(new["block_0"]["dense_0"]["b"], [2.0, 2.0, 2.0])
    assert new["block_0"]["dense_0"]["w"] is w and new["relu_1"] is params["relu_1"]
    assert params["block_0"]["dense_0"]["b"] is b                      # nothing written
    assert new["block_0"] is not params["block_0"]
    added = tree.replace_at(params, ("block_0", "dense_9"), {"w": w})   # a new last key
    assert list(added["block_0"]) == ["dense_0", "dense_9"] and "dense_9" not in params["block_0"]
    assert tree.replace_at(params, (), 7) == 7
    with pytest.raises(KeyError):
        tree.replace_at(params, ("nope", "w"), w)
