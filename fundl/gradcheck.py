"""Finite-difference checks of hand-written gradients.

:func:`check_vjp` compares a Layer's pullback (or a Loss's gradient) with
central finite differences in float64, one input or parameter leaf at a time,
along random directions: for a random cotangent ``u`` and direction ``v`` it
compares ``<pullback(u), v>`` with ``(<u, f(p + eps v)> - <u, f(p - eps v)>) / 2 eps``.
Each comparison gives a relative error; the worst one, and its path
(``"params/dense_0/w"``, ``"x"``), is reported.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Union

import numpy as np

from . import random, tree
from .checks import as_shape, is_shape
from .core import Layer
from .losses import Loss

__all__ = ["check_vjp", "GradCheckResult", "GradCheckError"]


class GradCheckError(AssertionError):
    """A pullback disagrees with finite differences beyond the tolerance."""


class GradCheckResult(NamedTuple):
    """Outcome of :func:`check_vjp`.

    ``errors`` maps each checked path to its worst relative error over the
    projections; ``max_error``/``worst_path`` is the worst of them.
    """

    max_error: float
    worst_path: str
    errors: Dict[str, float]
    tol: float

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tol

    def __str__(self) -> str:
        status = "passed" if self.passed else "FAILED"
        lines = [f"check_vjp {status}: worst relative error {self.max_error:.3e} at "
                 f"'{self.worst_path}' (tolerance {self.tol:.1e})"]
        for path, err in self.errors.items():
            lines.append(f"  {path}: {err:.3e}")
        return "\n".join(lines)


def _random_input(key: Any, in_shape: Any, batch: int) -> Any:
    """Float64 normal input of shape ``(batch, *in_shape)``; a tuple of shapes gives a tuple."""
    if is_shape(in_shape):
        return random.normal(key, (batch,) + as_shape(in_shape), np.float64)
    keys = random.split(key, len(in_shape))
    return tuple(_random_input(k, s, batch) for k, s in zip(keys, in_shape))


def _inner(a: Any, b: Any) -> float:
    return float(sum(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64))
                     for x, y in zip(tree.leaves(a), tree.leaves(b))))


def _random_like(key: Any, t: Any) -> Any:
    leaves, treedef = tree.flatten(t)
    keys = random.split(key, max(len(leaves), 1))
    return tree.unflatten(treedef, [random.normal(k, np.shape(leaf), np.float64)
                                    for k, leaf in zip(keys, leaves)])


def _loss_as_layer(loss: Loss, target: Any) -> Layer:
    def init(key, in_shape):
        return {}, {}, ()

    def apply(params, state, x, *, key=None, train=False):
        return loss.value(x, target)

    def vjp(params, state, x, *, key=None, train=True):
        value, grad = loss.value_and_grad(x, target)
        return np.asarray(value), state, lambda u: ({}, tree.map(
            lambda g: g * np.asarray(u, g.dtype), grad))   # a tuple for a loss of tuples

    return Layer(init, apply, vjp, loss.name)


def check_vjp(
    fn: Union[Layer, Loss],
    in_shape: Any = None,
    *,
    x: Any = None,
    params: Any = None,
    state: Any = None,
    target: Any = None,
    key: Any = None,
    batch: int = 3,
    eps: float = 1e-6,
    tol: float = 1e-6,
    atol: float = 0.0,
    projections: int = 3,
    check_params: bool = True,
    train: bool = True,
    raise_on_failure: bool = True,
) -> GradCheckResult:
    """Check ``fn``'s pullback against central finite differences in float64.

    ``fn`` is a :class:`~fundl.core.Layer` or a :class:`~fundl.losses.Loss`.
    Give either ``in_shape`` (per-example; a tuple of shapes for a multi-input
    layer) and the input is drawn as ``normal((batch, *in_shape))``, or ``x``
    itself (integer leaves, such as embedding ids, are not differentiated).
    ``params``/``state`` default to ``fn.init`` with ``key``; floating leaves
    are cast to float64.  For a Loss, ``target`` is required and ``x`` (or
    ``in_shape``) is the prediction.

    Each float leaf of the input and of the params is checked along
    ``projections`` random directions.  ``train`` selects the forward that is
    differentiated: the training forward (``vjp(..., train=True)`` with a fixed
    key, the default) or the eval-mode one (``train=False``: the pullback of
    ``vjp(..., train=False)`` against finite differences of ``apply``).
    The error of one comparison is
    ``|analytic - numeric| / max(|analytic|, |numeric|, noise / tol)``, where
    ``noise = max(atol, 100 * machine_eps * sum|u * y| / (2 eps))`` estimates the
    rounding noise of the finite difference: a relative error where the
    projections are large, and an absolute error below ``noise`` counts as
    agreement (a gradient that is exactly zero, such as a bias followed by batch
    normalisation, differs from its finite difference only by rounding).  Returns a
    :class:`GradCheckResult`; raises :class:`GradCheckError` when the worst
    error exceeds ``tol`` (unless ``raise_on_failure=False``).
    """
    key = random.key(0) if key is None else key
    k_init, k_x, k_fwd, k_dirs = random.split(key, 4)
    if isinstance(fn, Loss):
        if target is None:
            raise ValueError("check_vjp on a loss needs target=")
        layer = _loss_as_layer(fn, target)
        check_params = False
    elif isinstance(fn, Layer):
        layer = fn
    else:
        raise TypeError(f"check_vjp expects a fundl Layer or Loss, got {type(fn).__name__}")

    if x is None:
        if in_shape is None:
            raise ValueError("check_vjp needs in_shape or x")
        x = _random_input(k_x, in_shape, batch)
    x = tree.cast(x, np.float64)
    if params is None:
        if in_shape is None:
            in_shape = tree.map(lambda a: np.shape(a)[1:], x)
        params, init_state, _ = layer.init(k_init, in_shape)
        state = init_state if state is None else state
    params = tree.cast(params, np.float64)
    state = tree.cast({} if state is None else state, np.float64)

    def forward(p: Any, inp: Any) -> Any:
        if not train:  # eval mode: the finite differences of apply itself
            return layer.apply(p, state, inp, key=k_fwd, train=False)
        return layer.vjp(p, state, inp, key=k_fwd, train=True)[0]

    y, _, pullback = layer.vjp(params, state, x, key=k_fwd, train=train)
    machine_eps = float(np.finfo(np.float64).eps)
    inputs = {"params": params if check_params else {}, "x": x}
    flat, treedef = tree.flatten(inputs)
    leaf_paths = tree.paths(inputs)

    errors: Dict[str, float] = {}
    for k_proj in random.split(k_dirs, projections):
        k_u, k_v = random.split(k_proj)
        u = _random_like(k_u, y)
        scale = float(sum(np.sum(np.abs(np.asarray(a, np.float64) * np.asarray(b, np.float64)))
                          for a, b in zip(tree.leaves(u), tree.leaves(y))))
        noise = max(atol, 100.0 * machine_eps * scale / (2 * eps))
        dparams, dx = pullback(u)
        grads = {"params": dparams if check_params else {}, "x": dx}
        if check_params:
            try:
                tree.map(lambda a, b: None, params, dparams)
            except tree.TreeError as err:
                raise GradCheckError(
                    f"dparams does not match the structure of params: {err}") from None
        for i, (path, leaf) in enumerate(zip(leaf_paths, flat)):
            if not (isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f"):
                continue
            grad_leaf = _grad_at(grads, path)
            if grad_leaf is None:
                raise GradCheckError(f"pullback returned no gradient for '{path}'")
            grad_leaf = np.asarray(grad_leaf)
            if grad_leaf.shape != leaf.shape:
                raise GradCheckError(f"gradient for '{path}' has shape {grad_leaf.shape}, "
                                     f"expected {leaf.shape}")
            if grad_leaf.dtype != leaf.dtype:
                raise GradCheckError(f"gradient for '{path}' has dtype {grad_leaf.dtype}, "
                                     f"expected {leaf.dtype} (dtype must be preserved)")
            v = random.normal(random.fold_in(k_v, i), leaf.shape, np.float64)
            analytic = float(np.vdot(grad_leaf, v))
            plus = list(flat)
            plus[i] = np.asarray(leaf + eps * v)   # 0-d stays an array, not a numpy scalar
            minus = list(flat)
            minus[i] = np.asarray(leaf - eps * v)
            p_in = tree.unflatten(treedef, plus)
            m_in = tree.unflatten(treedef, minus)
            p_params = p_in["params"] if check_params else params
            m_params = m_in["params"] if check_params else params
            numeric = (_inner(u, forward(p_params, p_in["x"]))
                       - _inner(u, forward(m_params, m_in["x"]))) / (2 * eps)
            rel = abs(analytic - numeric) / max(abs(analytic), abs(numeric), noise / tol, 1e-300)
            errors[path] = max(errors.get(path, 0.0), rel)

    if not errors:
        raise GradCheckError("nothing to check: no floating-point input or parameter leaves")
    worst_path = max(errors, key=errors.__getitem__)
    result = GradCheckResult(errors[worst_path], worst_path, errors, tol)
    if raise_on_failure and not result.passed:
        raise GradCheckError(f"{getattr(fn, 'name', fn)}: {result}")
    return result


def _grad_at(grads: Any, path: str) -> Optional[Any]:
    node = grads
    for part in path.split("/"):
        if node is None:
            return None
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, tuple) and hasattr(node, "_fields"):
            node = getattr(node, part)
        elif isinstance(node, (list, tuple)):
            node = node[int(part)]
        else:
            return None
    return node
