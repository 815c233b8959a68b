"""Where a converter meets its layer: :class:`Site`, the converter table and its errors.

A converter is ``convert(site, x) -> y``: it adds to ``site.g`` (a
:class:`~fundl.export.graph.Graph`) the ONNX nodes computing the layer's eval-mode
forward (``layer.apply(params, state, x, train=False)``) of the graph value ``x``,
and returns the value ``y`` (a tensor name, or a tuple of them for several
outputs).  It reads the layer's builder arguments from ``site.config``, its
arrays from ``site.params``/``site.state``, its per-example shapes from
``site.in_shape``/``site.out_shape`` (as ``init`` saw them), and converts its
children with ``site.child(key, x)``.  :func:`converts` files a converter under
the layer kinds it handles; the table is keyed by ``layer.kind``, never by a
layer's (renamable) name.  A custom layer kind can be given a converter the same
way (``@converts("my_kind")``), written with :class:`~fundl.export.graph.Graph`'s ops.

No ``onnx`` import here: :class:`ExportError` can be caught without it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np

from ..checks import LayerError
from ..core import BUILDERS, Layer

__all__ = ["ExportError", "Site", "Converter", "CONVERTERS", "converts", "check_built_by_fundl"]

Path = Tuple[str, ...]


class ExportError(LayerError):
    """A model (or one of its layers) that the export cannot express; the message names the
    layer's path and kind (``layer 'serial_0/scaled_tanh_1' (scaled_tanh): ...``)."""


class Site(NamedTuple):
    """One layer of the model being exported, as its converter sees it.

    ``g``: the graph; ``layer``: the fundl layer; ``path``: its place in the params
    tree; ``params``/``state``: its own arrays (a shared layer's at every use);
    ``in_shape``/``out_shape``: its per-example shapes as ``init`` saw them;
    ``exporter``: what walks the model (:meth:`child` goes through it).
    """

    g: Any
    layer: Layer
    path: Path
    params: Any
    state: Any
    in_shape: Any
    out_shape: Any
    exporter: Any

    @property
    def config(self) -> Any:
        """The builder's arguments, defaults filled in (``dense(16).config["features"]``)."""
        return self.layer.config

    @property
    def kind(self) -> str:
        return self.layer.kind

    def child(self, key: str, x: Any) -> Any:
        """Convert the child filed under ``key`` (``""``: a transparent wrapper's child, with
        this layer's params and path) on the graph value ``x``."""
        child = dict(self.layer.children)[key]
        if key == "":
            return self.exporter.run(child, self.path, self.params, self.state, x)
        return self.exporter.run(child, self.path + (key,), self.params[key], self.state[key], x)

    def param(self, key: str, transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
              tag: str = "") -> str:
        """The initializer of ``params[key]`` (or ``transform(params[key])``, e.g. a kernel in
        ONNX's layout, named by ``tag``), made once per array and tag."""
        return self.g.param(self.params[key], key + (f":{tag}" if tag else ""), transform, tag)

    def fail(self, detail: str) -> ExportError:
        """An :class:`ExportError` naming this layer's path and kind."""
        return ExportError(detail, self.kind, self.path)


Converter = Callable[[Site, Any], Any]

#: The converters, by layer kind (filled by :func:`converts` in the family modules).
CONVERTERS: Dict[str, Converter] = {}


def converts(*kinds: str) -> Callable[[Converter], Converter]:
    """File the decorated converter under ``kinds`` in :data:`CONVERTERS`."""
    def register(fn: Converter) -> Converter:
        for kind in kinds:
            CONVERTERS[kind] = fn
        return fn
    return register


def check_built_by_fundl(layer: Layer, path: Path) -> None:
    """Raise :class:`ExportError` unless ``layer``'s record is one its kind's builder makes:
    every config entry an argument of the builder, every required argument present (the
    child layers aside).  A custom ``Layer`` that happens to be called ``"dense"`` is
    refused here rather than misread as fundl's dense."""
    build = BUILDERS.get(layer.kind)
    if build is None:
        return          # a kind no builder records: its converter was registered for it
    params = inspect.signature(build).parameters
    unknown = sorted(set(layer.config) - set(params))
    required = [p.name for p in params.values()
                if p.default is inspect.Parameter.empty and "Layer" not in str(p.annotation)
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [n for n in required if n not in layer.config]
    if unknown or missing:
        raise ExportError(f"this layer is called {layer.kind!r} but was not built by "
                          f"fundl.{layer.kind} (its config lacks {missing} or has unknown "
                          f"entries {unknown}), so the export cannot read it",
                          layer.kind, path)
