"""The per-layer converters of :mod:`fundl.interop.torch` (PyTorch tensors <-> fundl params).

Each kind has ``<kind>_from_torch(tensors, **options) -> (params, state)``, taking
one module's tensors with the prefix stripped (``{"weight": ..., "bias": ...}``),
and ``<kind>_to_torch(params, state=None, *, gradients=False, **options) -> dict``.
The layouts are documented in :mod:`fundl.interop.torch`.  No torch needed here.

:func:`torch_module_kind` reads a PyTorch module (the ``torch`` module is passed in): its
kind, the converters' options, and what the fundl layer's builder arguments must be
(``expect``); it refuses what no fundl layer can represent.  :func:`check_layer_config`
compares ``expect`` with a fundl layer's arguments.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..core import BUILDERS
from ..layers.windows import resolve_padding

__all__ = [
    "InteropError", "KINDS", "flatten_permutation",
    "dense_from_torch", "dense_to_torch", "conv1d_from_torch", "conv1d_to_torch",
    "conv2d_from_torch", "conv2d_to_torch", "batch_norm_from_torch", "batch_norm_to_torch",
    "layer_norm_from_torch", "layer_norm_to_torch", "embedding_from_torch",
    "embedding_to_torch", "rnn_from_torch", "rnn_to_torch", "gru_from_torch", "gru_to_torch",
    "lstm_from_torch", "lstm_to_torch", "multi_head_attention_from_torch",
    "multi_head_attention_to_torch", "ModuleKind", "torch_module_kind", "check_layer_config",
]

Array = np.ndarray
Tensors = Mapping[str, Any]
Converted = Tuple[Dict[str, Any], Dict[str, Any]]

class InteropError(ValueError):
    """A state_dict that does not fit the fundl params (the message names both paths)."""


def _numpy(value: Any) -> Array:
    """A torch tensor or array-like as a new numpy array (never a view of torch memory)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


class _Reader:
    """The tensors of one module (prefix stripped); records which ones were read."""

    def __init__(self, tensors: Tensors, kind: str, prefix: str = ""):
        self.tensors, self.kind, self.prefix = tensors, kind, prefix
        self.used: set = set()

    def get(self, name: str) -> Optional[Array]:
        if name not in self.tensors:
            return None
        self.used.add(name)
        return _numpy(self.tensors[name])

    def need(self, name: str, ndim: Optional[int] = None) -> Array:
        value = self.get(name)
        if value is None:
            have = ", ".join(sorted(self.tensors)) or "none"
            raise InteropError(f"{self.kind}: the state_dict has no tensor "
                               f"'{self.prefix}{name}' (this module has: {have})")
        if ndim is not None and value.ndim != ndim:
            raise InteropError(f"{self.kind}: '{self.prefix}{name}' should have {ndim} "
                               f"dimensions, got shape {value.shape}")
        return value


def _reader(tensors: Any, kind: str) -> _Reader:
    return tensors if isinstance(tensors, _Reader) else _Reader(tensors, kind)


def _t(a: Array) -> Array:
    """The transpose of a 2-D array as a new C-contiguous array."""
    return np.ascontiguousarray(np.asarray(a).T)


def _add_exact(a: Array, b: Array) -> Array:
    """``a + b`` that leaves ``a`` bit-identical where ``b`` is zero (keeps a -0.0)."""
    return np.where(b == 0, a, a + b)


# --- dense and the flatten permutation ----------------------------------------------

