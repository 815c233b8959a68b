"""Speed below the contract: what a layer may declare so that it runs faster, with the same bits.

Nothing here changes what a layer computes, and a layer that declares nothing
(``Layer.speed is None``) is always run plainly.  A layer declares a
:class:`Speed` record when it is built; :func:`fundl.serial`, the other
combinators and :func:`fundl.make_step` read it once, at construction, and
never inspect a function at run time.

- ``uses_key=False``: the layer never reads its ``key`` (every
  :func:`~fundl.stateless_layer`); a combinator whose children all say so
  passes ``key=None`` instead of splitting keys at every step.
- ``takes``: the optional ``vjp`` keywords the layer accepts --
  ``need_dx`` (``need_dx=False``: the caller, e.g. the step for a model's first
  layer, does not need the input gradient; the pullback may return ``None``),
  ``x_donated`` (the layer may overwrite its input ``x``) and ``dy_donated``
  (the pullback may overwrite the ``dy`` it receives).  :func:`runner` adapts a
  layer once so that a combinator can pass every hint to every child.
- ``fresh``: the results that are arrays nobody else holds -- ``"y"`` (the
  output of ``vjp``), ``"dx"`` (the pullback's input gradient), ``"dparams"``
  (every array of its parameter gradients).  :func:`serial_plan` donates a fresh
  ``y`` to the next layer (``x_donated``) and a fresh ``dx`` to the previous
  layer's pullback (``dy_donated``): a ReLU after a dense layer then works in
  place, as hand-written numpy would, while an array a caller passes in is
  never written.  A model with fresh ``dparams`` lets :func:`owned_update` hand
  the gradients to an optimizer that reuses their memory (``sgd``) without the
  ownership walk of :func:`exclusive_grads`.
- ``bind``: ``bind(**hints) -> run(params, state, x, *, key=None)``, the layer's
  ``vjp`` with some of the hints it takes fixed, built once; :func:`bound_runner`
  uses it instead of a :func:`functools.partial` (whose keywords cost 0.4 us a
  call).  Layers built by :func:`~fundl.stateless_layer` have one.
- ``kind``: facts about the function: ``"relu"`` (elementwise ``max(x, 0)``,
  gradient 0 where ``x <= 0``) and ``"max_pool"`` (a max over windows within each
  channel).  :func:`run_order` runs a ReLU that directly precedes a max pool after
  the pool.

:func:`fundl.testing.check_layer` verifies every declaration.
"""

from __future__ import annotations

import functools
from typing import (Any, Callable, Dict, FrozenSet, Iterable, List, NamedTuple, Optional,
                    Sequence, Tuple)

import numpy as np

from . import tree

__all__ = ["Speed", "speed_of", "runner", "bound_runner", "run_order", "SerialPlan", "serial_plan",
           "owned_update", "exclusive_grads", "HINTS", "FRESH"]

HINTS = ("need_dx", "x_donated", "dy_donated")
FRESH = ("y", "dx", "dparams")


class Speed(NamedTuple):
    """What a layer declares about itself (see the module docstring)."""

    uses_key: bool = True
    takes: FrozenSet[str] = frozenset()
    fresh: FrozenSet[str] = frozenset()
    kind: str = ""
    bind: Optional[Callable[..., Callable[..., Tuple[Any, Any, Any]]]] = None


PLAIN = Speed()


def declare(*, uses_key: bool = True, takes: Iterable[str] = (), fresh: Iterable[str] = (),
            kind: str = "", who: str = "layer") -> Speed:
    """A checked :class:`Speed` record (unknown hints or results raise ``ValueError``)."""
    takes, fresh = frozenset(takes), frozenset(fresh)
    if not takes <= set(HINTS):
        raise ValueError(f"{who}: takes may name only {HINTS}, got {tuple(sorted(takes))!r}")
    if not fresh <= set(FRESH):
        raise ValueError(f"{who}: fresh may name only {FRESH}, got {tuple(sorted(fresh))!r}")
    if kind not in ("", "relu", "max_pool"):
        raise ValueError(f"{who}: kind must be '', 'relu' or 'max_pool', got {kind!r}")
    return Speed(bool(uses_key), takes, fresh, kind)


