"""A Keras-style table of a model: each layer's path, output shape and parameter count.

``summary(model, in_shape)`` initialises the model once and lists its layers.
Child layers are found through ``layer.children`` (the ``(key, child)`` pairs
a combinator was built from); the rows are nested paths (``block_1/dense_0``)
and, for a chain of children (``serial``, ``residual``), each row shows the
child's output shape; children that are not a chain (``parallel``) show ``?``.
A layer without children that still has a dict of params (a hand-written
combinator) gets one row per top-level entry of its params tree.  The totals
are always exact: ``fundl.tree.size(params)`` and ``fundl.tree.size(state)``.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from . import random, tree
from .checks import normalize_shapes
from .core import Layer

__all__ = ["summary", "SummaryRow", "summary_rows"]


class SummaryRow(NamedTuple):
    """One line of the table: ``path`` in the params tree, layer ``kind`` (its name),
    ``out_shape`` (per example; ``None`` when unknown), ``params`` and ``state`` sizes."""

    path: str
    kind: str
    out_shape: Optional[Any]
    params: int
    state: int


def _children(layer: Layer) -> Sequence[Tuple[str, Layer]]:
    return tuple(getattr(layer, "children", ()) or ())


def _chain_shapes(kids: Sequence[Tuple[str, Layer]], key: Any, in_shape: Any, params: dict,
                  out_shape: Any) -> Optional[List[Tuple[Any, Any, Any]]]:
    """``[(key, in_shape, out_shape)]`` per child if the children form a chain, else ``None``.

    A chain (``serial``) feeds each child the previous child's output; it is
    accepted only if every child's parameter count matches the model's and the
    last output shape is the model's.
    """
    shape, out = in_shape, []
    for (k, child), sub in zip(kids, random.split(key, len(kids))):
        try:
            p, _, c_out = child.init(sub, shape)
        except Exception:  # the children are not a chain (parallel, fan_out, ...)
            return None
        if tree.size(p) != tree.size(params[k]):
            return None
        out.append((sub, shape, c_out))
        shape = c_out
    return out if normalize_shapes(shape) == normalize_shapes(out_shape) else None


def _rows(layer: Layer, key: Any, in_shape: Any, prefix: str,
          params: Any, state: Any, out_shape: Any) -> List[SummaryRow]:
    """Rows for the children of ``layer`` (initialised to ``params``/``state``), recursively."""
    kids = _children(layer)
    sizes_of = (lambda t, k: tree.size(t.get(k, {})) if isinstance(t, dict) else 0)
    if kids and isinstance(params, dict) and all(k in params for k, _ in kids):
        chain = _chain_shapes(kids, key, in_shape, params, out_shape)
        rows: List[SummaryRow] = []
        for i, (k, child) in enumerate(kids):
            path = f"{prefix}/{k}" if prefix else k
            c_state = state.get(k, {}) if isinstance(state, dict) else {}
            sub, c_in, c_out = chain[i] if chain else (None, None, None)
            rows.append(SummaryRow(path, child.name, c_out, tree.size(params[k]),
                                   sizes_of(state, k)))
            if chain:
                rows.extend(_rows(child, sub, c_in, path, params[k], c_state, c_out))
        return rows
    if not prefix and isinstance(params, dict) and params:
        # No children to consult: one row per top-level entry of the params tree.
        return [SummaryRow(k, "?", None, tree.size(v), sizes_of(state, k))
                for k, v in params.items()]
    return []


def summary_rows(model: Layer, in_shape: Any, key: Any = None
                 ) -> Tuple[List[SummaryRow], Any, Any, Any]:
    """``(rows, params, state, out_shape)`` behind :func:`summary`."""
    key = random.key(0) if key is None else key
    params, state, out_shape = model.init(key, in_shape)
    return _rows(model, key, in_shape, "", params, state, out_shape), params, state, out_shape


def _fmt(shape: Any) -> str:
    if shape is None:
        return "?"
    return str(tuple(shape)) if not isinstance(shape, tuple) else str(shape)


def summary(model: Layer, in_shape: Any, *, key: Any = None, print_out: bool = False) -> str:
    """The model as a table: layer path (and kind), output shape, parameter count.

    ``in_shape`` is the per-example input shape.  The last lines give the input
    and output shapes, the total parameter count (equal to
    ``fundl.tree.size(params)``) and the size of the non-trained state.
    ``print_out=True`` also prints the table.  Returns the table as a string.
    """
    rows, params, state, out_shape = summary_rows(model, in_shape, key)
    header = ("Layer (kind)", "Output shape", "Params")
    cells = [(f"{'  ' * r.path.count('/')}{r.path} ({r.kind})", _fmt(r.out_shape), f"{r.params:,}")
             for r in rows]
    w0 = max([len(header[0])] + [len(c[0]) for c in cells])
    w1 = max([len(header[1])] + [len(c[1]) for c in cells])
    w2 = max([len(header[2])] + [len(c[2]) for c in cells])
    width = w0 + w1 + w2 + 4
    lines = [f"Model: {model.name}", "=" * width,
             f"{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>{w2}}", "-" * width]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in cells]
    lines += ["=" * width,
              f"Input shape: {_fmt(in_shape)}    Output shape: {_fmt(out_shape)}",
              f"Total params: {tree.size(params):,}",
              f"Non-trainable state: {tree.size(state):,}"]
    text = "\n".join(lines)
    if print_out:
        print(text)
    return text