def flatten_permutation(shape_hwc: Sequence[int]) -> Array:
    """Indices ``perm`` with ``fundl_flat[:, i] == torch_flat[:, perm[i]]``.

    ``shape_hwc`` is a channels-last per-example shape ``(h, w, c)`` (or ``(w, c)``,
    or any ``(..., c)``).  fundl's :func:`~fundl.flatten` of NHWC data orders the
    features ``(h, w, c)``; ``torch.flatten`` of the same data in NCHW orders them
    ``(c, h, w)``.  A Linear after the flatten therefore needs its input columns
    permuted: ``w = weight[:, perm].T`` (what ``dense_from_torch(...,
    flatten_from=shape_hwc)`` does), and back ``weight[:, perm] = w.T``.
    """
    shape = tuple(int(s) for s in shape_hwc)
    if not shape or min(shape) < 1:
        raise ValueError(f"flatten_permutation needs a shape (..., channels) of sizes >= 1, "
                         f"got {shape_hwc!r}")
    chw = (shape[-1],) + shape[:-1]
    return np.arange(math.prod(shape)).reshape(chw).transpose(
        tuple(range(1, len(shape))) + (0,)).reshape(-1)


def dense_from_torch(tensors: Tensors, *, flatten_from: Optional[Sequence[int]] = None
                     ) -> Converted:
    """``nn.Linear`` -> fundl :func:`~fundl.dense`: ``w = weight.T`` ``(in, out)``, ``b = bias``.

    With ``flatten_from=(h, w, c)`` the input columns are permuted by
    :func:`flatten_permutation` (a Linear after flattening channels-first data).
    Returns ``(params, state)`` (state ``{}``).
    """
    t = _reader(tensors, "dense")
    weight = t.need("weight", 2)
    if flatten_from is not None:
        perm = flatten_permutation(flatten_from)
        if perm.size != weight.shape[1]:
            raise InteropError(f"dense: flatten_from={tuple(flatten_from)} has {perm.size} "
                               f"features but the weight has {weight.shape[1]} inputs "
                               f"(shape {weight.shape})")
        weight = weight[:, perm]
    params = {"w": _t(weight)}
    bias = t.get("bias")
    if bias is not None:
        params["b"] = bias
    return params, {}


def dense_to_torch(params: Mapping[str, Array], state: Any = None, *,
                   flatten_from: Optional[Sequence[int]] = None,
                   gradients: bool = False) -> Dict[str, Array]:
    """fundl dense -> ``nn.Linear``: ``weight = w.T`` ``(out, in)``, ``bias = b``."""
    weight = _t(params["w"])
    if flatten_from is not None:
        perm = flatten_permutation(flatten_from)
        if perm.size != weight.shape[1]:
            raise InteropError(f"dense: flatten_from={tuple(flatten_from)} has {perm.size} "
                               f"features but w has {weight.shape[1]} inputs")
        out = np.empty_like(weight)
        out[:, perm] = weight
        weight = out
    sd = {"weight": weight}
    if "b" in params:
        sd["bias"] = np.array(params["b"], copy=True)
    return sd


# --- convolutions -------------------------------------------------------------------

def _conv_from(tensors: Tensors, d: int) -> Converted:
    kind = f"conv{d}d"
    t = _reader(tensors, kind)
    weight = t.need("weight", d + 2)
    order = (2, 3, 1, 0) if d == 2 else (2, 1, 0)
    params = {"w": np.ascontiguousarray(weight.transpose(order))}
    bias = t.get("bias")
    if bias is not None:
        params["b"] = bias
    return params, {}


def _conv_to(params: Mapping[str, Array], d: int) -> Dict[str, Array]:
    order = (3, 2, 0, 1) if d == 2 else (2, 1, 0)
    sd = {"weight": np.ascontiguousarray(np.asarray(params["w"]).transpose(order))}
    if "b" in params:
        sd["bias"] = np.array(params["b"], copy=True)
    return sd


def conv1d_from_torch(tensors: Tensors) -> Converted:
    """``nn.Conv1d`` -> fundl :func:`~fundl.conv1d`: ``weight`` ``(out, in, k)`` (on NCW)
    -> ``w`` ``(k, in, out)`` (on NWC); ``bias`` -> ``b``.  Grouped and depthwise convs
    (``groups=g``) the same way: ``(out, in/g, k)`` -> ``(k, in/g, out)``."""
    return _conv_from(tensors, 1)


