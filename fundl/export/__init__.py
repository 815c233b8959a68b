"""Export a trained fundl model to ONNX, for ONNX Runtime and other runtimes.

::

    proto = fundl.export.to_onnx(model, params, state, in_shape=(40,), path="model.onnx")

The graph computes the model in eval mode (``model.apply(params, state, x,
train=False)``: batch norm with its running statistics, dropout as the identity)
with a dynamic batch axis.  Each layer kind has a converter in the file of its
family (``dense.py``, ``conv.py``, ``recurrent.py``, ... mirroring
:mod:`fundl.layers`), filed by kind in :data:`fundl.export.site.CONVERTERS`;
:mod:`fundl.export.graph` is the graph builder they share and
:mod:`fundl.export.model` the walk over a model.

Needs the optional ``onnx`` package (``pip install "fundl[onnx]"``), imported only
when :func:`to_onnx` runs; ``import fundl`` never imports it.
"""

from __future__ import annotations

from typing import Any, Optional

from .site import ExportError

__all__ = ["to_onnx", "ExportError"]


def to_onnx(model: Any, params: Any, state: Any, in_shape: Any, path: Optional[str] = None,
            opset: Optional[int] = None) -> Any:
    """The ONNX ``ModelProto`` of ``model`` in eval mode; written to ``path`` when given.

    ``in_shape`` is the per-example input shape the model was built with (no batch
    axis), or a tuple of them for a multi-input model, as given to ``init``.  Each
    input array becomes a graph input with a dynamic batch axis (its other axes,
    a sequence's length too, are ``in_shape``'s) (``x``, or ``x_0``,
    ``x_1``, ... for a tuple, in order), each output a graph output (``y``, or ``y_0``,
    ``y_1``, ...).  Float inputs have the params' dtype (float32); integer inputs
    (embedding ids, sequence lengths) are int64, attention masks bool.  ``opset`` is
    the ONNX opset (default 17; 17 up to the installed onnx's newest).

    ``params`` and ``state`` are checked against what ``model.init`` makes for
    ``in_shape``.  A layer the export cannot express (a custom layer, or an option
    with no ONNX counterpart) raises :class:`ExportError` naming its path and kind; a
    custom kind can be given a converter (:mod:`fundl.export.site`).
    The result passes ``onnx.checker.check_model(..., full_check=True)``.
    """
    try:
        import onnx
    except ImportError as err:
        raise ImportError('fundl.export.to_onnx needs the onnx package: '
                          'pip install "fundl[onnx]"') from err
    from .model import export

    proto = export(model, params, state, in_shape, opset)
    if path is not None:
        onnx.save(proto, path)
    return proto
