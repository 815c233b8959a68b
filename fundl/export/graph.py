"""The ONNX graph under construction: nodes, initializers, inputs and outputs.

The converters (one file per layer family) add nodes to a :class:`Graph` through
:meth:`Graph.op` and read their layer's arrays through :meth:`Graph.param`; values
are tensor names (strings), and a multi-input or multi-output layer's value is a
tuple of them, nested as fundl's data is.

Element types: float values have the model's float dtype.  A graph input gets its
type from its first typed use (:meth:`Graph.need`: an embedding's ids make it
int64, an attention mask bool); an input nobody asks a type of is a float.  Ops
that keep their input's type (Reshape, Transpose, Identity, ...) pass that
request back to the input, so ids may be flattened before their embedding.

This module imports ``onnx``: it is loaded only by :func:`fundl.export.to_onnx`.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["Graph", "MIN_OPSET"]

#: LayerNormalization is an opset-17 op; older opsets are not supported.
MIN_OPSET = 17

#: Ops whose first output has the type of their first input.
_SAME_TYPE = frozenset({"Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                        "Slice", "Concat", "ReverseSequence", "Expand"})
_BOOL_OPS = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not",
                       "And", "Or"})


class Graph:
    """An ONNX graph being built for one opset and one float dtype.

    ``scope(path)`` names the nodes and initializers made inside it after a layer's
    path (``serial_0/dense_1/MatMul``), so a graph viewer shows the model's tree.
    """

    def __init__(self, opset: int, float_dtype: Any) -> None:
        self.opset = int(opset)
        self.float_dtype = np.dtype(float_dtype)
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.inputs: List[Tuple[str, Tuple[Any, ...]]] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self._names: set = set()
        self._types: Dict[str, Any] = {}       # name -> numpy dtype, or None (an untyped input)
        self._alias: Dict[str, str] = {}       # name -> the name whose type it has
        self._params: Dict[Tuple[int, str], str] = {}
        self._consts: Dict[Tuple[str, Tuple[int, ...], bytes], str] = {}
        self._kept: List[Any] = []             # arrays keyed by id(): kept alive
        self._scope = ""

    # --- names -------------------------------------------------------------------------

    @contextlib.contextmanager
    def scope(self, path: Sequence[str]) -> Iterator[None]:
        """Name what is made inside after ``path`` (a layer's path in the params tree)."""
        outer, self._scope = self._scope, "/".join(path)
        try:
            yield
        finally:
            self._scope = outer

    def fresh(self, hint: str) -> str:
        """A new unique name: ``<scope>/<hint>``, numbered if taken."""
        base = f"{self._scope}/{hint}" if self._scope else hint
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    # --- inputs, outputs ---------------------------------------------------------------

    def add_input(self, name: str, shape: Tuple[Any, ...]) -> str:
        """A graph input of per-example ``shape`` with a dynamic batch axis first; its type
        is fixed by its first use (:meth:`need`), float if none asks."""
        self._names.add(name)
        self._types[name] = None
        self.inputs.append((name, ("batch",) + tuple(shape)))
        return name

    def add_output(self, value: str, name: str, shape: Tuple[Any, ...]) -> None:
        """Graph output ``name`` (an Identity of ``value``) of per-example ``shape``."""
        self._names.add(name)
        self.nodes.append(helper.make_node("Identity", [value], [name], name=name))
        self.outputs.append(helper.make_tensor_value_info(
            name, _elem_type(self.dtype_of(value)), ["batch"] + list(shape)))

    def dtype_of(self, value: str) -> np.dtype:
        """The element type of ``value`` (the float dtype unless known otherwise)."""
        root = self._root(value)
        dtype = self._types.get(root)
        return self.float_dtype if dtype is None else np.dtype(dtype)

    def need(self, value: str, dtype: Any) -> str:
        """``value`` as ``dtype``: an untyped graph input it comes from gets that type;
        a value of another known type is cast."""
        dtype = np.dtype(dtype)
        root = self._root(value)
        if root in self._types and self._types[root] is None:
            self._types[root] = dtype
            return value
        if self.dtype_of(value) == dtype:
            return value
        return self.op("Cast", value, to=_elem_type(dtype), hint="Cast")

    def _root(self, value: str) -> str:
        while value in self._alias:
            value = self._alias[value]
        return value

    # --- nodes ---------------------------------------------------------------------------

    def op(self, op_type: str, *inputs: Optional[str], outputs: int = 1, hint: str = "",
           **attrs: Any) -> Any:
        """Add an ``op_type`` node; returns its output name (a tuple of ``outputs`` names
        when ``outputs > 1``).  ``None`` inputs are ONNX's omitted optional inputs."""
        name = self.fresh(hint or op_type)
        outs = [name] if outputs == 1 else [self.fresh(f"{hint or op_type}:{i}")
                                            for i in range(outputs)]
        ins = ["" if v is None else v for v in inputs]
        while ins and ins[-1] == "":
            ins.pop()
        self.nodes.append(helper.make_node(op_type, ins, outs, name=name, **attrs))
        if op_type in _SAME_TYPE and ins:
            self._alias[outs[0]] = ins[0]
        elif op_type == "Cast":
            self._types[outs[0]] = helper.tensor_dtype_to_np_dtype(attrs["to"])
        elif op_type in _BOOL_OPS:
            self._types[outs[0]] = np.dtype(bool)
        return outs[0] if outputs == 1 else tuple(outs)

    # --- constants ---------------------------------------------------------------------

    def param(self, array: np.ndarray, hint: str,
              transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
              tag: str = "") -> str:
        """An initializer holding a layer's array (``transform(array)`` if given, e.g. a
        conv kernel in ONNX's layout; ``tag`` names the transform).  The same array
        object with the same tag is one initializer, however often it is used: a
        shared layer's params are stored once."""
        key = (id(array), tag)
        name = self._params.get(key)
        if name is None:
            value = np.asarray(array if transform is None else transform(array), order="C")
            name = self._params[key] = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(value, name))
            self._kept.append(array)
        return name

    def const(self, array: Any, hint: str = "const", dtype: Any = None) -> str:
        """An initializer holding a constant the converter computed (equal constants are
        one initializer)."""
        value = np.asarray(array, dtype=dtype, order="C")   # (0-d stays 0-d)
        key = (value.dtype.str, value.shape, hashlib.sha256(value.data).digest())
        name = self._consts.get(key)
        if name is None:
            name = self._consts[key] = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(value, name))
            if value.dtype.kind == "b":
                self._types[name] = value.dtype
        return name

    def floats(self, values: Any, hint: str = "const") -> str:
        """A constant of the model's float dtype."""
        return self.const(values, hint, self.float_dtype)

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        """An int64 constant (shapes, axes, indices)."""
        return self.const(list(values), hint, np.int64)

    # --- ops whose form depends on the opset -------------------------------------------------

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True,
               hint: str = "") -> str:
        """``ReduceMean``/``ReduceSum``/``ReduceMax`` over ``axes`` (an input from opset 18,
        an attribute before, except ReduceSum's since 13)."""
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, x, self.ints(axes, "axes"), keepdims=int(keepdims), hint=hint)
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims), hint=hint)

    def reshape(self, x: str, per_example: Sequence[int]) -> str:
        """``x`` reshaped to ``(batch, *per_example)`` (the batch axis stays dynamic)."""
        return self.op("Reshape", x, self.ints([-1] + list(per_example)))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", x, self.ints(axes, "axes"))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Squeeze", x, self.ints(axes, "axes"))

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", x, perm=list(perm))

    # --- the model ---------------------------------------------------------------------------

    def model(self, name: str, doc: str = "") -> onnx.ModelProto:
        """The finished ``ModelProto`` (inputs typed, the lowest IR version for the opset)."""
        inputs = [helper.make_tensor_value_info(n, _elem_type(self.dtype_of(n)), list(shape))
                  for n, shape in self.inputs]
        graph = helper.make_graph(self.nodes, name, inputs, self.outputs, self.initializers,
                                  doc_string=doc)
        opsets = [helper.make_opsetid("", self.opset)]
        return helper.make_model(graph, opset_imports=opsets, producer_name="fundl",
                                 ir_version=helper.find_min_ir_version_for(opsets))


def _elem_type(dtype: Any) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