def conv1d_to_torch(params: Mapping[str, Array], state: Any = None, *,
                    gradients: bool = False) -> Dict[str, Array]:
    """fundl conv1d -> ``nn.Conv1d``: ``w`` ``(k, in, out)`` -> ``weight`` ``(out, in, k)``."""
    return _conv_to(params, 1)


def conv2d_from_torch(tensors: Tensors) -> Converted:
    """``nn.Conv2d`` -> fundl :func:`~fundl.conv2d`: ``weight`` ``(out, in, kh, kw)`` (OIHW,
    on NCHW) -> ``w`` ``(kh, kw, in, out)`` (on NHWC); ``bias`` -> ``b``.  Grouped and
    depthwise convs (``groups=g``, fundl's ``groups=g``) the same way, with ``in/g``."""
    return _conv_from(tensors, 2)


def conv2d_to_torch(params: Mapping[str, Array], state: Any = None, *,
                    gradients: bool = False) -> Dict[str, Array]:
    """fundl conv2d -> ``nn.Conv2d``: ``w`` ``(kh, kw, in, out)`` -> ``weight`` OIHW."""
    return _conv_to(params, 2)


# --- normalisation and embedding ------------------------------------------------------

def batch_norm_from_torch(tensors: Tensors) -> Converted:
    """``nn.BatchNorm1d/2d`` -> fundl :func:`~fundl.batch_norm` (``axis=-1`` on channels-last
    data): ``weight``/``bias`` -> params ``scale``/``bias`` (if affine),
    ``running_mean``/``running_var`` -> state ``mean``/``var``; ``num_batches_tracked``
    is ignored.  PyTorch's ``momentum=m`` is fundl's ``momentum=1 - m`` (see the module
    docstring)."""
    t = _reader(tensors, "batch_norm")
    params = {}
    for torch_name, name in (("weight", "scale"), ("bias", "bias")):
        value = t.get(torch_name)
        if value is not None:
            params[name] = value
    state = {"mean": t.need("running_mean", 1), "var": t.need("running_var", 1)}
    t.get("num_batches_tracked")
    return params, state


def batch_norm_to_torch(params: Mapping[str, Array], state: Optional[Mapping[str, Array]] = None,
                        *, gradients: bool = False) -> Dict[str, Array]:
    """fundl batch_norm -> ``nn.BatchNorm*``: ``scale``/``bias`` -> ``weight``/``bias``;
    with ``state``, ``mean``/``var`` -> ``running_mean``/``running_var`` and
    ``num_batches_tracked = 0`` (int64)."""
    sd = {}
    for name, torch_name in (("scale", "weight"), ("bias", "bias")):
        if name in params:
            sd[torch_name] = np.array(params[name], copy=True)
    if state:
        sd["running_mean"] = np.array(state["mean"], copy=True)
        sd["running_var"] = np.array(state["var"], copy=True)
        sd["num_batches_tracked"] = np.array(0, np.int64)
    return sd


def layer_norm_from_torch(tensors: Tensors) -> Converted:
    """``nn.LayerNorm(features)`` -> fundl :func:`~fundl.layer_norm`: ``weight``/``bias``
    -> ``scale``/``bias`` (each if present)."""
    t = _reader(tensors, "layer_norm")
    params = {}
    for torch_name, name in (("weight", "scale"), ("bias", "bias")):
        value = t.get(torch_name)
        if value is not None:
            if value.ndim != 1:
                raise InteropError(f"layer_norm: fundl normalises the last axis only; "
                                   f"'{torch_name}' has shape {value.shape}")
            params[name] = value
    return params, {}


def layer_norm_to_torch(params: Mapping[str, Array], state: Any = None, *,
                        gradients: bool = False) -> Dict[str, Array]:
    """fundl layer_norm -> ``nn.LayerNorm``: ``scale``/``bias`` -> ``weight``/``bias``."""
    return {torch_name: np.array(params[name], copy=True)
            for name, torch_name in (("scale", "weight"), ("bias", "bias")) if name in params}


