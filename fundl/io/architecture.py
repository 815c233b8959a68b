"""A model's architecture as plain data, and the model rebuilt from it without running a file.

::

    record = fundl.io.model_record(model, in_shape=(40, 1))   # JSON-able dicts and lists
    model, in_shape = fundl.io.model_from_record(record)       # fundl's own builders only

A layer's record is what it says about itself (:class:`~fundl.core.Layer`): its
``kind`` (the builder), its ``name``, its ``config`` (the builder's arguments) and
its ``children`` as ``[key, record]`` pairs keyed as in the params tree.  A layer
built by :func:`fundl.shared` is recorded once, with an ``id``; its other uses (and
a :func:`fundl.tied_output` tied to it) are ``{"ref": id}``.

Rebuilding calls a builder from an allow-list: fundl's own (the functions of
``fundl.core.BUILDERS`` defined in fundl) and those passed as ``builders=``.
Nothing a record names is imported, evaluated or looked up anywhere else.

Config values that are not plain data are encoded safely, or refused:

- ``None``, bools, ints, strings and floats as JSON (``inf``/``nan`` tagged),
  tuples as ``{"$tuple": [...]}``, lists as lists;
- dtypes by name (``{"$dtype": "float32"}``) and numpy scalars with theirs;
- fundl's initializers by name: the functions of :mod:`fundl.initializers`
  (``{"$init": "glorot_uniform"}``) and the products of its factories with their
  arguments (``{"$init": "normal", "args": {"std": 0.02}}``);
- anything else (a function of your own, an MPI communicator, an array) is a
  :class:`~fundl.io.CheckpointError` at save time naming the layer's path and the
  argument.  A layer with no registered builder (a hand-made ``Layer``, an
  ``elementwise_layer``) is refused the same way.

A record is checked when it is made: the model rebuilt from it must give the same
record (kinds, names, configurations and keys all the way down).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from .. import initializers, plan
from ..core import BUILDERS, Layer
from ..surgery import SurgeryError, call_builder
from .files import CheckpointError

__all__ = ["model_record", "model_from_record", "fundl_builders", "known_in_shape",
           "params_and_state", "RECORD_FORMAT"]

RECORD_FORMAT = "fundl.model"
_RECORD_VERSION = 1
_MAX_DEPTH = 128

#: The initializers recorded by name: fundl's functions, and its factories' products.
_NAMED_INITS = ("zeros", "ones", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
                "lecun_normal", "lecun_uniform", "torch_default")
_FACTORIES = {"constant": (0.0,), "uniform": (), "normal": (), "variance_scaling": (1.0,),
              "orthogonal": ()}
_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64", "complex64", "complex128")


def fundl_builders() -> Dict[str, Callable[..., Layer]]:
    """fundl's own builders by kind: those of ``fundl.core.BUILDERS`` defined in fundl."""
    return {kind: build for kind, build in BUILDERS.items()
            if build.__module__ == "fundl" or build.__module__.startswith("fundl.")}


def _factory_codes() -> Dict[Any, str]:
    """The code object of each initializer factory's product -> the factory's name."""
    return {getattr(initializers, name)(*args).__code__: name for name, args in _FACTORIES.items()}


# --- values ------------------------------------------------------------------------------------

class _Refused(Exception):
    """A config value with no safe encoding (the message says what it is)."""


