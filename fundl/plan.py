"""Planning: validation and speed decisions, once per model and input signature.

A model (a :class:`~fundl.core.Layer`) meets its data here.  :func:`of` gives the
model's :class:`Plan`, made once and kept with the layer; the layer's checked
entries (``init``, ``apply``, ``vjp``) and :func:`fundl.make_step` go through it.

- **Validation**, once per input signature (the per-example shapes of ``x``):
  ``init`` records the structure, shapes and dtypes of the params and state it
  made (:class:`~fundl.validate.TreeSpec`) and every node's path, kind and shapes
  (:class:`Node`); a call then checks its params and state against them with one
  exact test, and a mismatch is a :class:`~fundl.validate.SpecError` naming the
  path (``params/residual_1/serial_0/dense_0/b: expected shape (8,), got ...``).
- **Speed**, decided once per model from what its layers state
  (:class:`~fundl.core.Traits`): :func:`specialise` rebuilds the model over
  children with their hints bound -- a fresh output is donated to the next layer
  of a ``serial`` and a fresh input gradient to the previous layer's pullback, a
  training step's first layer gets ``need_dx=False``, a ReLU directly before a
  max pool runs after it.  Running the model is then its combinators' plain loops.
- **Errors**: one handler at the entry.  When a run fails, the model is run again
  on the same inputs as it was built, with each node locating a failure at its
  path (:func:`trace`), and that error is raised:
  ``layer 'block_1/dense_0' (dense): expected input of shape (batch, ..., 8), ...``.
- **Sharing**: a layer built by :func:`fundl.shared` and used at several places
  holds its params at the first place only; a run fills the other places with
  them and sums the places' gradients into the first (:func:`tie`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, FrozenSet, List, NamedTuple, Optional, Tuple

import numpy as np

from . import random, tree
from .checks import LayerError
from .core import Layer, Params, Pullback, State
from .validate import TreeSpec, data_shapes

__all__ = ["Plan", "Node", "Place", "Spec", "of", "specialise", "trace", "fresh_results",
           "share_sites", "tie", "fill_shared", "gather_shared", "check_cotangent"]

Path = Tuple[str, ...]
_MAX_POOLS = ("max_pool1d", "max_pool2d")
_MAX_SPECS = 32   # input signatures remembered per model


def of(layer: Layer) -> "Plan":
    """The plan of ``layer``, made at its first use and kept with it."""
    plan = layer._plan
    if plan is None:
        plan = Plan(layer)
        object.__setattr__(layer, "_plan", plan)
    return plan


class Node(NamedTuple):
    """One layer of a model as ``init`` saw it: its ``path`` in the params tree, the
    ``layer`` itself, its per-example ``in_shape``/``out_shape`` and the sizes of its
    ``params`` and ``state`` (elements)."""

    path: Path
    layer: Layer
    in_shape: Any
    out_shape: Any
    params: int
    state: int


class Place(NamedTuple):
    """One place of a model below its root: its ``path``, the ``nodes`` there (a
    transparent wrapper such as ``eval_mode`` or ``shared``, then the layer it wraps) and
    the ``params`` and ``state`` sizes it holds (0 at a shared layer's later uses, whose
    params live at its first place)."""

    path: Path
    nodes: Tuple[Node, ...]
    params: int
    state: int


class Spec(NamedTuple):
    """What ``init`` made for one input signature: the params' and state's specs, the
    output shape, and every node (in order: a parent before its children)."""

    params: TreeSpec
    state: TreeSpec
    out_shape: Any
    nodes: Tuple[Node, ...]

    def check(self, params: Params, state: State) -> None:
        """Raise :class:`~fundl.validate.SpecError` naming the path unless ``params`` and
        ``state`` are what ``init`` made."""
        self.params.check(params, "params")
        self.state.check(state, "state")


# --- the plan --------------------------------------------------------------------------------

class Plan:
    """A model's checks and its planned forms, decided once (see the module docstring)."""

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.groups = share_sites(layer)
        self.specs: Dict[Any, Optional[Spec]] = {}
        self.last: Optional[Spec] = None
        self._fast: Dict[bool, Layer] = {}
        self._traced: Optional[Layer] = None

    # the planned forms

    def fast(self, need_dx: bool = True) -> Layer:
        """The model specialised for a caller that needs the input gradient or not."""
        layer = self._fast.get(need_dx)
        if layer is None:
            layer = self._fast[need_dx] = tie(specialise(self.layer, need_dx), self.groups)
        return layer

    def traced(self, record: Optional[List[Any]] = None) -> Layer:
        """The model as built, each node locating a failure at its path (and, with
        ``record``, appending its :class:`Node` at ``init``)."""
        if record is not None:
            return tie(trace(self.layer, (), record), self.groups)
        if self._traced is None:
            self._traced = tie(trace(self.layer), self.groups)
        return self._traced

    # the checked entries

    def init(self, key: Any, in_shape: Any) -> Tuple[Params, State, Any]:
        """``layer.init``: run as traced, recording the spec of ``in_shape``."""
        nodes: List[Any] = []
        params, state, out_shape = self.traced(nodes).init_fn(key, in_shape)
        self._record(in_shape, params, state, out_shape, nodes)
        return params, state, out_shape

    def apply(self, params: Params, state: State, x: Any, *, key: Any = None,
              train: bool = False) -> Any:
        """``layer.apply``: checked, then run as planned."""
        self.check(params, state, x)
        try:
            return self.fast().apply_fn(params, state, x, key=key, train=train)
        except Exception as err:  # noqa: BLE001 - located by diagnose, then re-raised
            raise self.diagnose(err, lambda t: t.apply_fn(params, state, x, key=key,
                                                          train=train)) from None

    def vjp(self, params: Params, state: State, x: Any, *, key: Any = None, train: bool = True,
            need_dx: bool = True) -> Tuple[Any, State, Pullback]:
        """``layer.vjp``: checked, run as planned; the pullback checks its ``dy``."""
        self.check(params, state, x)
        try:
            y, new_state, pullback = self.fast(need_dx).vjp_fn(params, state, x, key=key,
                                                               train=train)
        except Exception as err:  # noqa: BLE001
            raise self.diagnose(err, lambda t: t.vjp_fn(params, state, x, key=key,
                                                        train=train)) from None

        def checked_pullback(dy: Any) -> Tuple[Params, Any]:
            check_cotangent(y, dy, "the pullback's dy")
            try:
                return pullback(dy)
            except Exception as err:  # noqa: BLE001
                raise self.diagnose(err, lambda t: t.vjp_fn(params, state, x, key=key,
                                                            train=train)[2](dy)) from None

        return y, new_state, checked_pullback

    def diagnose(self, err: Exception, rerun: Callable[[Layer], Any]) -> Exception:
        """The error to raise for ``err``: ``rerun`` on the traced model gives the same
        failure located at its layer (the original error if it does not fail there)."""
        if isinstance(err, (MemoryError, RecursionError)):
            return err
        try:
            rerun(self.traced())
        except Exception as found:  # noqa: BLE001 - the located twin of err
            return found
        return err

    def places(self, spec: Spec) -> List[Place]:
        """The places of ``spec``'s nodes below the root, in ``init``'s order."""
        later_uses = {p for group in self.groups for p in group[1:]}
        out: List[Place] = []
        for node in spec.nodes:
            if not node.path:
                continue
            if out and out[-1].path == node.path:  # the layer a transparent wrapper wraps
                out[-1] = out[-1]._replace(nodes=out[-1].nodes + (node,))
                continue
            elsewhere = any(node.path[:len(p)] == p for p in later_uses)
            out.append(Place(node.path, (node,), 0 if elsewhere else node.params,
                             0 if elsewhere else node.state))
        return out

    # validation

    def spec_for(self, in_shape: Any) -> Optional[Spec]:
        """The spec of per-example ``in_shape`` (from ``init`` with a fixed key the first
        time; ``None`` when ``init`` cannot take that shape)."""
        try:
            sig = _hashable(in_shape)
        except TypeError:
            return None
        if sig not in self.specs:
            if len(self.specs) >= _MAX_SPECS:
                return None
            try:
                self.init(random.key(0), in_shape)
            except Exception:  # noqa: BLE001 - the data's shapes are not an init's shapes
                self.specs[sig] = None
        return self.specs.get(sig)

    def spec_of(self, params: Params, state: State) -> Optional[Spec]:
        """The spec of an ``init`` in this process that made trees like ``params`` and
        ``state`` (structure, shapes, dtypes up to a float cast), or None."""
        for spec in self.specs.values():
            if spec is not None and spec.params.matches(params) and spec.state.matches(state):
                return spec
        return None

    def check(self, params: Params, state: State, x: Any) -> None:
        """Raise :class:`SpecError` unless ``params`` and ``state`` are what ``init`` made
        (for ``x``'s per-example shapes, or any shape ``init`` saw)."""
        last = self.last
        if last is not None and last.params.matches_exactly(params) \
                and last.state.matches_exactly(state):
            return
        found = self.spec_of(params, state)
        if found is None:
            found = self.spec_for(data_shapes(x))
            if found is None:
                seen = [s for s in self.specs.values() if s is not None]
                if not seen:
                    return  # init cannot take these shapes and never ran: nothing to check
                found = seen[-1]
            found.check(params, state)
        self.last = found

    def _record(self, in_shape: Any, params: Params, state: State, out_shape: Any,
                nodes: List[Any]) -> None:
        _check_reuse(nodes, self.groups)
        try:
            sig = _hashable(in_shape)
        except TypeError:
            return
        if sig not in self.specs and len(self.specs) < _MAX_SPECS:
            self.specs[sig] = self.last = Spec(TreeSpec(params), TreeSpec(state), out_shape,
                                               tuple(nodes))


