"""Every built-in layer on inputs, params, state and ``dy`` in every memory layout.

A layer's results must not depend on how its arrays are stored: for each layer builder
exported by ``fundl`` (the list is generated from ``fundl.__all__``; a new layer without
a case here fails :func:`test_every_exported_layer_builder_has_a_case`), in one or two
small configurations each (multi-input forms too: masked and cross attention, recurrent
layers with lengths and initial states, bidirectional), ``apply``, ``vjp`` (output and
new state) and the pullback (``dparams``, ``dx``) are run on arrays stored

- C-contiguous, Fortran-ordered or in any other axis order (transposed views),
- with negative strides (reversed storage, as views),
- as every-other-element slices of a larger array,
- as zero-stride broadcasts along the first axis (a loss gradient may be one),

read-only, or writeable and compared after the call with a copy, and the results are
compared with those of C-contiguous copies of the same values.  Only the public contract
is used: ``init``, ``apply``, ``vjp`` and the pullback.

Equality is exact, bit for bit, except for the layers in :data:`ROUNDING`, where a BLAS
matmul takes an operand in the layout it was given (OpenBLAS then runs another kernel for
a transposed or strided operand, whose float32 sums round differently) or a numpy
reduction adds in the order of the layout; those are compared to ``1e-6 * max|reference|``
per array (about 8 float32 ulps of the largest entry), and :data:`ROUNDING` says why.
Every other layer runs its sums on C-ordered arrays and is exact.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np
import pytest

from fundl import random, tree

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a test extra")
from hypothesis import given, settings, strategies as st  # noqa: E402


from layer_cases import CASES, f32 as _f, layer_builders  # noqa: E402


#: Builders whose float32 results may differ from the C-contiguous ones by rounding, and
#: why (compared to ``1e-6 * max|reference|``); every other layer is exact.
ROUNDING = {
    "dense": "x @ w and x^T @ dy take x, w and dy in their own layout: OpenBLAS runs a "
             "transposed or strided operand through another sgemm kernel, whose sums round "
             "differently (fundl/layers/dense.py forward and pullback)",
    "serial": "its case holds a dense layer (see dense)",
    "parallel": "its case holds a dense layer (see dense)",
    "residual": "its case holds a dense layer (see dense)",
    "multi_head_attention": "its weight gradients x.reshape(N*T, F).T @ dqkv take x (and "
                            "the context) in their own layout into sgemm "
                            "(fundl/layers/attention.py:313, 331-332; forward 235-248)",
}


def test_every_exported_layer_builder_has_a_case():
    builders = layer_builders()
    assert len(builders) >= 40
    missing = sorted(set(builders) - {c.builder for c in CASES.values()})
    assert not missing, f"layer builders without a layout case: {missing}"


# --- the layouts ----------------------------------------------------------------------

class Layout(NamedTuple):
    """How one array is stored: axes in the order ``perm`` (``perm[0]`` outermost),
    reversed along ``flips``, every other element along ``step`` (an axis, or None),
    broadcast from its first entry along axis 0 (``bcast``), and ``writeable`` or not."""

    perm: Tuple[int, ...]
    flips: Tuple[bool, ...]
    step: Optional[int]
    bcast: bool
    writeable: bool


def _store(a: np.ndarray, lay: Layout) -> np.ndarray:
    """``a``'s values (or, with ``bcast``, those of ``a[:1]`` repeated) stored as ``lay``."""
    if a.ndim == 0:
        out = a.copy()
    elif lay.bcast and a.shape[0] > 1:
        out = np.broadcast_to(a[:1], a.shape)               # zero stride; never writeable
        return out
    else:
        flip = tuple(slice(None, None, -1) if f else slice(None) for f in lay.flips)
        inv = tuple(np.argsort(lay.perm))
        stored = a[flip].transpose(lay.perm)                 # the values in storage order
        if lay.step is None:
            mem = np.ascontiguousarray(stored)
        else:
            ax = lay.perm.index(lay.step)
            shape = list(stored.shape)
            shape[ax] *= 2
            big = np.full(shape, 7, stored.dtype)            # junk between the elements
            every = [slice(None)] * stored.ndim
            every[ax] = slice(None, None, 2)
            big[tuple(every)] = stored
            mem = big[tuple(every)]
        out = mem.transpose(inv)[flip]
        assert np.array_equal(out, a) and out.dtype == a.dtype
    out.flags.writeable = lay.writeable
    return out


