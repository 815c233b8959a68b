"""Dropout to ONNX: the identity (the export is of the model in eval mode)."""

from __future__ import annotations

from typing import Any

from .site import Site, converts


@converts("dropout")
def dropout(s: Site, x: Any) -> Any:
    """Eval-mode dropout is the identity: no node, ``x`` itself."""
    return x