def _hashable(shape: Any) -> Any:
    if isinstance(shape, (list, tuple)):
        return tuple(_hashable(s) for s in shape)
    if shape is None or isinstance(shape, (int, np.integer)):
        return None if shape is None else int(shape)
    raise TypeError(f"not a shape: {shape!r}")


def check_cotangent(y: Any, dy: Any, what: str) -> None:
    """Raise :class:`LayerError` unless ``dy`` has the structure of ``y`` and, for every float
    output, its shape and dtype (the cotangent of an integer output is not looked at)."""
    if type(y) is np.ndarray and type(dy) is np.ndarray:  # the common case
        if dy.shape == y.shape and dy.dtype == y.dtype:
            return
    for path, out, d in _pairs(y, dy, "y"):
        if not (isinstance(out, np.ndarray) and out.dtype.kind == "f"):
            continue  # the cotangent of an integer output (ids, a mask) is not used
        if not isinstance(d, np.ndarray):
            raise LayerError(f"{what} must match the output {path}: expected an array of shape "
                             f"{np.shape(out)}, got {type(d).__name__}")
        if d.shape != np.shape(out) or d.dtype != getattr(out, "dtype", d.dtype):
            raise LayerError(f"{what} must match the output {path}: expected shape "
                             f"{np.shape(out)} and dtype {getattr(out, 'dtype', '?')}, "
                             f"got shape {d.shape} and dtype {d.dtype}")