def speed_of(layer: Any) -> Speed:
    """The layer's declaration, or :data:`PLAIN` (uses its key, takes no hint, nothing fresh)."""
    return layer.speed if layer.speed is not None else PLAIN


VjpRunner = Callable[..., Tuple[Any, Any, Any]]


def runner(layer: Any) -> VjpRunner:
    """``layer.vjp`` as ``run(params, state, x, key, need_dx, x_donated, dy_donated)``.

    Built once per layer: the hints the layer does not take are dropped, a
    donation it takes is passed only when made (so the plain call stays plain).
    """
    vjp, takes = layer.vjp, speed_of(layer).takes

    if not takes:
        def run(params, state, x, key, need_dx=True, x_donated=False, dy_donated=False):
            return vjp(params, state, x, key=key)
    elif takes == {"need_dx"}:
        def run(params, state, x, key, need_dx=True, x_donated=False, dy_donated=False):
            return vjp(params, state, x, key=key, need_dx=need_dx)
    else:
        def run(params, state, x, key, need_dx=True, x_donated=False, dy_donated=False):
            hints = {"need_dx": need_dx} if "need_dx" in takes else {}
            if x_donated and "x_donated" in takes:
                hints["x_donated"] = True
            if dy_donated and "dy_donated" in takes:
                hints["dy_donated"] = True
            return vjp(params, state, x, key=key, **hints)
    return run


def bound_runner(layer: Any, need_dx: bool, x_donated: bool, dy_donated: bool
                 ) -> Callable[..., Tuple[Any, Any, Any]]:
    """``layer.vjp`` with these hints fixed: ``run(params, state, x, key=key)``.

    The hints the layer does not take are dropped once, here, and the rest bound
    by the layer's own ``Speed.bind`` or else with :func:`functools.partial`, so a
    call costs no keyword dict of its own: :func:`fundl.serial` builds one per
    child and call signature.  (Measured on a 5-layer MLP of width 8: the serial's
    forward 15.6 -> 12.9 us per step against :func:`runner`'s general call; a
    ReLU's donated call 0.67 -> 0.30 us of Python through ``bind``.)
    """
    takes = speed_of(layer).takes
    wanted = {"need_dx": False} if not need_dx else {}  # True is every vjp's default
    wanted.update({"x_donated": True} if x_donated else {})
    wanted.update({"dy_donated": True} if dy_donated else {})
    hints = {name: value for name, value in wanted.items() if name in takes}
    if not hints:
        return layer.vjp
    bind = speed_of(layer).bind
    return bind(**hints) if bind is not None else functools.partial(layer.vjp, **hints)


# --- serial ---------------------------------------------------------------------------

def run_order(layers: Sequence[Any]) -> List[int]:
    """The order in which :func:`fundl.serial` runs ``layers``: as given, except that a
    ReLU directly followed by a max pool runs right after that pool.

    The results are the same: ``max(relu(x)) == relu(max(x))`` over every window,
    and so are the gradients -- where a window's maximum is positive, both orders
    give its gradient to the first cell holding that maximum; where it is ``<= 0``
    the ReLU's gradient is 0 in both.  Pooled first, the pool sees the ReLU's
    input, which has no ties at 0 to break, and the ReLU runs on the pooled array
    (4x smaller for a 2x2 pool).
    """
    # Measured: 2.0-2.9 ms of the benchmark CNN's step (benchmarks.gap, "ReLU before pool").
    order = list(range(len(layers)))
    i = 0
    while i < len(layers) - 1:
        if speed_of(layers[i]).kind == "relu" and speed_of(layers[i + 1]).kind == "max_pool":
            order[i], order[i + 1] = i + 1, i
            i += 2
        else:
            i += 1
    return order


