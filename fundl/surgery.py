"""Model surgery: sub-models with their params, a swapped layer, a pretrained body grafted in.

Every function is pure: it returns a new model (a :class:`~fundl.core.Layer`) and
new params and state trees, sharing the untouched arrays, and never writes into
what it is given.  Paths are the params tree's keys joined by ``/``
(``"block_1/serial_0"``; ``""`` is the whole model), as in error messages and
:func:`fundl.summary`; a transparent wrapper (:func:`fundl.eval_mode`,
:func:`fundl.shared`) has its child's params, so ``"eval_mode_0"`` names the wrapper
and ``"eval_mode_0/dense_0"`` a layer inside it.

- :func:`first_layers`: the first ``k`` layers of a :func:`~fundl.serial` (a body
  without its head) with their params and state;
- :func:`child`: the layer at a path, with its params and state;
- :func:`replace`: the model with the layer at a path swapped for another, whose
  params and state are initialised from a key while the rest keep theirs;
- :func:`graft`: params and state with a subtree copied in from another model's
  (a pretrained body), checked leaf by leaf: structure, shapes and dtypes.

Fine-tuning a pretrained body with a new head::

    body, body_params, body_state = surgery.first_layers(pretrained, params, state, -1)
    model = fl.serial(fl.eval_mode(body), fl.dense(5))       # statistics frozen
    params, state, _ = model.init(key, in_shape)
    params, state = surgery.graft(params, state, "eval_mode_0", body_params, body_state)
    opt = fl.optim.freeze(fl.optim.adam(), "eval_mode_0/*")  # and the body's params too

:func:`fundl.eval_mode` keeps the body's batch-norm statistics frozen (and its
dropout off) while its params still get gradients; :func:`fundl.optim.freeze`
keeps its params as they are.  Use either or both.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import plan
from .core import BUILDERS, Layer, Params, State
from .tree import replace_at
from .validate import SpecError

__all__ = ["first_layers", "child", "replace", "graft", "rebuild", "SurgeryError"]

Path = Union[str, Sequence[str]]


class SurgeryError(ValueError):
    """A path that names no layer, or a cut the model's structure does not allow."""


def _parts(path: Path) -> Tuple[str, ...]:
    if isinstance(path, str):
        return tuple(p for p in path.split("/") if p)
    if isinstance(path, (tuple, list)) and all(isinstance(p, str) for p in path):
        return tuple(p for p in path if p)
    raise TypeError(f"a path is a string such as 'block_1/dense_0' (or a tuple of keys), got "
                    f"{type(path).__name__} {path!r}")


def _show(parts: Sequence[str]) -> str:
    return "/".join(parts) or "<model>"


# --- finding a layer by its path --------------------------------------------------------------

Step = Tuple[Layer, int]   # a parent and the index of the child taken


def _locate(model: Layer, parts: Tuple[str, ...]) -> Tuple[List[Step], Layer]:
    """``(steps, layer)``: the outermost layer at ``parts`` and the (parent, child index)
    pairs leading to it (transparent children, keyed ``""``, are passed through)."""

    def search(layer: Layer, rest: Tuple[str, ...]) -> Optional[Tuple[List[Step], Layer]]:
        if not rest:
            return [], layer
        for i, (k, c) in enumerate(layer.children):
            if k == rest[0]:
                found = search(c, rest[1:])
            elif k == "":
                found = search(c, rest)
            else:
                continue
            if found is not None:
                return [(layer, i)] + found[0], found[1]
        return None

    found = search(model, parts)
    if found is None:
        # the deepest layer reached, for the message
        layer, done = model, 0
        while done < len(parts):
            nxt = _child_keyed(layer, parts[done])
            if nxt is None:
                break
            layer, done = nxt, done + 1
        keys = _visible_keys(layer)
        raise SurgeryError(f"no layer at '{_show(parts)}': '{_show(parts[:done])}' "
                           f"({layer.kind}) has " + (f"the children {', '.join(keys)}" if keys
                                                     else "no children"))
    return found


def _child_keyed(layer: Layer, key: str) -> Optional[Layer]:
    for k, c in layer.children:
        if k == key:
            return c
        if k == "":
            inner = _child_keyed(c, key)
            if inner is not None:
                return inner
    return None


def _visible_keys(layer: Layer) -> List[str]:
    keys: List[str] = []
    for k, c in layer.children:
        keys.extend(_visible_keys(c) if k == "" else [k])
    return keys