def _pairs(y: Any, dy: Any, path: str) -> List[Tuple[str, Any, Any]]:
    if isinstance(y, (tuple, list)):
        if not isinstance(dy, (tuple, list)) or len(dy) != len(y):
            got = f"a {type(dy).__name__}" + (f" of {len(dy)}" if isinstance(dy, (tuple, list))
                                              else "")
            raise LayerError(f"expected a cotangent tuple of {len(y)} for the output {path}, "
                             f"got {got}")
        return [p for i, (a, b) in enumerate(zip(y, dy)) for p in _pairs(a, b, f"{path}[{i}]")]
    return [(path, y, dy)]


# --- speed: the model rebuilt with its decisions -----------------------------------------------

def rebuild(layer: Layer, children: Tuple[Tuple[str, Layer], ...]) -> Layer:
    """``layer`` (a combinator) over other ``children``, by its own ``compose``."""
    compose = layer.traits.compose
    assert compose is not None, f"{layer.kind} is not a combinator"
    init, apply, vjp = compose(children)
    return layer.replace(init_fn=init, apply_fn=apply, vjp_fn=vjp, children=children)


def run_order(children: Tuple[Tuple[str, Layer], ...]) -> Tuple[Tuple[str, Layer], ...]:
    """A serial's children in the order they run: a ReLU directly before a max pool swaps
    places with it (both keep their keys: their params and state are ``{}``).

    The results are the same: ``max(relu(x)) == relu(max(x))`` over every window, and
    so are the gradients -- where a window's maximum is positive both orders give it to
    the first cell holding it; where it is ``<= 0`` the ReLU's gradient is 0 in both.
    The ReLU then runs on the pooled array (4x smaller for a 2x2 pool).
    """
    out = list(children)
    i = 0
    while i < len(out) - 1:
        (k1, a), (k2, b) = out[i], out[i + 1]
        if a.kind == "relu" and b.kind in _MAX_POOLS:
            out[i], out[i + 1] = (k1, b), (k2, a)
            i += 2
        else:
            i += 1
    return tuple(out)