class SerialPlan(NamedTuple):
    """How :func:`fundl.serial` runs its children (all tuples indexed by run position).

    ``order[p]`` is the index of the child run at position ``p``;
    ``moved_relu[p]`` the index of a ReLU moved after the pool at ``p`` (its input
    check runs first, so an error still names the ReLU), else ``None``;
    ``x_donated[p]``/``dy_donated[p]``: the child at ``p`` receives the fresh
    output / input gradient of its neighbour; ``speed``: the serial's own record.
    """

    order: Tuple[int, ...]
    moved_relu: Tuple[Optional[int], ...]
    x_donated: Tuple[bool, ...]
    dy_donated: Tuple[bool, ...]
    speed: Speed


def serial_plan(layers: Sequence[Any]) -> SerialPlan:
    """The run order, donations and declaration of ``serial(*layers)`` (a pure function)."""
    order = run_order(layers)
    ran = [speed_of(layers[j]) for j in order]
    n = len(layers)
    moved = tuple(j - 1 if j > p else None for p, j in enumerate(order))
    x_donated = tuple(p > 0 and "y" in ran[p - 1].fresh for p in range(n))
    dy_donated = tuple(p < n - 1 and "dx" in ran[p + 1].fresh for p in range(n))
    fresh = {f for f, s in (("y", ran[-1]), ("dx", ran[0])) if f in s.fresh}
    if all("dparams" in s.fresh for s in ran):
        fresh.add("dparams")
    speed = Speed(uses_key=any(s.uses_key for s in ran), takes=frozenset(HINTS),
                  fresh=frozenset(fresh))
    return SerialPlan(tuple(order), moved, x_donated, dy_donated, speed)


# --- the step: handing gradients to an optimizer that reuses their memory ---------------

def owned_update(model: Any, optimizer: Any
                 ) -> Tuple[Callable[[Any, Any, Any, float], Tuple[Any, Any]], bool]:
    """``(update, copy_first)`` for the step: ``update(params, grads, opt_state, lr)``.

    The step owns the gradients it computed.  If the optimizer declares
    ``update_owning_grads`` (``sgd``) they are handed to it -- directly when the
    model declares them fresh, otherwise (``copy_first``) after
    :func:`exclusive_grads` copies any leaf that is not an array of its own.
    Otherwise the plain ``update``.  The step calls ``update`` itself, not a
    wrapper around it: a frame less per step.
    """
    if optimizer.update_owning_grads is None:
        return optimizer.update, False
    return optimizer.update_owning_grads, "dparams" not in speed_of(model).fresh


def exclusive_grads(grads: Any, keep: Any) -> Any:
    """``grads`` with every leaf an array nobody else holds, so it may be written.

    A leaf is kept as it is when it is a writeable array that owns its memory,
    that no other gradient leaf views, and whose memory is not that of an
    array in ``keep`` (the params, state, optimizer state and batch that
    outlive the step); any other leaf is replaced by a copy.  Pullbacks
    normally return fresh arrays, so this copies nothing.
    """
    leaves = tree.leaves(grads)
    mine = set()
    for g in leaves:  # the common case, checked first: distinct writeable arrays of their own
        if type(g) is not np.ndarray or g.base is not None or not g.flags.writeable \
                or id(g) in mine:
            break
        mine.add(id(g))
    else:
        if not any(type(a) is np.ndarray and (id(a) in mine or id(a.base) in mine)
                   for a in tree.leaves(keep)):
            return grads  # nothing to copy, nothing to rebuild
    owners: Dict[int, int] = {}
    for g in leaves:
        if isinstance(g, np.ndarray):
            owner = id(g if g.base is None else g.base)
            owners[owner] = owners.get(owner, 0) + 1
    kept = {id(a if a.base is None else a.base)
            for a in tree.leaves(keep) if isinstance(a, np.ndarray)}

    def owned(g: Any) -> bool:
        return (isinstance(g, np.ndarray) and g.base is None and g.flags.writeable
                and owners[id(g)] == 1 and id(g) not in kept)

    return tree.map(lambda g: g if owned(g) else np.array(g, copy=True), grads)