def _get(tree: Any, parts: Tuple[str, ...], root: str) -> Any:
    node = tree
    for i, p in enumerate(parts):
        if not isinstance(node, dict) or p not in node:
            where = "/".join((root,) + parts[:i])
            have = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise SpecError(f"{where}: has no '{p}' (it has {have}): are these the model's "
                            f"{root}?")
        node = node[p]
    return node


def _under(path: Tuple[str, ...], prefix: Tuple[str, ...]) -> bool:
    return path[:len(prefix)] == prefix


# --- rebuilding a layer over other children -----------------------------------------------------

def child_layers(layer: Layer) -> Tuple[Layer, ...]:
    """The layers a builder takes to rebuild ``layer``: its children, or the shared layer a
    tied layer uses (:func:`fundl.tied_output`)."""
    if layer.children:
        return tuple(c for _, c in layer.children)
    return () if layer.traits.ties is None else (layer.traits.ties,)


def call_builder(build: Any, config: Dict[str, Any], layers: Sequence[Layer]) -> Layer:
    """``build`` called with ``config`` and the child ``layers`` in the places of its
    parameters that ``config`` lacks (a ``*layers`` parameter takes all of them)."""
    params = list(inspect.signature(build).parameters.values())
    takes_all = any(p.kind is p.VAR_POSITIONAL for p in params)
    args: List[Any] = []
    kwargs: Dict[str, Any] = {}
    pending = list(layers)
    for p in params:
        if p.name in config:
            value = config[p.name]
        elif p.kind is p.VAR_POSITIONAL:
            value, pending = pending, []
        elif p.kind is p.VAR_KEYWORD:
            continue
        else:
            if not pending:
                raise SurgeryError(f"{getattr(build, '__name__', build)}: no child layer for "
                                   f"its argument {p.name!r}")
            value = pending.pop(0)
        if p.kind is p.VAR_POSITIONAL:
            args.extend(value)
        elif p.kind is p.VAR_KEYWORD:
            kwargs.update(value)
        elif takes_all and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            args.append(value)
        else:
            kwargs[p.name] = value
    if pending:
        raise SurgeryError(f"{getattr(build, '__name__', build)}: {len(pending)} child layers "
                           f"left over")
    return build(*args, **kwargs)


def rebuild(layer: Layer, layers: Sequence[Layer]) -> Layer:
    """``layer`` built again over other child ``layers`` (in the order of
    :func:`child_layers`): by its builder when it has one (so the children's keys follow
    their names, as when built by hand), otherwise by its ``compose`` keeping the keys."""
    build = BUILDERS.get(layer.kind)
    if build is not None and layer.kind != "shared":
        out = call_builder(build, dict(layer.config), layers)
        return out if out.name == layer.name else out.replace(name=layer.name)
    if layer.traits.compose is None:
        raise SurgeryError(f"cannot rebuild a {layer.kind} layer over new children: it has no "
                           "registered builder (fundl.builder) and no compose")
    children = tuple((k, c) for (k, _), c in zip(layer.children, layers))
    out = plan.rebuild(layer, children)
    uses_key = layer.traits.uses_key or any(c.traits.uses_key for c in layers)
    return out.replace(traits=out.traits._replace(uses_key=uses_key))


# --- shared layers -----------------------------------------------------------------------------

def _groups_touching(model: Layer, parts: Tuple[str, ...]) -> List[Tuple[Tuple[str, ...], ...]]:
    """The sharing groups (:func:`fundl.plan.share_sites`) with a site under ``parts``."""
    return [g for g in plan.of(model).groups if any(_under(s, parts) for s in g)]


def _ties_outside(layer: Layer, inside: List[int]) -> Optional[Layer]:
    """A layer in ``layer`` tied to a shared layer that is not in it (or None)."""
    if layer.kind == "shared":
        inside.append(id(layer))
    if layer.traits.ties is not None and id(layer.traits.ties) not in inside:
        return layer
    for _, c in layer.children:
        found = _ties_outside(c, inside)
        if found is not None:
            return found
    return None


# --- the calls ---------------------------------------------------------------------------------

