"""Contract checks for any Layer: the checks fundl's own tests run on every layer.

:func:`check_layer` is what a layer author (built-in or user) runs to know a
layer honours the contract of :mod:`fundl.core`:

- ``init``'s ``out_shape`` equals the shape of ``apply``'s and ``vjp``'s output;
- float32 in gives float32 out (and float32 gradients);
- no function mutates its inputs (they are set read-only and compared after);
- the same key gives bit-identical params, outputs and gradients;
- ``apply(train=True)`` equals ``vjp``'s output for the same key;
- what the layer declares in :mod:`fundl.fusion` holds: ``vjp(..., need_dx=False)``
  gives the same output and dparams; what ``speed.fresh`` names really is held by
  nobody (scribbling over it changes no later result); ``x_donated`` /
  ``dy_donated`` change no result; a layer that says it uses no key gives the
  same results with and without one;
- the pullback passes :func:`fundl.check_vjp` in float64.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Optional

import numpy as np

from . import fusion, random, tree
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
        raise ContractError(f"{layer.name}: vjp's new state has another structure: {err}")

    dy = read_only(tree.map(lambda a: random.normal(random.fold_in(k_fwd, 7), a.shape, a.dtype), y_t))
    dy_before = copy.deepcopy(dy)
    dparams, dx = pullback(dy)
    dparams2, dx2 = pullback(dy)
    if not (tree.all_equal(dparams, dparams2) and tree.all_equal(dx, dx2)):
        raise ContractError(f"{layer.name}: pullback gives different results on a second call")
    speed = fusion.speed_of(layer)
    if "need_dx" in speed.takes:
        for how, vjp in (("", functools.partial(layer.vjp, need_dx=False)),
                         (" bound", fusion.bound_runner(layer, False, False, False))):
            y_n, _, pullback_n = vjp(params, state, x, key=k_fwd)
            dparams_n, dx_n = pullback_n(dy)
            if not (tree.all_equal(y_n, y_t) and tree.all_equal(dparams_n, dparams)):
                raise ContractError(f"{layer.name}: vjp(need_dx=False){how} changes the output "
                                    "or dparams")
            if dx_n is not None and not tree.all_equal(dx_n, dx):
                raise ContractError(f"{layer.name}: vjp(need_dx=False){how} returns a different dx")
    _check_donation(layer, params, state, x, k_fwd, dy, y_t, dparams, dx)
    try:
        tree.map(lambda a, b: None, params, dparams)
    except tree.TreeError as err:
        raise ContractError(f"{layer.name}: dparams differ in structure from params: {err}")
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
    x64 = None if x is None else x
    return check_vjp(layer, in_shape, x=x64, key=key, tol=tol, **check_vjp_kwargs)


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
    seen = []
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


def _check_donation(layer: Layer, params, state, x, key, dy, y, dparams, dx) -> None:
    """The declarations of :mod:`fundl.fusion` (see :func:`check_layer`)."""
    def same(result, what):
        got_dparams, got_dx = result
        if not (tree.all_equal(got_dparams, dparams) and tree.all_equal(got_dx, dx)):
            raise ContractError(f"{layer.name}: {what} changes the pullback's results")

    inputs = (params, state, x, dy)
    speed = fusion.speed_of(layer)
    if not speed.uses_key:
        y_k, _, pullback_k = layer.vjp(params, state, x, key=None)
        if not tree.all_equal(y_k, y):
            raise ContractError(f"{layer.name}: says it uses no key, but its output changes "
                                "without one")
        same(pullback_k(dy), "running without a key")
    if "y" in speed.fresh:  # nobody else holds it: not the inputs, not an earlier call's y
        y_f, _, pullback_f = layer.vjp(params, state, x, key=key)
        _scribble(layer, "y", y_f, (inputs, y))
        same(pullback_f(dy), "overwriting the output it declares fresh")
    for what, index, words in (("dparams", 0, "parameter gradients"), ("dx", 1, "input gradient")):
        if what in speed.fresh:  # nobody else holds it: not the inputs, not an earlier call's
            _, _, pullback_f = layer.vjp(params, state, x, key=key)
            first = pullback_f(dy)[index]
            _scribble(layer, what, pullback_f(dy)[index], (inputs, first))
            same(pullback_f(dy), f"overwriting the {words} it declares fresh")
    run = fusion.runner(layer)
    # Both ways a combinator passes the hints: as keywords, and bound once (Speed.bind).
    donated = {"x_donated": fusion.bound_runner(layer, True, True, False),
               "dy_donated": fusion.bound_runner(layer, True, False, True)}
    if "x_donated" in speed.takes:
        for how, vjp in (("", functools.partial(run, x_donated=True)),
                         (" bound", donated["x_donated"])):
            y_d, _, pullback_d = vjp(params, state, _writeable_copy(x), key=key)
            if not tree.all_equal(y_d, y):
                raise ContractError(f"{layer.name}: vjp(x_donated=True){how} changes the output")
            same(pullback_d(dy), f"vjp(x_donated=True){how}")
    if "dy_donated" in speed.takes:
        for how, vjp in (("", functools.partial(run, dy_donated=True)),
                         (" bound", donated["dy_donated"])):
            _, _, pullback_d = vjp(params, state, x, key=key)
            same(pullback_d(_writeable_copy(dy)), f"vjp(dy_donated=True){how}")
