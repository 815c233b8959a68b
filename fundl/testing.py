"""Contract checks for any Layer: the checks fundl's own tests run on every layer.

:func:`check_layer` is what a layer author (built-in or user) runs to know a
layer honours the contract of :mod:`fundl.core`:

- ``init``'s ``out_shape`` equals the shape of ``apply``'s and ``vjp``'s output;
- float32 in gives float32 out (and float32 gradients);
- no function mutates its inputs (they are set read-only and compared after);
- the same key gives bit-identical params, outputs and gradients;
- ``apply(train=True)`` equals ``vjp``'s output for the same key;
- eval mode: ``vjp(..., train=False)`` gives ``apply``'s output bit for bit and the
  state unchanged;
- what the layer states in its :class:`~fundl.core.Traits` holds: the model as
  planned (:func:`fundl.plan.specialise`: hints bound, donations, a ReLU after its
  pool) gives bit for bit the results of the model as built, with and without the
  input gradient (``need_dx=False``); what :func:`fundl.plan.fresh_results` names
  really is held by nobody (scribbling over it changes no later result);
  ``x_donated`` / ``dy_donated`` change no result; a layer that says it uses no key
  gives the same results with and without one;
- the pullback passes :func:`fundl.check_vjp` in float64, in training and in eval mode.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np

from . import plan, random, tree
from .checks import normalize_shapes
from .core import Layer
from .gradcheck import GradCheckResult, _random_input, check_vjp

__all__ = ["check_layer", "read_only", "every_float32", "ContractError"]


class ContractError(AssertionError):
    """A layer breaks the Layer contract; the message says how."""


def every_float32(lo: float, hi: float) -> np.ndarray:
    """Every float32 in ``[lo, hi)`` (``0 <= lo < hi``), ascending: for accuracy tests
    that must not miss the worst input between two grid points."""
    i0, i1 = np.float32(lo).view(np.int32), np.float32(hi).view(np.int32)
    return np.arange(i0, i1, dtype=np.int32).view(np.float32)


def read_only(t: Any) -> Any:
    """Copies of every array leaf of ``t``, set read-only (other leaves as they are)."""
    def freeze(a: Any) -> Any:
        if isinstance(a, np.ndarray):
            a = a.copy()
            a.flags.writeable = False
        return a
    return tree.map(freeze, t)


def _shapes(t: Any) -> Any:
    """Per-example shapes of a batch (or a tuple of batches)."""
    if isinstance(t, np.ndarray):
        return tuple(t.shape[1:])
    return tuple(_shapes(a) for a in t)


def _dtypes(t: Any) -> set:
    return {np.asarray(a).dtype for a in tree.leaves(t)}


def check_layer(layer: Layer, in_shape: Any, *, x: Any = None, batch: int = 3,
                key: Any = None, gradcheck: bool = True, tol: float = 1e-6,
                **check_vjp_kwargs: Any) -> Optional[GradCheckResult]:
    """Run every contract check on ``layer`` for per-example ``in_shape``.

    ``x`` (float32, or integer ids) overrides the random float32 input.
    Returns the :func:`~fundl.check_vjp` result; raises :class:`ContractError`
    or :class:`~fundl.GradCheckError` on the first broken rule.
    """
    key = random.key(0) if key is None else key
    k_init, k_x, k_fwd = random.split(key, 3)
    if x is None:
        x = tree.cast(_random_input(k_x, in_shape, batch), np.float32)
    x = read_only(x)
    x_before = copy.deepcopy(x)

    params, state, out_shape = layer.init(k_init, in_shape)
    params2, state2, out_shape2 = layer.init(k_init, in_shape)
    if not (tree.all_equal(params, params2) and tree.all_equal(state, state2)
            and out_shape == out_shape2):
        raise ContractError(f"{layer.name}: init is not deterministic in its key")
    float_dtypes = {d for d in _dtypes(params) if d.kind == "f"}
    if float_dtypes - {np.dtype(np.float32)}:
        raise ContractError(f"{layer.name}: default params should be float32, got {float_dtypes}")
    params, state = read_only(params), read_only(state)
    p_before, s_before = copy.deepcopy(params), copy.deepcopy(state)

    y = layer.apply(params, state, x)
    if normalize_shapes(_shapes(y)) != normalize_shapes(out_shape):
        raise ContractError(f"{layer.name}: init says out_shape {out_shape}, "
                            f"apply gives per-example shape {_shapes(y)}")
    x_float = any(np.asarray(a).dtype.kind == "f" for a in tree.leaves(x))
    if x_float and _dtypes(y) != {np.dtype(np.float32)}:
        raise ContractError(f"{layer.name}: float32 in gave {_dtypes(y)} out")
    if not tree.all_equal(y, layer.apply(params, state, x)):
        raise ContractError(f"{layer.name}: apply is not deterministic")

    y_t, new_state, pullback = layer.vjp(params, state, x, key=k_fwd)
    y_t2, new_state2, _ = layer.vjp(params, state, x, key=k_fwd)
    if not (tree.all_equal(y_t, y_t2) and tree.all_equal(new_state, new_state2)):
        raise ContractError(f"{layer.name}: vjp is not deterministic for a fixed key")
    if normalize_shapes(_shapes(y_t)) != normalize_shapes(out_shape):
        raise ContractError(f"{layer.name}: init says out_shape {out_shape}, "
                            f"vjp gives per-example shape {_shapes(y_t)}")
    y_train = layer.apply(params, state, x, key=k_fwd, train=True)
    if not tree.all_equal(y_train, y_t):
        raise ContractError(f"{layer.name}: apply(train=True) differs from vjp's output "
                            f"({_difference(y_train, y_t)}); the two must agree bit for bit "
                            f"(the same key, the same operations)")
    try:
        tree.map(lambda a, b: None, state, new_state)
    except tree.TreeError as err:
        raise ContractError(
            f"{layer.name}: vjp's new state has another structure: {err}") from None

    dy = read_only(tree.map(lambda a: random.normal(random.fold_in(k_fwd, 7), a.shape, a.dtype), y_t))
    dy_before = copy.deepcopy(dy)
    dparams, dx = pullback(dy)
    dparams2, dx2 = pullback(dy)
    if not (tree.all_equal(dparams, dparams2) and tree.all_equal(dx, dx2)):
        raise ContractError(f"{layer.name}: pullback gives different results on a second call")
    _check_planned(layer, params, state, x, k_fwd, dy, y_t, new_state, dparams, dx)
    y_e, state_e, pullback_e = layer.vjp(params, state, x, key=k_fwd, train=False)
    if not tree.all_equal(y_e, y):
        raise ContractError(f"{layer.name}: vjp(train=False) differs from apply's output "
                            f"({_difference(y_e, y)}); eval mode must be apply's function")
    if not tree.all_equal(state_e, state):
        raise ContractError(f"{layer.name}: vjp(train=False) changed the state")
    dparams_e, dx_e = pullback_e(dy)
    try:
        tree.map(lambda a, b: None, params, dparams_e)
    except tree.TreeError as err:
        raise ContractError(f"{layer.name}: eval-mode dparams differ in structure from params: "
                            f"{err}") from None
    try:
        tree.map(lambda a, b: None, params, dparams)
    except tree.TreeError as err:
        raise ContractError(
            f"{layer.name}: dparams differ in structure from params: {err}") from None
    if _dtypes(dparams) - {np.dtype(np.float32)}:
        raise ContractError(f"{layer.name}: float32 params gave {_dtypes(dparams)} gradients")
    if x_float and dx is not None and _dtypes(dx) != {np.dtype(np.float32)}:
        raise ContractError(f"{layer.name}: float32 input gave {_dtypes(dx)} input gradient")

    for what, now, before in (("x", x, x_before), ("params", params, p_before),
                              ("state", state, s_before), ("dy", dy, dy_before)):
        if not tree.all_equal(now, before):
            raise ContractError(f"{layer.name}: {what} was modified")

    if not gradcheck:
        return None
    result = check_vjp(layer, in_shape, x=x, key=key, tol=tol, **check_vjp_kwargs)
    check_vjp(layer, in_shape, x=x, key=key, tol=tol, train=False, **check_vjp_kwargs)
    return result


def _difference(a: Any, b: Any) -> str:
    """How two trees of arrays differ: the largest absolute difference, or their shapes."""
    try:
        diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                 for x, y in zip(tree.leaves(a), tree.leaves(b)) if np.shape(x) == np.shape(y)
                 and np.size(x)]
    except (TypeError, ValueError):
        diffs = []
    if len(diffs) == len(tree.leaves(a)) == len(tree.leaves(b)) and diffs:
        return f"max abs difference {max(diffs):.3g}"
    return f"shapes {[np.shape(x) for x in tree.leaves(a)]} vs {[np.shape(y) for y in tree.leaves(b)]}"


def _writeable_copy(t: Any) -> Any:
    return tree.map(lambda a: np.array(a, copy=True) if isinstance(a, np.ndarray) else a, t)


def _scribble(layer: Layer, what: str, t: Any, others: Any) -> None:
    """Overwrite every array of ``t`` (declared fresh as ``what``) with NaN, after
    checking it is writeable and shares no memory with ``others`` or another array of ``t``."""
    seen: list = []
    for a in tree.leaves(t):
        if not isinstance(a, np.ndarray):
            continue
        if not a.flags.writeable or any(np.shares_memory(a, b) for b in tree.leaves(others) + seen
                                        if isinstance(b, np.ndarray)):
            raise ContractError(f"{layer.name}: declares {what!r} fresh, but it is read-only or "
                                f"shares memory with the layer's inputs, params or an "
                                f"earlier call's result")
        seen.append(a)
    for a in seen:
        a[...] = np.nan if a.dtype.kind == "f" else 0


def _dx_agrees(partial: Any, dx: Any) -> bool:
    """Whether an input gradient computed without ``need_dx`` agrees with ``dx``: each part is
    ``None`` (skipped) or equal to ``dx``'s."""
    if partial is None:
        return True
    if isinstance(partial, (tuple, list)) and isinstance(dx, (tuple, list)) \
            and len(partial) == len(dx):
        return all(_dx_agrees(p, d) for p, d in zip(partial, dx))
    return tree.all_equal(partial, dx)


