"""Every built-in layer on a batch of 0 examples (a rank with no share of a global batch).

``apply`` and ``vjp`` must give an empty output of the right shape and dtype, ``vjp`` the
state unchanged in shape, the pullback zero parameter gradients of the params' shapes and
an empty ``dx`` (``None`` in the slots of integer inputs); batch norm in training keeps its
running statistics (an empty batch has none).  The layers are the generated catalogue of
:mod:`layer_cases` (every exported builder).
"""

from __future__ import annotations

import numpy as np
import pytest

import fundl as fl
from fundl import random, tree

from layer_cases import CASES, f32

#: Cases whose training forward on an empty batch returns the state it was given.
KEEPS_STATE = {"batch_norm", "batch_norm(axis=1)"}


def _leaves(t):
    return [a for a in tree.leaves(t) if a is not None]


@pytest.mark.parametrize("case_id", sorted(CASES))
@pytest.mark.parametrize("n", [2, 3])
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(case_id, n):
    layer, in_shape, x = CASES[case_id].make(0, n)
    params, state, out_shape = layer.init(random.key(0), in_shape)
    y = layer.apply(params, state, x)
    y_shapes = tree.map(lambda a: a.shape[1:], y)
    assert fl.checks.normalize_shapes(y_shapes) == fl.checks.normalize_shapes(out_shape)
    assert all(a.shape[0] == 0 and a.dtype == np.float32 for a in _leaves(y))
    y_t, new_state, pullback = layer.vjp(params, state, x, key=random.key(1))
    if case_id in KEEPS_STATE:
        assert tree.all_equal(new_state, state)
    assert tree.all_equal(y_t, y) or "dropout" in case_id
    assert tree.map(np.shape, new_state) == tree.map(np.shape, state)
    dparams, dx = pullback(tree.map(lambda a: f32(a.shape, 3), y_t))
    assert tree.map(np.shape, dparams) == tree.map(np.shape, params)
    assert all(not np.any(g) and g.dtype == np.float32 for g in _leaves(dparams))
    x_float = tree.map(lambda a: a if a.dtype.kind == "f" else None, x)
    assert tree.map(np.shape, dx) == tree.map(np.shape, x_float)
