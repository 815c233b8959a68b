"""The per-layer converters of :mod:`fundl.interop.torch` (PyTorch tensors <-> fundl params).

Each kind has ``<kind>_from_torch(tensors, **options) -> (params, state)``, taking
one module's tensors with the prefix stripped (``{"weight": ..., "bias": ...}``),
and ``<kind>_to_torch(params, state=None, *, gradients=False, **options) -> dict``.
The layouts are documented in :mod:`fundl.interop.torch`.  No torch needed here.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "InteropError", "KINDS", "flatten_permutation",
    "dense_from_torch", "dense_to_torch", "conv1d_from_torch", "conv1d_to_torch",
    "conv2d_from_torch", "conv2d_to_torch", "batch_norm_from_torch", "batch_norm_to_torch",
    "layer_norm_from_torch", "layer_norm_to_torch", "embedding_from_torch",
    "embedding_to_torch", "rnn_from_torch", "rnn_to_torch", "gru_from_torch", "gru_to_torch",
    "lstm_from_torch", "lstm_to_torch", "multi_head_attention_from_torch",
    "multi_head_attention_to_torch",
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
    -> ``w`` ``(k, in, out)`` (on NWC); ``bias`` -> ``b``."""
    return _conv_from(tensors, 1)


def conv1d_to_torch(params: Mapping[str, Array], state: Any = None, *,
                    gradients: bool = False) -> Dict[str, Array]:
    """fundl conv1d -> ``nn.Conv1d``: ``w`` ``(k, in, out)`` -> ``weight`` ``(out, in, k)``."""
    return _conv_to(params, 1)


def conv2d_from_torch(tensors: Tensors) -> Converted:
    """``nn.Conv2d`` -> fundl :func:`~fundl.conv2d`: ``weight`` ``(out, in, kh, kw)`` (OIHW,
    on NCHW) -> ``w`` ``(kh, kw, in, out)`` (on NHWC); ``bias`` -> ``b``."""
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