def _check_planned(layer: Layer, params, state, x, key, dy, y, new_state, dparams, dx) -> None:
    """The layer's traits (see :func:`check_layer`): the planned model against the model as
    built, donations, fresh results, the key."""
    def same(result, what):
        got_dparams, got_dx = result
        if not (tree.all_equal(got_dparams, dparams) and tree.all_equal(got_dx, dx)):
            raise ContractError(f"{layer.name}: {what} changes the pullback's results")

    planned = plan.of(layer)
    plain = planned.traced()    # as built: no hint, no donation, no reordering
    y_p, state_p, pullback_p = plain.vjp_fn(params, state, x, key=key)
    if not (tree.all_equal(y_p, y) and tree.all_equal(state_p, new_state)):
        raise ContractError(f"{layer.name}: the planned vjp's output or state differ from the "
                            f"model as built ({_difference(y_p, y)})")
    same(pullback_p(dy), "planning (the model as built)")
    y_n, _, pullback_n = planned.fast(need_dx=False).vjp_fn(params, state, x, key=key)
    dparams_n, dx_n = pullback_n(dy)
    if not (tree.all_equal(y_n, y) and tree.all_equal(dparams_n, dparams)):
        raise ContractError(f"{layer.name}: vjp(need_dx=False) changes the output or dparams")
    if not _dx_agrees(dx_n, dx):
        raise ContractError(f"{layer.name}: vjp(need_dx=False) returns a different dx")

    inputs = (params, state, x, dy)
    traits = layer.traits
    if not traits.uses_key:
        y_k, _, pullback_k = layer.vjp(params, state, x, key=None)
        if not tree.all_equal(y_k, y):
            raise ContractError(f"{layer.name}: says it uses no key, but its output changes "
                                "without one")
        same(pullback_k(dy), "running without a key")
    fresh = plan.fresh_results(layer)
    if "y" in fresh:  # nobody else holds it: not the inputs, not an earlier call's y
        y_f, _, pullback_f = layer.vjp(params, state, x, key=key)
        _scribble(layer, "y", y_f, (inputs, y))
        same(pullback_f(dy), "overwriting the output it declares fresh")
    for what, index, words in (("dparams", 0, "parameter gradients"), ("dx", 1, "input gradient")):
        if what in fresh:  # nobody else holds it: not the inputs, not an earlier call's
            _, _, pullback_f = layer.vjp(params, state, x, key=key)
            first = pullback_f(dy)[index]
            _scribble(layer, what, pullback_f(dy)[index], (inputs, first))
            same(pullback_f(dy), f"overwriting the {words} it declares fresh")
    if traits.bind is None:
        return
    if "x_donated" in traits.takes:
        y_d, _, pullback_d = traits.bind(x_donated=True)(params, state, _writeable_copy(x),
                                                         key=key)
        if not tree.all_equal(y_d, y):
            raise ContractError(f"{layer.name}: vjp(x_donated=True) changes the output")
        same(pullback_d(dy), "vjp(x_donated=True)")
    if "dy_donated" in traits.takes:
        _, _, pullback_d = traits.bind(dy_donated=True)(params, state, x, key=key)
        same(pullback_d(_writeable_copy(dy)), "vjp(dy_donated=True)")
