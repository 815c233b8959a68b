"""A whole model to an ONNX ``ModelProto``: inputs, the walk over its layers, outputs.

:func:`export` builds the graph of ``model.apply(params, state, x, train=False)``
for per-example input shape ``in_shape``: one graph input per input array (a
tuple ``in_shape`` gives several, named ``x_0``, ``x_1``, ...; one input is
``x``), each with a dynamic batch axis ``"batch"``; the walk converts every layer
with the converter filed under its kind (:data:`fundl.export.site.CONVERTERS`),
in a parent-before-children order, knowing each layer's shapes from the model's
plan (:func:`fundl.plan.of(model).spec_for(in_shape)`); the outputs are ``y`` (or
``y_0``, ``y_1``, ... for a tuple).  A shared layer's params are filled in at
each of its uses (as :func:`fundl.plan.tie` does when the model runs) and stored
once.  This module imports ``onnx``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import onnx

from .. import plan, random, tree
from ..checks import is_shape, normalize_shapes
from ..core import Layer
from . import (activations, attention, combinators, conv, conv_transpose, dense,  # noqa: F401
               dropout, embedding, norm, pool, positional, recurrent, reshape, upsample)
from .graph import MIN_OPSET, Graph
from .site import CONVERTERS, ExportError, Path, Site, check_built_by_fundl

__all__ = ["export", "DEFAULT_OPSET"]

#: The opset used unless another is asked for: old enough for most runtimes
#: (onnxruntime-web, mobile), new enough for LayerNormalization.
DEFAULT_OPSET = 17


class Exporter:
    """Walks a model, converting each layer where it stands (see :meth:`run`)."""

    def __init__(self, g: Graph, nodes: Dict[Tuple[Path, int], Any]) -> None:
        self.g = g
        self.nodes = nodes

    def run(self, layer: Layer, path: Path, params: Any, state: Any, x: Any) -> Any:
        """The graph value of ``layer``'s eval-mode output on the graph value ``x``."""
        node = self.nodes.get((path, id(layer)))
        convert = CONVERTERS.get(layer.kind)
        if convert is None:
            raise ExportError("there is no ONNX converter for this kind of layer (every "
                              "built-in kind has one; a custom kind needs one registered with "
                              "fundl.export.site.converts)", layer.kind, path)
        check_built_by_fundl(layer, path)
        if node is None:
            raise ExportError("this layer did not run in the model's init for the given "
                              "in_shape", layer.kind, path)
        site = Site(self.g, layer, path, params, state, node.in_shape, node.out_shape, self)
        with self.g.scope(path):
            try:
                return convert(site, x)
            except ExportError:
                raise
            except Exception as err:  # noqa: BLE001 - a converter's failure, located
                raise ExportError(f"its ONNX converter failed: {type(err).__name__}: {err}",
                                  layer.kind, path) from err


def export(model: Layer, params: Any, state: Any, in_shape: Any,
           opset: Optional[int] = None) -> onnx.ModelProto:
    """The ONNX model of ``model``'s eval-mode forward (see :func:`fundl.export.to_onnx`)."""
    if not isinstance(model, Layer):
        raise TypeError(f"to_onnx: model must be a fundl Layer, got {type(model).__name__}")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"to_onnx: opset must be in [{MIN_OPSET}, {newest}] (this onnx "
                         f"package's newest), got {opset}")
    in_shape = _checked_shape(in_shape, in_shape)
    spec = plan.of(model).spec_for(in_shape)
    if spec is None:
        try:
            model.init(random.key(0), in_shape)   # the failure, located at its layer
            problem = "it failed"
        except Exception as err:  # noqa: BLE001 - reported as the reason
            problem = str(err)
        raise ValueError(f"to_onnx: the model's init cannot take in_shape {in_shape!r}: "
                         f"{problem}; pass the per-example shape the model was built for "
                         f"(no batch axis)")
    spec.check(params, state)
    params = plan.fill_shared(params, plan.of(model).groups)

    g = Graph(opset, _float_dtype(params, state))
    nodes = {(n.path, id(n.layer)): n for n in spec.nodes}
    x = _inputs(g, in_shape, "x")
    y = Exporter(g, nodes).run(model, (), params, state, x)
    _outputs(g, y, spec.out_shape, "y")
    proto = g.model(model.kind, doc=f"fundl model, eval mode: {model!r}")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _checked_shape(shape: Any, whole: Any) -> Any:
    """``shape`` (a per-example shape, or nested tuples of them) as tuples of ints."""
    if is_shape(shape):
        return normalize_shapes(shape)
    if not isinstance(shape, (tuple, list)) or not shape:
        raise TypeError(f"to_onnx: in_shape must be a per-example shape (a tuple of ints, no "
                        f"batch axis) or a tuple of them, got {whole!r}")
    return tuple(_checked_shape(s, whole) for s in shape)


def _float_dtype(params: Any, state: Any) -> np.dtype:
    """The model's float dtype: its params' (float32 when it has none)."""
    for leaf in tree.leaves(params) + tree.leaves(state):
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f":
            return leaf.dtype
    return np.dtype(np.float32)


def _inputs(g: Graph, shape: Any, name: str) -> Any:
    """Graph inputs for the (nested) per-example ``shape``: a name, or a tuple of them."""
    if is_shape(shape):
        return g.add_input(name, tuple(shape))
    return tuple(_inputs(g, s, f"{name}_{i}") for i, s in enumerate(shape))


def _outputs(g: Graph, y: Any, shape: Any, name: str) -> None:
    if isinstance(y, (tuple, list)):
        if is_shape(shape) or len(shape) != len(y):
            raise ExportError(f"the model's output structure {shape!r} does not match the "
                              f"graph's ({len(y)} values)", "", ())
        for i, (yi, si) in enumerate(zip(y, shape)):
            _outputs(g, yi, si, f"{name}_{i}")
        return
    g.add_output(y, name, tuple(shape))