def embedding_from_torch(tensors: Tensors) -> Converted:
    """``nn.Embedding`` -> fundl :func:`~fundl.embedding`: ``weight`` ``(vocab, features)``
    -> ``w``, unchanged (fundl has no ``padding_idx``)."""
    return {"w": _reader(tensors, "embedding").need("weight", 2)}, {}


def embedding_to_torch(params: Mapping[str, Array], state: Any = None, *,
                       gradients: bool = False) -> Dict[str, Array]:
    """fundl embedding -> ``nn.Embedding``: ``w`` -> ``weight``."""
    return {"weight": np.array(params["w"], copy=True)}


# --- recurrent ----------------------------------------------------------------------

_GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def _cell_from(t: _Reader, kind: str, suffix: str) -> Dict[str, Array]:
    gates = _GATES[kind]
    if ("weight_hr" + suffix) in t.tensors:
        raise InteropError(f"{kind}: proj_size > 0 (tensor '{t.prefix}weight_hr{suffix}') "
                           f"is not supported")
    w_ih, w_hh = t.need("weight_ih" + suffix, 2), t.need("weight_hh" + suffix, 2)
    hidden = w_hh.shape[1]
    if w_hh.shape != (gates * hidden, hidden) or w_ih.shape[0] != gates * hidden:
        raise InteropError(f"{kind}: expected weight_ih{suffix} of shape ({gates * hidden}, "
                           f"features) and weight_hh{suffix} of shape "
                           f"({gates * hidden}, {hidden}), got {w_ih.shape} and {w_hh.shape}")
    zeros = np.zeros(gates * hidden, w_ih.dtype)
    b_ih, b_hh = t.get("bias_ih" + suffix), t.get("bias_hh" + suffix)
    b_ih = zeros if b_ih is None else b_ih
    b_hh = zeros if b_hh is None else b_hh
    params = {"w_x": _t(w_ih), "w_h": _t(w_hh)}
    if kind == "gru":
        h2 = 2 * hidden
        params["b"] = np.concatenate([_add_exact(b_ih[:h2], b_hh[:h2]), b_ih[h2:]])
        params["b_hn"] = np.array(b_hh[h2:], copy=True)
    else:
        params["b"] = _add_exact(b_ih, b_hh)
    return params


def _cell_to(params: Mapping[str, Array], kind: str, suffix: str,
             gradients: bool) -> Dict[str, Array]:
    b = np.asarray(params["b"])
    if kind == "gru":
        hidden = params["w_h"].shape[0]
        rz = b[:2 * hidden] if gradients else np.zeros(2 * hidden, b.dtype)
        b_hh = np.concatenate([rz, params["b_hn"]])
    else:
        b_hh = b.copy() if gradients else np.zeros_like(b)
    return {"weight_ih" + suffix: _t(params["w_x"]), "weight_hh" + suffix: _t(params["w_h"]),
            "bias_ih" + suffix: b.copy(), "bias_hh" + suffix: b_hh}


def _recurrent_from(tensors: Tensors, kind: str, layer: int, bidirectional: bool) -> Converted:
    t = _reader(tensors, kind)
    suffix = f"_l{int(layer)}"
    if not bidirectional:
        return _cell_from(t, kind, suffix), {}
    return ({"forward": _cell_from(t, kind, suffix),
             "backward": _cell_from(t, kind, suffix + "_reverse")},
            {"forward": {}, "backward": {}})


def _recurrent_to(params: Mapping[str, Any], kind: str, layer: int, bidirectional: bool,
                  gradients: bool) -> Dict[str, Array]:
    suffix = f"_l{int(layer)}"
    if not bidirectional:
        return _cell_to(params, kind, suffix, gradients)
    sd = _cell_to(params["forward"], kind, suffix, gradients)
    sd.update(_cell_to(params["backward"], kind, suffix + "_reverse", gradients))
    return sd