def fresh_results(layer: Layer) -> FrozenSet[str]:
    """The results of ``layer`` that nobody else holds (its own ``traits.fresh`` for a leaf;
    for a combinator what it declares, ``"dparams"`` when every child's are, a serial's
    ``"y"``/``"dx"`` from its last/first child, a transparent wrapper's from its child)."""
    traits = layer.traits
    if traits.compose is None:
        return traits.fresh
    kids = [fresh_results(c) for _, c in run_order(layer.children)
            ] if layer.kind == "serial" else [fresh_results(c) for _, c in layer.children]
    if len(layer.children) == 1 and layer.children[0][0] == "":
        return kids[0]
    out = set(traits.fresh) - {"dparams"}
    if "dparams" in traits.fresh and all("dparams" in k for k in kids):
        out.add("dparams")
    if layer.kind == "serial" and kids:
        out |= {"y"} & kids[-1]
        out |= {"dx"} & kids[0]
    return frozenset(out)


#: Combinators whose children's input gradients are only passed out (never used inside),
#: so a caller that needs no input gradient needs none of theirs either.
_PASSES_DX = frozenset({"parallel", "residual", "bidirectional", "shared", "eval_mode"})


def specialise(layer: Layer, need_dx: bool = True, x_donated: bool = False,
               dy_donated: bool = False) -> Layer:
    """``layer`` with every hint its nodes take bound (see the module docstring); the same
    results bit for bit."""
    traits = layer.traits
    if traits.compose is None:
        hints = {}
        if not need_dx and "need_dx" in traits.takes:
            hints["need_dx"] = False
        if x_donated and "x_donated" in traits.takes:
            hints["x_donated"] = True
        if dy_donated and "dy_donated" in traits.takes:
            hints["dy_donated"] = True
        if not hints:
            return layer
        bind = traits.bind or functools.partial(functools.partial, layer.vjp_fn)
        return layer.replace(vjp_fn=bind(**hints))
    if layer.kind == "serial":
        children = run_order(layer.children)
        facts = [fresh_results(c) for _, c in children]
        last = len(children) - 1
        children = tuple(
            (k, specialise(c, need_dx or p > 0,
                           (p == 0 and x_donated) or (p > 0 and "y" in facts[p - 1]),
                           (p == last and dy_donated) or (p < last and "dx" in facts[p + 1])))
            for p, (k, c) in enumerate(children))
    else:
        passes = need_dx or layer.kind not in _PASSES_DX
        children = tuple((k, specialise(c, passes)) for k, c in layer.children)
    return rebuild(layer, children)