NAMED = {
    "C": lambda nd: Layout(tuple(range(nd)), (False,) * nd, None, False, False),
    "C writeable": lambda nd: Layout(tuple(range(nd)), (False,) * nd, None, False, True),
    "Fortran": lambda nd: Layout(tuple(reversed(range(nd))), (False,) * nd, None, False, False),
    "transposed": lambda nd: Layout(tuple(range(nd))[:1] + tuple(reversed(range(1, nd))),
                                    (False,) * nd, None, False, False),
    "rotated left": lambda nd: Layout(tuple(range(1, nd)) + (0,)[:nd], (False,) * nd, None,
                                      False, False),        # (N, T, H) stored as (T, H, N)
    "rotated right": lambda nd: Layout((nd - 1,)[:nd] + tuple(range(nd - 1)), (False,) * nd,
                                       None, False, False),  # stored as (H, N, T)
    "negative strides": lambda nd: Layout(tuple(range(nd)), (True,) * nd, None, False, False),
    "sliced": lambda nd: Layout(tuple(range(nd)), (False,) * nd, nd - 1 if nd else None,
                                False, True),
    "broadcast": lambda nd: Layout(tuple(range(nd)), (False,) * nd, None, True, False),
    "everything": lambda nd: Layout(tuple(reversed(range(nd))), (True,) * nd,
                                    0 if nd else None, False, True),
}


def _layouts_strategy(nd: int):
    if nd == 0:
        return st.just(Layout((), (), None, False, False))
    return st.builds(Layout, st.permutations(range(nd)).map(tuple),
                     st.lists(st.booleans(), min_size=nd, max_size=nd).map(tuple),
                     st.sampled_from([None] + list(range(nd))),
                     st.sampled_from([False, False, False, True]), st.booleans())


# --- running a layer and comparing ----------------------------------------------------

def _run(layer, params, state, x, dy_of):
    """``apply``, ``vjp`` and the pullback: ``(y_apply, y, new_state, dparams, dx)``."""
    key = random.key(5)
    y_apply = layer.apply(params, state, x)
    y, new_state, pullback = layer.vjp(params, state, x, key=key)
    dparams, dx = pullback(dy_of(y))
    return y_apply, y, new_state, dparams, dx


def _leaves(t):
    return [a for a in tree.leaves(t) if a is not None]


def _assert_same(got, want, tol: float, what: str):
    got_l, want_l = _leaves(got), _leaves(want)
    assert len(got_l) == len(want_l), what
    for g, w in zip(got_l, want_l):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (what, g.shape, w.shape)
        if tol == 0.0 or w.dtype.kind != "f":
            assert np.array_equal(g, w, equal_nan=True), (
                f"{what}: differs from the C-contiguous result by "
                f"{np.max(np.abs(g.astype(np.float64) - w)) if g.size else 0}")
        elif w.size:
            scale = float(np.max(np.abs(w)))
            err = float(np.max(np.abs(g.astype(np.float64) - w)))
            assert err <= tol * scale, f"{what}: {err:.3g} > {tol} * {scale:.3g}"


def _check(case_id: str, b: int, n: int, pick: Callable[[np.ndarray, str], Layout]) -> None:
    """Run case ``case_id`` with its arrays stored as ``pick(array, role)`` says, and
    compare with C-contiguous copies of the same values."""
    case = CASES[case_id]
    layer, in_shape, x = case.make(b, n)
    params, state, _ = layer.init(random.key(0), in_shape)
    params = tree.map(lambda a: a + _f(a.shape, 9) * 0.1 if a.dtype.kind == "f" else a, params)
    y0 = layer.vjp(params, state, x, key=random.key(5))[0]
    dy_c = tree.map(lambda a: _f(a.shape, 11), y0)

    laid = {role: tree.map(lambda a, r=role: _store(a, pick(a, r)), t)
            for role, t in (("x", x), ("params", params), ("state", state), ("dy", dy_c))}
    copies = tree.map(np.copy, laid)
    # the reference: C-contiguous copies of exactly the values in the laid-out arrays
    ref = {role: tree.map(np.ascontiguousarray, t) for role, t in copies.items()}
    tol = 1e-6 if case.builder in ROUNDING else 0.0

    want = _run(layer, ref["params"], ref["state"], ref["x"], lambda y: ref["dy"])
    got = _run(layer, laid["params"], laid["state"], laid["x"], lambda y: laid["dy"])
    for what, g, w in zip(("apply", "vjp y", "new state", "dparams", "dx"), got, want):
        _assert_same(g, w, tol, f"{case_id}: {what}")
    for role in laid:          # nothing written, read-only or not
        assert tree.all_equal(laid[role], copies[role]), f"{case_id}: {role} was written"


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_named_layouts_give_the_c_contiguous_results(case_id):
    for name, layout in NAMED.items():
        try:
            _check(case_id, 3, 3, lambda a, role: layout(a.ndim))
        except AssertionError as err:
            raise AssertionError(f"layout {name!r}: {err}") from None


@pytest.mark.parametrize("case_id", sorted(CASES))
@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(data=st.data(), b=st.integers(1, 3), n=st.integers(2, 4))
def test_mixed_layouts_and_shapes_give_the_c_contiguous_results(case_id, data, b, n):
    _check(case_id, b, n, lambda a, role: data.draw(_layouts_strategy(a.ndim), label=role))
