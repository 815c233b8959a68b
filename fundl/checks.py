"""Errors and input checks shared by layers: :class:`LayerError`, shape helpers, dtype checks.

Every check raises a :class:`LayerError` whose message states what was
expected and what was given; combinators prepend the child's key, so the
message a user sees names the layer's path in the model.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

Array = np.ndarray
Shape = Tuple[int, ...]

__all__ = ["LayerError", "Array", "Shape", "int_arg", "int_or_none", "as_shape", "is_shape",
           "normalize_shapes",
           "check_float_input", "check_param_dtype", "check_trailing_shape",
           "check_input_tuple", "check_sequence_in_shape"]


class LayerError(ValueError):
    """Bad input to a layer: the message names the layer's path in the model.

    ``detail`` says what is wrong.  A layer raises it with the detail only; the
    model's checked entry (:mod:`fundl.plan`) locates it: ``path`` becomes the
    layer's position in the parameter tree (``("block_1", "dense_0")``, ``()`` for
    the model itself) and ``kind`` the layer's kind (``"dense"``), so the message
    a user sees points at the exact layer inside the model.
    """

    def __init__(self, detail: str, kind: str = "", path: Optional[Tuple[str, ...]] = None):
        self.detail = detail
        self.kind = kind
        self.path = None if path is None else tuple(path)
        super().__init__(self._message())

    def _message(self) -> str:
        if self.path:
            where = "/".join(self.path)
            kind = f" ({self.kind})" if self.kind and self.kind != self.path[-1] else ""
            return f"layer '{where}'{kind}: {self.detail}"
        if self.kind:
            return f"layer '{self.kind}': {self.detail}"
        return self.detail

    @property
    def located(self) -> bool:
        """Whether the error already names its layer's place in the model."""
        return self.path is not None

    def at(self, path: Tuple[str, ...], kind: str) -> "LayerError":
        """This error located at the layer ``path`` of kind ``kind`` (unless already located)."""
        if self.located:
            return self
        return LayerError(self.detail, self.kind or kind, path)

    def __reduce__(self):  # keep the error picklable despite the custom __init__
        return (LayerError, (self.detail, self.kind, self.path))


def int_or_none(value: Any) -> Optional[int]:
    """``value`` as a Python int if it is an integer (a Python ``int`` or a numpy integer
    scalar, not a bool), else None.  Floats are never integers here, not even ``2.0``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


def _described(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def int_arg(who: str, name: str, value: Any, *, minimum: Optional[int] = 1) -> int:
    """A builder's integer argument ``name`` checked: ``value`` as an int ``>= minimum``
    (``minimum=None``: any int, e.g. an axis).

    Accepted: Python ints and numpy integer scalars.  Refused with a ``TypeError``
    that names the builder ``who`` and the argument: bools (``dense(True)`` is not one
    feature), floats even when integral (``2.0``, ``x / 2``: fundl never rounds or
    truncates a size for you -- pass ``int(...)``), strings, None.  Refused with a
    :class:`LayerError` (a ``ValueError``) naming both: an int below ``minimum``.
    """
    out = int_or_none(value)
    if out is None:
        hint = "; fundl does not round sizes: pass an int" if isinstance(
            value, (float, np.floating)) else ""
        raise TypeError(f"layer '{who}': {name} must be an int, got {_described(value)}{hint}")
    if minimum is not None and out < minimum:
        raise LayerError(f"{name} must be >= {minimum}, got {out}", who)
    return out


def as_shape(shape: Any) -> Shape:
    """``shape`` as a tuple of ints (accepts an int for a 1-D shape)."""
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    if not is_shape(shape):
        raise LayerError(f"expected an input shape (a tuple of ints), got {shape!r}")
    return tuple(int(d) for d in shape)


def is_shape(s: Any) -> bool:
    """Whether ``s`` is one shape (an int or a sequence of ints), not a tuple of shapes."""
    return isinstance(s, (int, np.integer)) or (
        isinstance(s, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in s))


def normalize_shapes(s: Any) -> Any:
    """A shape, or a nested tuple of shapes (multi-input layers), as tuples of ints."""
    if is_shape(s):
        return as_shape(s)
    return tuple(normalize_shapes(a) for a in s)


def check_float_input(x: Any, what: str = "input") -> None:
    """Raise :class:`LayerError` unless ``x`` is a floating-point numpy array."""
    if not isinstance(x, np.ndarray):
        raise LayerError(f"expected {what} to be a numpy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise LayerError(
            f"expected a floating-point {what}, got dtype {x.dtype}; "
            f"cast it first, e.g. x.astype(np.float32)")


def check_param_dtype(x: np.ndarray, param: np.ndarray) -> None:
    """Raise :class:`LayerError` if ``x``'s dtype differs from the parameters' dtype."""
    if x.dtype != param.dtype:
        raise LayerError(
            f"input dtype {x.dtype} does not match the parameter dtype {param.dtype}; "
            f"cast the input (x.astype(np.{param.dtype})) or the params "
            f"(fundl.tree.cast(params, np.{x.dtype}))")


def check_trailing_shape(x: np.ndarray, expected: Sequence[Optional[int]], what: str = "input"
                         ) -> None:
    """Raise :class:`LayerError` unless ``x`` is ``(batch, *expected)``.

    ``None`` entries in ``expected`` match any size.
    """
    expected = tuple(expected)
    want = "(batch, " + ", ".join("?" if d is None else str(d) for d in expected) + ")"
    if x.ndim != len(expected) + 1:
        raise LayerError(
            f"expected {what} of shape {want} (rank {len(expected) + 1}), "
            f"got shape {tuple(x.shape)}")
    for got, exp in zip(x.shape[1:], expected):
        if exp is not None and got != exp:
            raise LayerError(f"expected {what} of shape {want}, got shape {tuple(x.shape)}")


def check_input_tuple(inp: Any, n: int, forms: str) -> Tuple[Any, ...]:
    """``inp`` as a tuple of ``n`` inputs (a multi-input layer's data), or a
    :class:`LayerError` that says what was given; ``forms`` names the expected ones."""
    if not isinstance(inp, (tuple, list)) or len(inp) != n:
        got = (f"an array of shape {tuple(inp.shape)}" if isinstance(inp, np.ndarray)
               else f"{type(inp).__name__} of length {len(inp)}"
               if isinstance(inp, (tuple, list)) else type(inp).__name__)
        raise LayerError(f"expected a tuple of {n} inputs {forms}, got {got}")
    return tuple(inp)


def check_sequence_in_shape(in_shape: Any) -> Shape:
    """``in_shape`` as a per-example ``(time, features)`` shape with ``features >= 1``
    (the ``init`` check of sequence layers); raises :class:`LayerError` otherwise."""
    in_shape = as_shape(in_shape)
    if len(in_shape) != 2 or in_shape[1] < 1:
        raise LayerError(f"expected an input shape (time, features), got {in_shape}")
    return in_shape