def first_layers(model: Layer, params: Params, state: State, k: int
                 ) -> Tuple[Layer, Params, State]:
    """``(layer, params, state)``: a :func:`~fundl.serial` of the first ``k`` layers of the
    serial ``model`` (``k < 0`` drops the last ``-k``, as ``layers[:k]``), with their params
    and state (the same arrays).

    The keys stay as they were (``dense_0``, ``batch_norm_1``, ...), so the result's
    params are ``{key: params[key]}`` for the kept keys.  ``first_layers(model, params,
    state, -1)`` is the body of a classifier without its head.
    """
    if not isinstance(model, Layer) or model.kind != "serial":
        what = model.kind if isinstance(model, Layer) else type(model).__name__
        raise SurgeryError(f"first_layers takes a serial model, got a {what}; use "
                           "surgery.child for a layer inside it")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"first_layers: k must be an int, got {type(k).__name__} {k!r}")
    n = len(model.children)
    kept = model.children[:int(k)]
    if not kept:
        raise SurgeryError(f"first_layers: k={k} keeps no layer of the serial's {n}")
    layer = rebuild(model, [c for _, c in kept])
    keys = [key for key, _ in kept]
    if [key for key, _ in layer.children] != keys:
        raise SurgeryError(f"first_layers: the serial rebuilt keys its layers "
                           f"{[key for key, _ in layer.children]}, not {keys}")
    return (layer, {key: _get(params, (key,), "params") for key in keys},
            {key: _get(state, (key,), "state") for key in keys})


def child(model: Layer, params: Params, state: State, path: Path
          ) -> Tuple[Layer, Params, State]:
    """``(layer, params, state)``: the layer at ``path`` (``"block_1/serial_0"``) with its
    params and state, a model of its own.

    A shared layer (:func:`fundl.shared`) used at several places keeps its params at its
    first place only; a sub-model holding other places of it gets those params at the
    first of them.  A layer tied to a shared layer outside the sub-model
    (:func:`fundl.tied_output`) is refused: take a sub-model holding both.
    """
    parts = _parts(path)
    _, layer = _locate(model, parts)
    tied = _ties_outside(layer, [])
    if tied is not None:
        raise SurgeryError(f"the sub-model at '{_show(parts)}' holds a {tied.kind} tied to a "
                           "shared layer outside it: take a sub-model that holds both")
    sub_params = _get(params, parts, "params")
    sub_state = _get(state, parts, "state")
    for group in _groups_touching(model, parts):
        first, *others = group
        if _under(first, parts):
            continue
        inner = [s for s in others if _under(s, parts)]
        sub_params = replace_at(sub_params, inner[0][len(parts):], _get(params, first, "params"))
    return layer, sub_params, sub_state