def encode_value(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-able data (see the module docstring); :class:`_Refused` otherwise."""
    if depth > _MAX_DEPTH:
        raise _Refused("nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and type(value) is not bool and not isinstance(value, np.generic):
        return int(value)
    if type(value) is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"$tuple": [encode_value(v, depth + 1) for v in value]}
    if type(value) is list:
        return [encode_value(v, depth + 1) for v in value]
    if type(value) is dict and all(isinstance(k, str) for k in value):
        return {"$dict": {k: encode_value(v, depth + 1) for k, v in value.items()}}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        name = np.dtype(value).name
        if name not in _DTYPES:
            raise _Refused(f"the dtype {name}, which a record does not hold")
        return {"$dtype": name}
    if isinstance(value, np.generic) and value.dtype.name in _DTYPES:
        return {"$scalar": value.dtype.name, "value": encode_value(value.item(), depth + 1)}
    if callable(value):
        return _encode_init(value)
    raise _Refused(f"a {type(value).__module__}.{type(value).__qualname__}")


def _encode_init(fn: Any) -> Dict[str, Any]:
    for name in _NAMED_INITS:
        if fn is getattr(initializers, name):
            return {"$init": name}
    code = getattr(fn, "__code__", None)
    factory = None if code is None else _factory_codes().get(code)
    if code is not None and factory is not None \
            and getattr(fn, "__module__", None) == initializers.__name__:
        cells = fn.__closure__ or ()
        args = {n: c.cell_contents for n, c in zip(code.co_freevars, cells)}
        if all(type(v) in (int, float, str, bool) for v in args.values()):
            rebuilt = getattr(initializers, factory)(**args)
            if rebuilt.__code__ is code:
                return {"$init": factory, "args": {k: encode_value(v) for k, v in args.items()}}
    what = getattr(fn, "__qualname__", type(fn).__name__)
    raise _Refused(f"the function {what}, which is not one of fundl's initializers (a record "
                   f"holds fundl.initializers' functions ({', '.join(_NAMED_INITS)}) and the "
                   f"products of its factories ({', '.join(_FACTORIES)}))")


def decode_value(data: Any, where: str, depth: int = 0) -> Any:
    """The value of :func:`encode_value`'s ``data``; :class:`CheckpointError` naming ``where``
    for anything else."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"{where}: nested too deeply")
    if data is None or isinstance(data, (bool, str, int)):
        return data
    if type(data) is float:
        if not math.isfinite(data):
            raise CheckpointError(f"{where}: a non-finite float must be tagged")
        return data
    if type(data) is list:
        return [decode_value(v, where, depth + 1) for v in data]
    if type(data) is not dict or len(data) not in (1, 2):
        raise CheckpointError(f"{where}: malformed value {str(data)[:80]}")
    tag = next(iter(data))
    body = data[tag]
    if tag == "$tuple" and len(data) == 1 and type(body) is list:
        return tuple(decode_value(v, where, depth + 1) for v in body)
    if tag == "$dict" and len(data) == 1 and type(body) is dict:
        return {k: decode_value(v, where, depth + 1) for k, v in body.items()}
    if tag == "$float" and len(data) == 1 and body in ("inf", "-inf", "nan"):
        return float(body)
    if tag == "$dtype" and len(data) == 1 and body in _DTYPES:
        return np.dtype(body).type
    if tag == "$scalar" and set(data) == {"$scalar", "value"} and body in _DTYPES:
        value = data["value"]
        if isinstance(value, (bool, int, float)):
            return np.dtype(body).type(value)
    if tag == "$init":
        if len(data) == 1 and body in _NAMED_INITS:
            return getattr(initializers, body)
        args = data.get("args")
        if set(data) == {"$init", "args"} and body in _FACTORIES and type(args) is dict \
                and all(type(v) in (int, float, str, bool) for v in args.values()):
            try:
                return getattr(initializers, body)(**args)
            except (TypeError, ValueError) as err:
                raise CheckpointError(f"{where}: bad arguments for the initializer {body}: "
                                      f"{err}") from None
        raise CheckpointError(f"{where}: unknown initializer {str(data)[:80]}")
    raise CheckpointError(f"{where}: malformed value {str(data)[:80]}")


# --- layers ------------------------------------------------------------------------------------

def _where(path: str, layer: Layer) -> str:
    return f"layer '{path or '<model>'}' ({layer.kind})"


def _encode_layer(layer: Layer, path: str, ids: Dict[int, int]) -> Dict[str, Any]:
    if layer.kind == "shared" and id(layer) in ids:
        return {"ref": ids[id(layer)]}
    if layer.kind not in BUILDERS:
        raise CheckpointError(
            f"cannot record the architecture: {_where(path, layer)} has no registered builder "
            "(a hand-made Layer or an elementwise_layer): build it with a function decorated "
            "with fundl.builder, or save the params and state alone")
    config = {}
    for arg, value in layer.config.items():
        try:
            config[arg] = encode_value(value)
        except _Refused as err:
            hint = (" (a sync_batch_norm model's checkpoint loads into the same model built with "
                    "fl.batch_norm: record that one)" if layer.kind == "sync_batch_norm" else "")
            raise CheckpointError(f"cannot record the architecture: {_where(path, layer)}: its "
                                  f"argument {arg!r} is {err}{hint}") from None
    node: Dict[str, Any] = {"kind": layer.kind, "name": layer.name, "config": config}
    if layer.kind == "shared":
        node["id"] = ids[id(layer)] = len(ids)
    if layer.children:
        node["children"] = [[k, _encode_layer(c, f"{path}/{k}".strip("/") if k else path, ids)]
                            for k, c in layer.children]
    elif layer.traits.ties is not None:
        node["ties"] = _encode_layer(layer.traits.ties, path, ids)
    return node


def model_record(model: Layer, in_shape: Any = None) -> Dict[str, Any]:
    """The architecture of ``model`` (and its per-example ``in_shape``, if given) as
    JSON-able data: ``{"format", "version", "in_shape", "model"}`` (see the module
    docstring).  Raises :class:`~fundl.io.CheckpointError` naming the layer's path and
    argument for a config value with no safe encoding, or a layer with no builder."""
    if not isinstance(model, Layer):
        raise TypeError(f"model_record: model must be a fundl Layer, got {type(model).__name__}")
    try:
        shape = encode_value(in_shape)
    except _Refused:
        raise CheckpointError(f"cannot record in_shape {in_shape!r}: not a shape") from None
    record = {"format": RECORD_FORMAT, "version": _RECORD_VERSION, "in_shape": shape,
              "model": _encode_layer(model, "", {})}
    # the record must rebuild this model: the same kinds, names, configs and keys
    try:
        rebuilt, _ = model_from_record(record, builders=list(BUILDERS.values()))
    except CheckpointError as err:
        raise CheckpointError(f"cannot record the architecture: {err} (was the layer changed "
                              "with Layer.replace after it was built?)") from None
    again = _encode_layer(rebuilt, "", {})
    if again != record["model"]:
        path = _first_difference(record["model"], again, "")
        raise CheckpointError(f"cannot record the architecture: the layer at '{path or '<model>'}'"
                              " does not rebuild from its kind and config (was it changed "
                              "with Layer.replace after it was built?)")
    return record


def _first_difference(a: Any, b: Any, path: str) -> str:
    for (ka, ca), (_, cb) in zip(a.get("children", []), b.get("children", [])):
        if ca != cb:
            return _first_difference(ca, cb, f"{path}/{ka}".strip("/") if ka else path)
    return path


_LAYER_FIELDS = {"kind", "name", "config"}
_LAYER_OPTIONAL = {"children", "ties", "id"}


def model_from_record(record: Any, *, builders: Iterable[Callable[..., Layer]] = ()
                      ) -> Tuple[Layer, Any]:
    """``(model, in_shape)`` rebuilt from :func:`model_record`'s data.

    Each layer is built by the builder of its kind from fundl's own
    (:func:`fundl_builders`) or ``builders`` (your functions decorated with
    :func:`fundl.builder`; a kind is the function's name).  A kind that is neither, a
    malformed record, or a rebuilt layer whose children's keys differ from the
    recorded ones raises :class:`~fundl.io.CheckpointError` naming the layer's path.
    Nothing the record names is imported or evaluated.
    """
    allowed = fundl_builders()
    for build in builders:
        if not callable(build) or not hasattr(build, "__name__"):
            raise TypeError(f"builders takes builder functions, got {build!r}")
        allowed[build.__name__] = build
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise CheckpointError("not a fundl model record (bad format field)")
    if set(record) != {"format", "version", "in_shape", "model"}:
        raise CheckpointError(f"malformed model record: fields {sorted(record)}")
    if record["version"] != _RECORD_VERSION:
        raise CheckpointError(f"model record version {record['version']!r}: this fundl reads "
                              f"version {_RECORD_VERSION}")
    in_shape = decode_value(record["in_shape"], "the record's in_shape")
    shared: Dict[int, Layer] = {}
    return _decode_layer(record["model"], "", allowed, shared, 0), in_shape


def _same_init(a: Any, b: Any) -> bool:
    """Whether two initializers are one function, or one factory's products with equal
    arguments."""
    if a is b:
        return True
    code = getattr(a, "__code__", None)
    if code is None or code is not getattr(b, "__code__", None):
        return False
    values = [[(type(c.cell_contents), c.cell_contents) for c in f.__closure__ or ()]
              for f in (a, b)]
    return values[0] == values[1]


def _decode_layer(node: Any, path: str, allowed: Dict[str, Callable[..., Layer]],
                  shared: Dict[int, Layer], depth: int) -> Layer:
    where = f"layer '{path or '<model>'}'"
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"{where}: the model record is nested too deeply")
    if isinstance(node, dict) and set(node) == {"ref"}:
        ref = node["ref"]
        if type(ref) is not int or ref not in shared:
            raise CheckpointError(f"{where}: refers to shared layer {ref!r}, which the record "
                                  "does not define before it")
        return shared[ref]
    if not isinstance(node, dict) or not _LAYER_FIELDS <= set(node) \
            or not set(node) <= _LAYER_FIELDS | _LAYER_OPTIONAL:
        raise CheckpointError(f"{where}: malformed layer record")
    kind, name, config = node["kind"], node["name"], node["config"]
    if not (isinstance(kind, str) and isinstance(name, str) and isinstance(config, dict)):
        raise CheckpointError(f"{where}: malformed layer record")
    build = allowed.get(kind)
    if build is None:
        raise CheckpointError(f"{where} is a {kind!r}, which is not one of fundl's builders: "
                              f"a layer of your own loads with load_model(path, "
                              f"builders=[{kind}]) (its builder decorated with fundl.builder)")
    where = f"{where} ({kind})"
    config = {k: decode_value(v, f"{where}: argument {k!r}") for k, v in config.items()}
    defaults = {p.name: p.default for p in inspect.signature(build).parameters.values()}
    for k, v in config.items():   # an initializer equal to the default: the default itself
        if callable(v) and _same_init(v, defaults.get(k)):
            config[k] = defaults[k]
    children = node.get("children", [])
    if not isinstance(children, list) or not all(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) for c in children):
        raise CheckpointError(f"{where}: malformed children")
    kids = [_decode_layer(c, f"{path}/{k}".strip("/") if k else path, allowed, shared, depth + 1)
            for k, c in children]
    if "ties" in node:
        if children:
            raise CheckpointError(f"{where}: a layer record has children and ties")
        kids = [_decode_layer(node["ties"], path, allowed, shared, depth + 1)]
    try:
        layer = call_builder(build, config, kids)
    except CheckpointError:
        raise
    except (SurgeryError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: its builder refused the recorded arguments: "
                              f"{err}") from None
    if layer.name != name:
        layer = layer.replace(name=name)
    keys = [k for k, _ in children]
    if [k for k, _ in layer.children] != keys:
        raise CheckpointError(f"{where}: rebuilt with the children {[k for k, _ in layer.children]}"
                              f", the record has {keys}")
    if "ties" in node and layer.traits.ties is not kids[0]:
        raise CheckpointError(f"{where}: rebuilt without its tie")
    if "id" in node:
        ident = node["id"]
        if kind != "shared" or type(ident) is not int or ident in shared:
            raise CheckpointError(f"{where}: malformed shared-layer id {ident!r}")
        shared[ident] = layer
    return layer


# --- a saved tree's params and state -----------------------------------------------------------

def params_and_state(tree: Any) -> Optional[Tuple[Any, Any]]:
    """``(params, state)`` of a saved tree: a ``TrainState`` (or any named tuple with those
    fields) or a dict with the keys ``"params"`` and ``"state"``; None for another tree."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields") \
            and {"params", "state"} <= set(tree._fields):
        named: Any = tree                   # a named tuple with these fields
        return named.params, named.state
    if isinstance(tree, dict) and "params" in tree and "state" in tree:
        return tree["params"], tree["state"]
    return None


def known_in_shape(model: Layer, tree: Any) -> Any:
    """The per-example input shape for which ``model``'s ``init`` made the params and state
    that ``tree`` holds, in this process; None when unknown."""
    parts = params_and_state(tree)
    if parts is None:
        return None
    spec = plan.of(model).spec_of(*parts)
    return None if spec is None else spec.nodes[0].in_shape
