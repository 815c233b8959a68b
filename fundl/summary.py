"""A Keras-style table of a model: each layer's path, kind, output shape and parameter count.

``summary(model, in_shape)`` initialises the model once and reads the nodes its
plan recorded (:class:`fundl.plan.Node`: every layer's path, kind and shapes,
inside ``parallel`` as well).  A layer shared with an earlier place
(:func:`fundl.shared`) shows 0 params there.  A hand-written combinator (a layer
whose children fundl cannot see) gets one row per top-level entry of its params.
The totals are exact: ``fundl.tree.size(params)`` and ``fundl.tree.size(state)``.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple

from . import plan, random, tree
from .core import Layer

__all__ = ["summary", "Summary", "SummaryRow", "summary_rows"]


class SummaryRow(NamedTuple):
    """One line of the table: ``path`` in the params tree, layer ``kind`` (``shared(dense)``
    for a wrapper and the layer it wraps), ``out_shape`` (per example; ``None`` when
    unknown), ``params`` and ``state`` sizes."""

    path: str
    kind: str
    out_shape: Optional[Any]
    params: int
    state: int


def summary_rows(model: Layer, in_shape: Any, key: Any = None
                 ) -> Tuple[List[SummaryRow], Any, Any, Any]:
    """``(rows, params, state, out_shape)`` behind :func:`summary`."""
    key = random.key(0) if key is None else key
    planned = plan.of(model)
    params, state, out_shape = planned.init(key, in_shape)
    spec = planned.spec_for(in_shape)
    rows = [SummaryRow("/".join(place.path),
                       place.nodes[0].layer.kind + "".join(f"({n.layer.kind})"
                                                            for n in place.nodes[1:]),
                       place.nodes[0].out_shape, place.params, place.state)
            for place in (planned.places(spec) if spec is not None else ())]
    if not rows and isinstance(params, dict) and not model.children:
        # No children to consult: one row per top-level entry of the params tree.
        rows = [SummaryRow(k, "?", None, tree.size(v),
                           tree.size(state.get(k, {})) if isinstance(state, dict) else 0)
                for k, v in params.items()]
    return rows, params, state, out_shape


class Summary(str):
    """The table as a string, shown as itself (not quoted) in a notebook, with an HTML form."""

    rows: List[SummaryRow]

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        import html
        head = "".join(f"<th>{h}</th>" for h in ("Layer", "Kind", "Output shape", "Params"))
        body = "".join(
            f"<tr><td><code>{html.escape(r.path)}</code></td><td>{html.escape(r.kind)}</td>"
            f"<td>{html.escape(_fmt(r.out_shape))}</td><td style='text-align:right'>"
            f"{r.params:,}</td></tr>" for r in self.rows)
        foot = "<br>".join(html.escape(line) for line in self.splitlines()[-3:])
        return f"<table><tr>{head}</tr>{body}</table><p>{foot}</p>"


def _fmt(shape: Any) -> str:
    if shape is None:
        return "?"
    return str(tuple(shape)) if not isinstance(shape, tuple) else str(shape)


def summary(model: Layer, in_shape: Any, *, key: Any = None, print_out: bool = False) -> Summary:
    """The model as a table: layer path (and kind), output shape, parameter count.

    ``in_shape`` is the per-example input shape.  The last lines give the input
    and output shapes, the total parameter count (equal to
    ``fundl.tree.size(params)``) and the size of the non-trained state.
    ``print_out=True`` also prints the table.  Returns a :class:`Summary` (a
    string that a notebook shows as a table).
    """
    rows, params, state, out_shape = summary_rows(model, in_shape, key)
    header = ("Layer (kind)", "Output shape", "Params")
    cells = [(f"{'  ' * r.path.count('/')}{r.path} ({r.kind})", _fmt(r.out_shape), f"{r.params:,}")
             for r in rows]
    w0 = max([len(header[0])] + [len(c[0]) for c in cells])
    w1 = max([len(header[1])] + [len(c[1]) for c in cells])
    w2 = max([len(header[2])] + [len(c[2]) for c in cells])
    width = w0 + w1 + w2 + 4
    lines = [f"Model: {model.kind}", "=" * width,
             f"{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>{w2}}", "-" * width]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in cells]
    lines += ["=" * width,
              f"Input shape: {_fmt(in_shape)}    Output shape: {_fmt(out_shape)}",
              f"Total params: {tree.size(params):,}",
              f"Non-trainable state: {tree.size(state):,}"]
    text = Summary("\n".join(lines))
    text.rows = rows
    if print_out:
        print(text)
    return text
