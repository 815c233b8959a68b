"""Embeddings to ONNX: ``Gather`` of the table's rows; the tied output head's ``Gemm``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .site import Site, converts


@converts("embedding")
def embedding(s: Site, x: Any) -> Any:
    """``Gather(w, ids, axis=0)``: ids ``(batch, ...)`` (an int64 graph input) to
    ``(batch, ..., features)``."""
    return s.g.op("Gather", s.param("w"), s.g.need(x, np.int64), axis=0)


@converts("tied_output")
def tied_output(s: Site, x: Any) -> Any:
    """``x @ w.T`` with the shared embedding's table ``w`` (the same initializer as the
    embedding's): ``Gemm(transB=1)`` on ``x`` flattened to ``(-1, features)``, then
    reshaped to ``(batch, ..., vocab_size)``."""
    g = s.g
    features = s.in_shape[-1]
    x2 = x if len(s.in_shape) == 1 else g.op("Reshape", x, g.ints([-1, features]))
    y = g.op("Gemm", x2, s.param("w"), transB=1)
    return y if len(s.in_shape) == 1 else g.reshape(y, s.out_shape)