def replace(model: Layer, params: Params, state: State, path: Path, layer: Layer, *,
            key: Any, in_shape: Any = None) -> Tuple[Layer, Params, State]:
    """``(new_model, params, state)``: ``model`` with the layer at ``path`` replaced by
    ``layer``, whose params and state are ``layer.init(key, shape)`` for the input shape
    that place receives; every other layer keeps its params and state (the same arrays).

    ``in_shape`` is the model's per-example input shape; it may be left out when the
    model's ``init`` made these params in this process.  The new layer is keyed by its
    own name, as when the model is built by hand (replacing ``"dense_5"`` with a
    ``serial`` gives ``"serial_5"``).  The result is checked against the new model's
    ``init`` (a layer that changes the input of the layers after it is a
    :class:`~fundl.validate.SpecError` naming their params).  Places inside a shared
    layer cannot be replaced.
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"replace: layer must be a fundl Layer, got {type(layer).__name__}")
    parts = _parts(path)
    steps, old = _locate(model, parts)
    for parent, _ in steps:
        if parent.kind == "shared":
            raise SurgeryError(f"'{_show(parts)}' is inside a shared layer: replacing it would "
                               "change every use of it; build the model again instead")
    for group in _groups_touching(model, parts):
        if not all(_under(s, parts) for s in group):
            raise SurgeryError(f"'{_show(parts)}' holds a use of a shared layer that is also "
                               f"used at '{_show(next(s for s in group if not _under(s, parts)))}'"
                               ": replacing it would break the sharing; build the model again")
    if in_shape is None:
        in_shape = _known_in_shape(model, params, state)
    spec = plan.of(model).spec_for(in_shape)
    if spec is None:
        raise SurgeryError(f"replace: the model cannot take the input shape {in_shape!r}")
    node = next(n for n in spec.nodes if n.path == parts)
    new_params, new_state, _ = layer.init(key, node.in_shape)

    # the model rebuilt bottom-up with the new layer in place
    new_model, new_key = layer, None
    for parent, index in reversed(steps):
        kids = list(child_layers(parent))
        kids[index] = new_model
        rebuilt = rebuild(parent, kids)
        if new_key is None:
            new_key = rebuilt.children[index][0] if rebuilt.children else parts[-1]
        new_model = rebuilt
    if not steps:
        return layer, new_params, new_state
    new_parts = parts[:-1] + (new_key,) if new_key else parts
    out_params = replace_at(_drop(params, parts), new_parts, new_params)
    out_state = replace_at(_drop(state, parts), new_parts, new_state)
    new_spec = plan.of(new_model).spec_for(in_shape)
    if new_spec is None:
        raise SurgeryError(f"replace: the model with a {layer.kind} at '{_show(new_parts)}' "
                           f"cannot take the input shape {in_shape!r}")
    out_params = _in_order(out_params, new_spec.params.treedef.skeleton)
    out_state = _in_order(out_state, new_spec.state.treedef.skeleton)
    try:
        new_spec.check(out_params, out_state)
    except SpecError as err:
        raise SpecError(f"{err} (the {layer.kind} at '{_show(new_parts)}' changes what the "
                        "layers after it receive: replace them too)") from None
    return new_model, out_params, out_state


def _drop(tree: Any, parts: Tuple[str, ...]) -> Any:
    """``tree`` without the entry at ``parts`` (new dicts along the path)."""
    if len(parts) == 1:
        return {k: v for k, v in tree.items() if k != parts[0]}
    out = dict(tree)
    out[parts[0]] = _drop(tree[parts[0]], parts[1:])
    return out


def _in_order(tree: Any, skeleton: Any) -> Any:
    """``tree``'s dicts in the key order of ``skeleton`` (the new model's ``init``)."""
    if isinstance(tree, dict) and isinstance(skeleton, dict) and set(tree) == set(skeleton):
        return {k: _in_order(tree[k], skeleton[k]) for k in skeleton}
    return tree


def _known_in_shape(model: Layer, params: Params, state: State) -> Any:
    """The input shape of the spec that made ``params`` and ``state`` in this process."""
    spec = plan.of(model).spec_of(params, state)
    if spec is not None:
        return spec.nodes[0].in_shape
    raise SurgeryError("replace: pass in_shape=, the model's per-example input shape (its "
                       "init did not make these params in this process)")


def graft(params: Params, state: State, path: Path, source_params: Params,
          source_state: State, *, source_path: Path = "") -> Tuple[Params, State]:
    """``(params, state)`` with the subtree at ``path`` replaced by the one at
    ``source_path`` of ``source_params`` and ``source_state`` (another model's: a
    pretrained body), the same arrays.

    Checked before anything is built: at every leaf the two trees must have the same
    structure (dict keys, containers), shapes and dtypes (no cast), or a
    :class:`~fundl.validate.SpecError` names the path in ``params``/``state``
    (``params/eval_mode_0/dense_0/w: the model has shape (2, 64) float32, the source
    (3, 64) float32``).
    """
    parts, src = _parts(path), _parts(source_path)
    out = []
    for root, tree, source in (("params", params, source_params), ("state", state, source_state)):
        here = _get(tree, parts, root)
        there = _get(source, src, "source " + root)
        _same_tree(here, there, "/".join((root,) + parts))
        out.append(replace_at(tree, parts, there))
    return out[0], out[1]


def _same_tree(want: Any, got: Any, where: str) -> None:
    """Raise :class:`SpecError` at the first path where ``got`` is not ``want``'s structure,
    shapes and dtypes."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            raise SpecError(f"{where}: the model has a dict, the source a {type(got).__name__}")
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        if missing or extra:
            raise SpecError(f"{where}: the keys differ: the source lacks {missing}, the model "
                            f"lacks {extra}")
        for k in want:
            _same_tree(want[k], got[k], f"{where}/{k}")
    elif isinstance(want, (list, tuple)):
        if type(got) is not type(want) or len(got) != len(want):
            raise SpecError(f"{where}: the model has a {type(want).__name__} of {len(want)}, the "
                            f"source {type(got).__name__}"
                            + (f" of {len(got)}" if isinstance(got, (list, tuple)) else ""))
        for i, (a, b) in enumerate(zip(want, got)):
            _same_tree(a, b, f"{where}/{i}")
    elif isinstance(want, np.ndarray):
        if not isinstance(got, np.ndarray):
            raise SpecError(f"{where}: the model has an array, the source a {type(got).__name__}")
        if got.shape != want.shape or got.dtype != want.dtype:
            hint = (" (cast the source with fl.tree.cast)" if got.shape == want.shape else "")
            raise SpecError(f"{where}: the model has shape {want.shape} {want.dtype}, the "
                            f"source {got.shape} {got.dtype}{hint}")
    elif type(got) is not type(want):
        raise SpecError(f"{where}: the model has a {type(want).__name__}, the source a "
                        f"{type(got).__name__}")