# --- errors: the model as built, each node locating its failures ----------------------------------

def _join(path: Path, key: str) -> Path:
    return path + (key,) if key else path


def _located(fn: Callable[..., Any], path: Path, kind: str) -> Callable[..., Any]:
    """``fn`` with a failure located at ``path`` (unless a deeper node located it first)."""
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LayerError as err:
            if err.located:
                raise
            raise err.at(path, kind) from None
        except Exception as err:  # noqa: BLE001 - another error type: kept, with a note
            if not hasattr(err, "fundl_path"):
                try:
                    err.fundl_path = path  # type: ignore[attr-defined]
                    where = "/".join(path) or kind
                    if hasattr(err, "add_note"):
                        err.add_note(f"fundl: raised in layer '{where}' ({kind})")
                except AttributeError:  # an exception type without a __dict__
                    pass
            raise
    return run


def trace(layer: Layer, path: Path = (), record: Optional[List[Any]] = None) -> Layer:
    """``layer`` as built, each node's functions (and pullbacks) locating a failure at the
    node's path; with ``record``, each node's ``init`` appends its :class:`Node`."""
    traits = layer.traits
    if traits.compose is not None:
        children = tuple((k, trace(c, _join(path, k), record)) for k, c in layer.children)
        init, apply, vjp = traits.compose(children)
    else:
        children = layer.children
        init, apply, vjp = layer.init_fn, layer.apply_fn, layer.vjp_fn
    init_, apply_, vjp_ = (_located(f, path, layer.kind) for f in (init, apply, vjp))

    def traced_init(key, in_shape):
        slot = None
        if record is not None:
            slot = len(record)
            record.append(None)   # a parent before its children
        params, state, out_shape = init_(key, in_shape)
        if slot is not None:
            record[slot] = Node(path, layer, in_shape, out_shape, tree.size(params),
                                tree.size(state))
        return params, state, out_shape

    def traced_vjp(params, state, x, *, key=None, train=True):
        y, new_state, pullback = vjp_(params, state, x, key=key, train=train)
        return y, new_state, _located(pullback, path, layer.kind)

    return layer.replace(init_fn=traced_init, apply_fn=apply_, vjp_fn=traced_vjp,
                         children=children)


# --- sharing -------------------------------------------------------------------------------------

Groups = Tuple[Tuple[Path, ...], ...]


def share_sites(layer: Layer) -> Groups:
    """The places of each shared layer in ``layer`` (its own first, then its other uses and
    the heads tied to it), in the order ``init`` meets them."""
    sites: Dict[int, List[Path]] = {}
    order: List[int] = []

    def walk(node: Layer, path: Path, inside: Optional[str]) -> None:
        group = None
        if node.kind == "shared":
            group = id(node)
            if inside is not None:
                raise ValueError(f"the shared layer at '{'/'.join(path)}' is inside the shared "
                                 f"layer at '{inside}': nested sharing is not supported")
        elif node.traits.ties is not None:
            group = id(node.traits.ties)
            if group not in sites:
                raise ValueError(f"the layer at '{'/'.join(path)}' ({node.kind}) is tied to a "
                                 "shared layer that does not come before it in the model: put "
                                 "the shared layer itself first")
        if group is not None:
            if group not in sites:
                sites[group] = []
                order.append(group)
            sites[group].append(path)
            if len(sites[group]) > 1:
                return  # its other uses: the params and the layers are the first one's
        if node.traits.compose is not None:
            here = "/".join(path) if node.kind == "shared" else inside
            for k, c in node.children:
                walk(c, _join(path, k), here)
        elif any(_has_shared(c) for _, c in node.children):
            raise ValueError(f"the layer at '{'/'.join(path) or node.kind}' ({node.kind}) holds a "
                             "shared layer but builds its own functions (no compose), so fundl "
                             "cannot give the shared params to it")

    walk(layer, (), None)
    return tuple(tuple(sites[g]) for g in order if len(sites[g]) > 1)


