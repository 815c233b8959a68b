"""Random corruptions of a model's params and state: every one ends in fundl's own errors.

A corrupted tree (a leaf of another shape or dtype, a key removed, renamed or added, a
container of another kind, a leaf that is not an array) given to apply / vjp / the step
must raise :class:`fundl.validate.SpecError` (or a :class:`fundl.LayerError`), never run
silently with different values and never fail with a bare numpy or Python error.
"""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a test extra")
from hypothesis import given, settings, strategies as st  # noqa: E402

import fundl as fl  # noqa: E402
from fundl.validate import SpecError  # noqa: E402

MODELS = {
    "mlp": (lambda: fl.serial(fl.dense(4), fl.relu(), fl.dense(3)), (5,)),
    "cnn": (lambda: fl.serial(fl.conv2d(2, 3, padding="same"), fl.batch_norm(), fl.relu(),
                              fl.flatten(), fl.dense(3)), (4, 4, 1)),
    "res": (lambda: fl.serial(fl.dense(4), fl.residual(fl.serial(fl.dense(4), fl.tanh())),
                              fl.layer_norm(), fl.dense(2)), (3,)),
    "rnn": (lambda: fl.serial(fl.lstm(3), fl.flatten(), fl.dense(2)), (4, 2)),
}
BUILT = {name: (build(), shape) for name, (build, shape) in MODELS.items()}


def _paths(t, prefix=()):
    """(path tuple, container) pairs for every leaf of a nested dict tree."""
    out = []
    for k, v in t.items():
        if isinstance(v, dict):
            out.append((prefix + (k,), v))
            out.extend(_paths(v, prefix + (k,)))
    return out


def _copy(t):
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in t.items()}


CORRUPTIONS = ("shape", "dtype", "drop", "rename", "extra", "to_list", "to_scalar", "to_int")


def _corrupt(tree, kind, pick):
    """A copy of ``tree`` with one corruption; None if the tree has no place for it."""
    tree = _copy(tree)
    containers = [c for _, c in _paths(tree)] + [tree]
    with_leaves = [c for c in containers if any(isinstance(v, np.ndarray) for v in c.values())]
    if kind in ("extra",):
        target = containers[pick % len(containers)]
        target["surplus"] = np.zeros(2, np.float32)
        return tree
    if kind == "drop" and not with_leaves:
        target = containers[pick % len(containers)]
        if not target:
            return None
        del target[sorted(target)[0]]
        return tree
    if not with_leaves:
        return None
    target = with_leaves[pick % len(with_leaves)]
    keys = sorted(k for k, v in target.items() if isinstance(v, np.ndarray))
    k = keys[(pick // len(with_leaves)) % len(keys)]
    a = target[k]
    if kind == "shape":
        target[k] = np.zeros(a.shape + (2,), a.dtype) if a.ndim < 3 else a.reshape(-1)
    elif kind == "dtype":
        target[k] = a.astype(np.float64)
    elif kind == "drop":
        del target[k]
    elif kind == "rename":
        target[k + "_x"] = target.pop(k)
    elif kind == "to_list":
        target[k] = [a]
    elif kind == "to_scalar":
        target[k] = 1.5
    elif kind == "to_int":
        target[k] = a.astype(np.int32)
    return tree


@settings(max_examples=120, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(BUILT)), kind=st.sampled_from(CORRUPTIONS),
       where=st.sampled_from(("params", "state")), pick=st.integers(0, 50),
       call=st.sampled_from(("apply", "vjp")))
def test_a_corrupted_tree_raises_fundls_own_error(name, kind, where, pick, call):
    model, shape = BUILT[name]
    params, state, _ = model.init(fl.random.key(0), shape)
    x = fl.random.normal(fl.random.key(1), (2,) + shape)
    bad = _corrupt(params if where == "params" else state, kind, pick)
    if bad is None:
        return
    p, s = (bad, state) if where == "params" else (params, bad)
    with pytest.raises((SpecError, fl.LayerError)):
        if call == "apply":
            model.apply(p, s, x)
        else:
            model.vjp(p, s, x, key=fl.random.key(2))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(BUILT)), kind=st.sampled_from(CORRUPTIONS),
       pick=st.integers(0, 50))
def test_a_corrupted_train_state_is_refused_by_the_step(name, kind, pick):
    model, shape = BUILT[name]
    opt = fl.optim.adam()
    ts = fl.TrainState.create(fl.random.key(0), model, opt, shape)
    bad = _corrupt(ts.params, kind, pick)
    if bad is None:
        return
    step = fl.make_step(model, fl.losses.mse, opt)
    x = fl.random.normal(fl.random.key(1), (2,) + shape)
    y = np.zeros((2,) + model.init(fl.random.key(0), shape)[2], np.float32)
    with pytest.raises((SpecError, fl.LayerError)):
        step(ts._replace(params=bad), (x, y), 1e-3)