def rnn_from_torch(tensors: Tensors, *, layer: int = 0, bidirectional: bool = False) -> Converted:
    """``nn.RNN`` layer ``layer`` -> fundl :func:`~fundl.rnn` (or, with ``bidirectional``,
    :func:`~fundl.bidirectional` of two): ``w_x = weight_ih.T``, ``w_h = weight_hh.T``,
    ``b = bias_ih + bias_hh``.  The activation is the fundl layer's argument."""
    return _recurrent_from(tensors, "rnn", layer, bidirectional)


def rnn_to_torch(params: Mapping[str, Any], state: Any = None, *, layer: int = 0,
                 bidirectional: bool = False, gradients: bool = False) -> Dict[str, Array]:
    """fundl rnn -> ``nn.RNN`` tensors of layer ``layer``: ``bias_ih = b``, ``bias_hh = 0``
    (``gradients=True``: both get ``db``)."""
    return _recurrent_to(params, "rnn", layer, bidirectional, gradients)


def gru_from_torch(tensors: Tensors, *, layer: int = 0, bidirectional: bool = False) -> Converted:
    """``nn.GRU`` layer ``layer`` -> fundl :func:`~fundl.gru` (gate order ``r, z, n`` in
    both): ``w_x = weight_ih.T``, ``w_h = weight_hh.T``, ``b[r, z] = bias_ih + bias_hh``,
    ``b[n] = bias_ih[n]``, ``b_hn = bias_hh[n]``."""
    return _recurrent_from(tensors, "gru", layer, bidirectional)


def gru_to_torch(params: Mapping[str, Any], state: Any = None, *, layer: int = 0,
                 bidirectional: bool = False, gradients: bool = False) -> Dict[str, Array]:
    """fundl gru -> ``nn.GRU`` tensors: ``bias_ih = b``, ``bias_hh = [0, 0, b_hn]``
    (``gradients=True``: ``bias_hh = [db_r, db_z, db_hn]``)."""
    return _recurrent_to(params, "gru", layer, bidirectional, gradients)


def lstm_from_torch(tensors: Tensors, *, layer: int = 0, bidirectional: bool = False) -> Converted:
    """``nn.LSTM`` layer ``layer`` -> fundl :func:`~fundl.lstm` (gate order ``i, f, g, o`` in
    both): ``w_x = weight_ih.T``, ``w_h = weight_hh.T``, ``b = bias_ih + bias_hh``."""
    return _recurrent_from(tensors, "lstm", layer, bidirectional)


def lstm_to_torch(params: Mapping[str, Any], state: Any = None, *, layer: int = 0,
                  bidirectional: bool = False, gradients: bool = False) -> Dict[str, Array]:
    """fundl lstm -> ``nn.LSTM`` tensors: ``bias_ih = b``, ``bias_hh = 0``
    (``gradients=True``: both get ``db``)."""
    return _recurrent_to(params, "lstm", layer, bidirectional, gradients)


# --- attention ----------------------------------------------------------------------

def multi_head_attention_from_torch(tensors: Tensors) -> Converted:
    """``nn.MultiheadAttention`` (self-attention) -> fundl :func:`~fundl.multi_head_attention`.

    ``in_proj_weight`` ``(3E, E)`` (or ``q_proj_weight``, ``k_proj_weight``,
    ``v_proj_weight``) -> ``w_q, w_k, w_v`` ``(E, E)`` (transposed thirds);
    ``in_proj_bias`` -> ``b_q``, ``b_v`` (the key bias is dropped: exact);
    ``out_proj.weight`` -> ``w_o = weight.T``, ``out_proj.bias`` -> ``b_o``.
    """
    t = _reader(tensors, "multi_head_attention")
    if "bias_k" in t.tensors or "bias_v" in t.tensors:
        raise InteropError("multi_head_attention: add_bias_kv=True (bias_k, bias_v) "
                           "is not supported")
    if "in_proj_weight" in t.tensors:
        w = t.need("in_proj_weight", 2)
        e = w.shape[1]
        if w.shape[0] != 3 * e:
            raise InteropError(f"multi_head_attention: expected in_proj_weight of shape "
                               f"(3E, E), got {w.shape}")
        w_q, w_k, w_v = w[:e], w[e:2 * e], w[2 * e:]
    else:
        w_q, w_k, w_v = (t.need(f"{n}_proj_weight", 2) for n in "qkv")
    params = {"w_q": _t(w_q), "w_k": _t(w_k), "w_v": _t(w_v),
              "w_o": _t(t.need("out_proj.weight", 2))}
    b = t.get("in_proj_bias")
    if b is not None:
        e = b.shape[0] // 3
        params.update(b_q=b[:e].copy(), b_v=b[2 * e:].copy(), b_o=t.need("out_proj.bias", 1))
    return params, {}