def _has_shared(layer: Layer) -> bool:
    return layer.kind == "shared" or layer.traits.ties is not None or any(
        _has_shared(c) for _, c in layer.children)


def _get(t: Any, path: Path) -> Any:
    for k in path:
        t = t[k]
    return t


def _add(a: Any, b: Any) -> Any:
    return tree.map(np.add, a, b)


def fill_shared(params: Params, groups: Groups) -> Params:
    """``params`` with each shared layer's params (held at its group's first place) at its
    other places too: the same arrays, new dicts along the paths, nothing written."""
    for first, *others in groups:
        shared = _get(params, first)
        for p in others:
            params = tree.replace_at(params, p, shared)
    return params


def gather_shared(grads: Params, groups: Groups) -> Params:
    """``grads`` with each group's gradients summed at its first place and ``{}`` at the
    others (the inverse of :func:`fill_shared` for gradients)."""
    for first, *others in groups:
        total = _get(grads, first)
        for p in others:
            total = _add(total, _get(grads, p))
            grads = tree.replace_at(grads, p, {})
        grads = tree.replace_at(grads, first, total)
    return grads


def tie(layer: Layer, groups: Groups) -> Layer:
    """``layer`` whose shared params live at each group's first place: ``init`` leaves
    ``{}`` at the other places, a run fills them in (:func:`fill_shared`), and the
    pullback sums their gradients into the first place's (:func:`gather_shared`)."""
    if not groups:
        return layer

    def init(key, in_shape):
        params, state, out_shape = layer.init_fn(key, in_shape)
        for group in groups:
            for p in group:
                if tree.leaves(_get(state, p)):
                    raise ValueError(f"the shared layer at '{'/'.join(p)}' has state (e.g. "
                                     "batch_norm's statistics): sharing a layer with state is "
                                     "not supported")
            for p in group[1:]:
                params = tree.replace_at(params, p, {})
        return params, state, out_shape

    def apply(params, state, x, *, key=None, train=False):
        return layer.apply_fn(fill_shared(params, groups), state, x, key=key, train=train)

    def vjp(params, state, x, *, key=None, train=True):
        y, new_state, pullback = layer.vjp_fn(fill_shared(params, groups), state, x, key=key,
                                              train=train)

        def tied_pullback(dy):
            grads, dx = pullback(dy)
            return gather_shared(grads, groups), dx

        return y, new_state, tied_pullback

    return layer.replace(init_fn=init, apply_fn=apply, vjp_fn=vjp)


def _check_reuse(nodes: List[Node], groups: Groups) -> None:
    """A Layer object with params used at two places of one model (not through
    :func:`fundl.shared`) would silently get two sets of params: an error that says how
    to share or how to have two."""
    shared_roots = [p for group in groups for p in group]
    seen: Dict[int, Node] = {}
    for node in nodes:
        if node is None or node.params == 0:
            continue
        if any(node.path[:len(r)] == r for r in shared_roots):
            continue
        first = seen.setdefault(id(node.layer), node)
        if first is not node:
            a, b = "/".join(first.path) or "<model>", "/".join(node.path) or "<model>"
            raise ValueError(
                f"one {node.layer.kind} Layer object is used at '{a}' and at '{b}' and has params: "
                f"each use would get its own params. To share one set, build it as "
                f"fl.shared({node.layer.kind}(...)) and use that object at both places; to have "
                f"two sets, build the layer twice.")