def multi_head_attention_to_torch(params: Mapping[str, Array], state: Any = None, *,
                                  fused: bool = True,
                                  gradients: bool = False) -> Dict[str, Array]:
    """fundl multi_head_attention -> ``nn.MultiheadAttention`` tensors; the key bias is zero.

    ``fused=True`` writes ``in_proj_weight`` ``(3E, E)``, ``fused=False`` the separate
    ``q/k/v_proj_weight``.  Needs ``heads * head_dim == features`` (PyTorch's layout).
    """
    w_q = np.asarray(params["w_q"])
    if w_q.shape[0] != w_q.shape[1]:
        raise InteropError(f"multi_head_attention: PyTorch needs heads * head_dim == features, "
                           f"got w_q of shape {w_q.shape}")
    ws = [_t(params[n]) for n in ("w_q", "w_k", "w_v")]
    sd = ({"in_proj_weight": np.concatenate(ws)} if fused
          else {f"{n}_proj_weight": w for n, w in zip("qkv", ws)})
    if "b_q" in params:
        sd["in_proj_bias"] = np.concatenate([params["b_q"], np.zeros_like(params["b_q"]),
                                             params["b_v"]])
    sd["out_proj.weight"] = _t(params["w_o"])
    if "b_o" in params:
        sd["out_proj.bias"] = np.array(params["b_o"], copy=True)
    return sd


# --- the registry and the whole-model functions ---------------------------------------

#: kind -> (from_torch, to_torch)
KINDS: Dict[str, Tuple[Callable[..., Converted], Callable[..., Dict[str, Array]]]] = {
    "dense": (dense_from_torch, dense_to_torch),
    "conv1d": (conv1d_from_torch, conv1d_to_torch),
    "conv2d": (conv2d_from_torch, conv2d_to_torch),
    "batch_norm": (batch_norm_from_torch, batch_norm_to_torch),
    "layer_norm": (layer_norm_from_torch, layer_norm_to_torch),
    "embedding": (embedding_from_torch, embedding_to_torch),
    "rnn": (rnn_from_torch, rnn_to_torch),
    "gru": (gru_from_torch, gru_to_torch),
    "lstm": (lstm_from_torch, lstm_to_torch),
    "multi_head_attention": (multi_head_attention_from_torch, multi_head_attention_to_torch),
}


# --- PyTorch modules: which fundl layer can hold one --------------------------------------

class ModuleKind(NamedTuple):
    """What :func:`torch_module_kind` reads from a PyTorch module.

    ``kind``: one of :data:`KINDS`; ``options``: the converters' keyword arguments
    (``{"bidirectional": True}``); ``n_layers``: how many fundl layers it takes (a
    multi-layer recurrent module); ``expect``: what the fundl layer's builder arguments
    must be to compute what the module computes, ``{argument: (torch option, value)}``
    (``{"activation": ("nonlinearity", "relu")}``), for :func:`check_layer_config`.
    """

    kind: str
    options: Dict[str, Any]
    n_layers: int
    expect: Dict[str, Tuple[str, Any]]


def _refuse(name: str, what: str) -> InteropError:
    return InteropError(f"torch module '{name}': {what}")


def _pairs(padding: Any, d: int) -> Any:
    """A conv padding (torch's int/tuple/str or fundl's spec) as ``d`` ``(lo, hi)`` pairs, or
    the string ``"same"``."""
    if isinstance(padding, str):
        return ((0, 0),) * d if padding.lower() == "valid" else padding.lower()
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * d
    items = list(padding)
    if all(isinstance(v, (int, np.integer)) for v in items):
        if d == 1 and len(items) == 2:      # fundl's bare (lo, hi) pair of a 1-D conv
            return (tuple(int(v) for v in items),)
        return tuple((int(v), int(v)) for v in items)
    return tuple(tuple(int(v) for v in p) for p in items)


def torch_module_kind(torch: Any, module: Any, name: str) -> Optional[ModuleKind]:
    """The :class:`ModuleKind` of a supported PyTorch leaf module, None for any other module.

    Raises :class:`InteropError` naming the module path ``name`` and the option for what
    no fundl layer can represent: a conv's ``padding_mode`` other than ``"zeros"``;
    BatchNorm with ``momentum=None`` or without running statistics; a LayerNorm over more
    than one axis; an Embedding with ``max_norm`` or ``scale_grad_by_freq``; a recurrent
    module with ``batch_first=False`` or ``proj_size``; a MultiheadAttention with
    ``add_zero_attn``, ``add_bias_kv``, ``kdim != vdim`` or ``batch_first=False``.  What a
    fundl layer can represent but must be built for -- a conv's ``groups``, ``stride``,
    ``dilation`` and explicit ``padding``, norms' ``eps`` (and BatchNorm's momentum, as
    fundl's ``1 - momentum``), an RNN's ``nonlinearity``, attention's ``num_heads``,
    ``dropout``, bias and a ``kdim`` other than ``embed_dim`` (``cross=True``) -- is in
    ``expect``, for :func:`check_layer_config` against the fundl layer's arguments.
    """
    nn = torch.nn
    if isinstance(module, nn.Linear):
        return ModuleKind("dense", {}, 1, {"use_bias": ("bias", module.bias is not None)})
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        d = 1 if isinstance(module, nn.Conv1d) else 2
        if module.padding_mode != "zeros":
            raise _refuse(name, f"padding_mode={module.padding_mode!r}: fundl convolutions pad "
                                f"with zeros only")
        expect = {"groups": ("groups", module.groups), "stride": ("stride", module.stride),
                  "dilation": ("dilation", module.dilation),
                  "padding": ("padding", _pairs(module.padding, d)),
                  "use_bias": ("bias", module.bias is not None)}
        return ModuleKind(f"conv{d}d", {}, 1, expect)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.momentum is None or not module.track_running_stats:
            raise _refuse(name, "BatchNorm with momentum=None or track_running_stats=False has "
                                "no fundl equivalent")
        return ModuleKind("batch_norm", {}, 1, {
            "eps": ("eps", module.eps), "momentum": ("momentum (as 1 - momentum)",
                                                     1.0 - module.momentum)})
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            raise _refuse(name, f"LayerNorm over {tuple(module.normalized_shape)}; fundl "
                                f"normalises one axis")
        return ModuleKind("layer_norm", {}, 1, {"eps": ("eps", module.eps)})
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None:
            raise _refuse(name, f"max_norm={module.max_norm} (rows renormalised in the "
                                f"forward) has no fundl equivalent")
        if module.scale_grad_by_freq:
            raise _refuse(name, "scale_grad_by_freq=True has no fundl equivalent")
        return ModuleKind("embedding", {}, 1, {})
    for cls, kind in ((nn.LSTM, "lstm"), (nn.GRU, "gru"), (nn.RNN, "rnn")):
        if isinstance(module, cls):
            if not module.batch_first:
                raise _refuse(name, "fundl recurrent layers take (batch, time, features); use "
                                    "batch_first=True (the weights are the same)")
            if getattr(module, "proj_size", 0):
                raise _refuse(name, f"proj_size={module.proj_size} is not supported")
            expect = {"activation": ("nonlinearity", module.nonlinearity)} if kind == "rnn" \
                else {}
            return ModuleKind(kind, {"bidirectional": bool(module.bidirectional)},
                              module.num_layers, expect)
    if isinstance(module, nn.MultiheadAttention):
        if module.add_zero_attn:
            raise _refuse(name, "add_zero_attn=True (a zero key and value appended) has no "
                                "fundl equivalent")
        if module.bias_k is not None or module.bias_v is not None:
            raise _refuse(name, "add_bias_kv=True (bias_k, bias_v) has no fundl equivalent")
        if module.kdim != module.vdim:
            raise _refuse(name, f"kdim={module.kdim} and vdim={module.vdim} differ; fundl's "
                                f"keys and values come from one context of one feature size")
        if not module.batch_first:
            raise _refuse(name, "fundl attention takes (batch, time, features); use "
                                "batch_first=True (the weights are the same)")
        expect = {"num_heads": ("num_heads", module.num_heads),
                  "dropout": ("dropout", float(module.dropout)),
                  "use_bias": ("bias", module.in_proj_bias is not None)}
        if module.kdim != module.embed_dim:
            expect["cross"] = (f"kdim={module.kdim} != embed_dim={module.embed_dim}, i.e. "
                               f"cross-attention", True)
        return ModuleKind("multi_head_attention", {}, 1, expect)
    return None


def _normalised(kind: str, arg: str, value: Any) -> Any:
    """A builder argument in a form comparable with torch's option."""
    if arg in ("stride", "dilation"):
        d = 1 if kind == "conv1d" else 2
        return (int(value),) * d if isinstance(value, (int, np.integer)) else \
            tuple(int(v) for v in value)
    if arg == "padding":
        return _pairs(value, 1 if kind == "conv1d" else 2)
    if arg in ("eps", "momentum", "dropout"):
        return float(value)
    return value


def check_layer_config(kind: str, expect: Mapping[str, Tuple[str, Any]],
                       config: Mapping[str, Any], where: str,
                       kernel: Optional[Sequence[int]] = None) -> None:
    """Raise :class:`InteropError` unless a fundl layer built with the arguments ``config``
    (the builder's keyword arguments; those not given take the builder's defaults)
    computes what the torch module whose :attr:`ModuleKind.expect` is ``expect`` does.

    ``where`` names both sides in the message (``"fundl layer 'block/rnn_0' <- torch
    module 'rnn'"``); the message names the torch option, its value and the fundl
    argument.  ``kernel`` (a conv's kernel size, per axis) resolves a ``"same"`` padding
    with stride 1 against explicit pads.
    """
    defaults = {k: p.default for k, p in inspect.signature(BUILDERS[kind]).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for arg, (option, want) in expect.items():
        have = config.get(arg, defaults.get(arg))
        got, wanted = _normalised(kind, arg, have), _normalised(kind, arg, want)
        if arg == "padding" and kernel is not None and "same" in (got, wanted) \
                and got != wanted:
            stride = _normalised(kind, "stride", config.get("stride", defaults.get("stride")))
            dil = _normalised(kind, "dilation", config.get("dilation", defaults.get("dilation")))
            if set(stride) == {1}:      # then fundl's "same" pads do not depend on the input size
                extents = [(k - 1) * q + 1 for k, q in zip(kernel, dil)]
                same = resolve_padding("same", extents, extents, stride)
                got = same if got == "same" else got
                wanted = same if wanted == "same" else wanted
        equal = (math.isclose(got, wanted, rel_tol=1e-9, abs_tol=1e-12)
                 if isinstance(got, float) and isinstance(wanted, float) else got == wanted)
        if not equal:
            shown = f"{option}={want!r}" if "=" not in option else option
            raise InteropError(f"{where}: the torch module has {shown} but the fundl "
                               f"{kind} layer has {arg}={have!r}; build it with "
                               f"{arg}={_normalised(kind, arg, want)!r}")
