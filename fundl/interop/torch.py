"""Port weights between PyTorch and fundl: a ``state_dict`` <-> fundl params and state.

PyTorch is never a dependency of fundl: this module imports without it, and
``torch`` is imported only inside the functions that need it
(:func:`sequential_mapping`, and :func:`to_state_dict` with ``as_tensors=True``),
which raise an ImportError naming ``pip install torch`` when it is missing.
Everything else works on numpy arrays too, e.g. a ``state_dict`` read from a
``.safetensors`` file without torch installed.

A **mapping** pairs fundl layers with PyTorch modules: each entry is a
:class:`LayerMap` ``(fundl, torch, kind, options)`` (a plain tuple of 3 or 4 items
works too) where ``fundl`` is the layer's path in the params tree
(``"dense_5"``, ``"block_1/conv2d_0"``; ``""`` for the root), ``torch`` the
module prefix in the ``state_dict`` (``"5"``, ``"features.0"``, ``"fc1"``; ``""``
for the root) and ``kind`` one of :data:`KINDS`.  For an ``nn.Sequential`` that
lines up with a fundl :func:`~fundl.serial`, :func:`sequential_mapping` builds
the mapping for you::

    import torch.nn as nn
    import fundl as fl
    from fundl.interop import torch as fit

    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    model = fl.serial(fl.conv2d(8, 3, padding=1), fl.batch_norm(momentum=0.9), fl.relu(),
                      fl.max_pool2d(2), fl.flatten(), fl.dense(10))
    params, state, _ = model.init(fl.random.key(0), (28, 28, 1))           # NHWC
    mapping = fit.sequential_mapping(model, net, in_shape=(28, 28, 1))
    # [LayerMap('conv2d_0', '0', 'conv2d', {}), LayerMap('batch_norm_1', '1', 'batch_norm', {}),
    #  LayerMap('dense_5', '5', 'dense', {'flatten_from': (14, 14, 8)})]
    params, state = fit.load_state_dict(params, state, net.state_dict(), mapping)
    y = model.apply(params, state, x_nchw.transpose(0, 2, 3, 1))          # == net.eval()(x_nchw)
    sd = fit.to_state_dict(params, state, mapping, as_tensors=True)      # and back
    net.load_state_dict(sd)

Layouts (PyTorch -> fundl; every conversion copies, nothing aliases torch memory):

- ``dense``: ``weight`` ``(out, in)`` -> ``w = weight.T`` ``(in, out)``; ``bias`` -> ``b``.
  Option ``flatten_from=(h, w, c)`` (any channels-last shape) for a Linear after a
  flatten of channels-first data: see :func:`flatten_permutation`.
- ``conv2d``: ``weight`` ``(out, in, kh, kw)`` (OIHW, on NCHW data) ->
  ``w`` ``(kh, kw, in, out)`` (on NHWC data); ``conv1d``: ``(out, in, k)`` -> ``(k, in, out)``.
  Stride, padding and dilation are the fundl layer's own arguments; ``groups > 1``
  is not supported.
- ``batch_norm``: ``weight``/``bias`` -> params ``scale``/``bias``;
  ``running_mean``/``running_var`` -> state ``mean``/``var``; ``num_batches_tracked``
  is ignored (written back as 0).  Momentum conventions are opposite: PyTorch
  updates ``running = (1 - m) * running + m * batch`` (default ``m = 0.1``), fundl
  ``momentum * running + (1 - momentum) * batch`` (default 0.99), so build the fundl
  layer with ``batch_norm(momentum=1 - m)`` (0.9 for PyTorch's default); both use
  the unbiased batch variance for the running ``var``, and the same ``eps``.
  PyTorch's ``momentum=None`` (a cumulative average) has no fundl equivalent.
- ``layer_norm``: ``weight``/``bias`` -> ``scale``/``bias`` (a 1-D ``normalized_shape`` only).
- ``embedding``: ``weight`` ``(vocab, features)`` -> ``w``, unchanged.  fundl has no
  ``padding_idx``: that row's gradient is not zeroed.
- ``rnn``, ``gru``, ``lstm``: ``weight_ih_l{k}`` ``(G*H, F)`` -> ``w_x`` ``(F, G*H)``,
  ``weight_hh_l{k}`` ``(G*H, H)`` -> ``w_h`` ``(H, G*H)``, the same gate order
  (LSTM ``i, f, g, o``; GRU ``r, z, n``), ``b = bias_ih + bias_hh``, except the GRU's
  ``n`` block: ``b[n] = bias_ih[n]`` and ``b_hn = bias_hh[n]`` (it sits inside
  ``r * (h @ w_hn + b_hn)``).  Options ``layer=k`` (a layer of a multi-layer
  module, one fundl layer each) and ``bidirectional=True`` (``*_reverse``
  tensors -> the ``"backward"`` params of :func:`fundl.bidirectional`).
  Back to PyTorch, ``bias_ih`` gets ``b`` and ``bias_hh`` zeros (GRU: ``b_hn`` in
  its ``n`` block).  Data is ``batch_first=True``; ``proj_size`` is not supported.
- ``multi_head_attention`` (self-attention): ``in_proj_weight`` ``(3E, E)`` (or
  ``q/k/v_proj_weight``) -> ``w_q, w_k, w_v = W[:E].T, W[E:2E].T, W[2E:].T``;
  ``in_proj_bias`` -> ``b_q``, ``b_v`` (the key bias is dropped: the softmax
  cancels it exactly, outputs are identical); ``out_proj.weight``/``bias`` ->
  ``w_o = weight.T``, ``b_o``.  Back to PyTorch the key bias is zero.  The
  number of heads is the fundl layer's argument; ``add_bias_kv`` and masks are
  not supported.

Gradients: ``to_state_dict(dparams, None, mapping, gradients=True)`` maps fundl's
gradients onto PyTorch's parameter names, comparable with each ``param.grad``: a
fundl bias that is the sum of two PyTorch biases gives its gradient to both, and
the dropped key bias gets zeros.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from .. import plan as _plan
from .. import tree as _tree
from . import _torch_layers
from ..core import Layer
from ._torch_layers import (KINDS, InteropError, _GATES, _Reader, batch_norm_from_torch,
                            batch_norm_to_torch, conv1d_from_torch, conv1d_to_torch,
                            conv2d_from_torch, conv2d_to_torch, dense_from_torch, dense_to_torch,
                            embedding_from_torch, embedding_to_torch, flatten_permutation,
                            gru_from_torch, gru_to_torch, layer_norm_from_torch,
                            layer_norm_to_torch, lstm_from_torch, lstm_to_torch,
                            multi_head_attention_from_torch, multi_head_attention_to_torch,
                            rnn_from_torch, rnn_to_torch)

__all__ = [
    "LayerMap", "InteropError", "KINDS", "load_state_dict", "to_state_dict",
    "sequential_mapping", "flatten_permutation",
    "dense_from_torch", "dense_to_torch", "conv1d_from_torch", "conv1d_to_torch",
    "conv2d_from_torch", "conv2d_to_torch", "batch_norm_from_torch", "batch_norm_to_torch",
    "layer_norm_from_torch", "layer_norm_to_torch", "embedding_from_torch",
    "embedding_to_torch", "rnn_from_torch", "rnn_to_torch", "gru_from_torch", "gru_to_torch",
    "lstm_from_torch", "lstm_to_torch", "multi_head_attention_from_torch",
    "multi_head_attention_to_torch",
]


class LayerMap(NamedTuple):
    """One fundl layer <-> one PyTorch module.

    ``fundl``: the layer's path in params/state (``"serial_0/dense_0"``, ``""`` = root).
    ``torch``: the module's prefix in the state_dict (``"0"``, ``"fc1"``, ``""`` = root).
    ``kind``: one of :data:`KINDS`.  ``options``: keyword arguments of the kind's
    converters (``{"flatten_from": (7, 7, 16)}``, ``{"bidirectional": True}``).
    """

    fundl: str
    torch: str
    kind: str
    options: Mapping[str, Any] = {}


def _require_torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise ImportError("fundl.interop.torch needs PyTorch for this function: "
                          "pip install torch") from err
    return torch


def _entries(mapping: Sequence[Any]) -> List[LayerMap]:
    out = []
    for entry in mapping:
        if not isinstance(entry, LayerMap):
            if not isinstance(entry, (tuple, list)) or len(entry) not in (3, 4):
                raise InteropError(f"a mapping entry is (fundl_path, torch_prefix, kind"
                                   f"[, options]), got {entry!r}")
            entry = LayerMap(*entry)
        if entry.kind not in KINDS:
            raise InteropError(f"unknown layer kind {entry.kind!r} for '{entry.fundl}'; "
                               f"known kinds: {', '.join(KINDS)}")
        out.append(entry)
    return out


def _subtree(tree: Any, path: str, what: str) -> Any:
    node = tree
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, Mapping) or part not in node:
            have = ", ".join(map(str, node)) if isinstance(node, Mapping) else type(node).__name__
            raise InteropError(f"the fundl {what} have no path '{path}' (at '{part}'; "
                               f"there: {have})")
        node = node[part]
    return node


def _replace(tree: Any, path: str, value: Any) -> Any:
    """A copy of the dicts along ``path`` with the subtree at ``path`` replaced."""
    return _tree.replace_at(tree, [p for p in path.split("/") if p], value)


def _fit(like: Any, converted: Any, entry: LayerMap, what: str) -> Any:
    """``converted`` rebuilt like ``like`` (same paths and shapes, ``like``'s dtypes)."""
    table = dict(_tree.flatten_with_paths(converted))
    want = dict(_tree.flatten_with_paths(like))
    where = f"'{entry.fundl}' <- '{entry.torch}' ({entry.kind})"
    missing, extra = [p for p in want if p not in table], [p for p in table if p not in want]
    if missing or extra:
        raise InteropError(f"{where}: the fundl {what} have {sorted(want)} but the state_dict "
                           f"gives {sorted(table)} (check the layer's options, e.g. use_bias, "
                           f"or the mapping's kind/options)")
    out = {}
    for p, ref in want.items():
        value = table[p]
        if value.shape != np.shape(ref):
            raise InteropError(f"{where}: {what} '{_tree.join_path(entry.fundl, p)}' has shape "
                               f"{np.shape(ref)} in fundl but {value.shape} from the state_dict")
        out[p] = value.astype(np.asarray(ref).dtype, copy=False)
    return _tree.unflatten_from_paths(like, out)


def load_state_dict(params: Any, state: Any, state_dict: Mapping[str, Any],
                    mapping: Sequence[Any], *, strict: bool = True) -> Tuple[Any, Any]:
    """New ``(params, state)`` with the layers in ``mapping`` loaded from ``state_dict``.

    ``state_dict`` maps names to torch tensors or numpy arrays (``module.state_dict()``,
    ``safetensors.numpy.load_file(path)``).  Each :class:`LayerMap` entry's tensors
    (names under ``torch + "."``) are converted by its kind (see the module docstring
    for the layouts) and must give exactly the leaves and shapes of the fundl
    subtree at its path; values are cast to the dtype of the params they replace,
    as ``torch.nn.Module.load_state_dict`` does.  Nothing is mutated: the inputs
    stay as they are, the result shares the untouched leaves.  With ``strict``
    (default), every tensor of ``state_dict`` must be used (``num_batches_tracked``
    aside) and every param leaf covered; otherwise :class:`InteropError` lists them.
    """
    entries = _entries(mapping)
    used: Set[str] = set()
    new_params, new_state = params, state
    for entry in entries:
        prefix = entry.torch + "." if entry.torch else ""
        sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        reader = _Reader(sub, entry.kind, prefix)
        p, s = KINDS[entry.kind][0](reader, **dict(entry.options))
        used.update(prefix + k for k in reader.used)
        new_params = _replace(new_params, entry.fundl,
                              _fit(_subtree(params, entry.fundl, "params"), p, entry, "params"))
        new_state = _replace(new_state, entry.fundl,
                             _fit(_subtree(state, entry.fundl, "state"), s, entry, "state"))
    if strict:
        unused = [k for k in state_dict if k not in used and not k.endswith("num_batches_tracked")]
        if unused:
            hint = (" (a bidirectional module? give its entry options={'bidirectional': True})"
                    if any("_reverse" in k for k in unused) else "")
            raise InteropError(f"strict: {len(unused)} tensors of the state_dict are not "
                               f"mapped: {', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}"
                               f"{hint}; pass strict=False to ignore them")
        covered = [e.fundl for e in entries]
        uncovered = [p for p in _tree.paths(params)
                     if not any(p == c or p.startswith(c + "/") or c == "" for c in covered)]
        if uncovered:
            raise InteropError(f"strict: {len(uncovered)} fundl params are not mapped: "
                               f"{', '.join(uncovered[:8])}; pass strict=False to keep them")
    return new_params, new_state


def to_state_dict(params: Any, state: Any, mapping: Sequence[Any], *, gradients: bool = False,
                  as_tensors: bool = False) -> Dict[str, Any]:
    """The PyTorch ``state_dict`` of the layers in ``mapping``: ``{name: array}``.

    The reverse of :func:`load_state_dict` (layouts in the module docstring); the
    arrays are new (C-contiguous), of the params' dtypes.  ``state=None`` leaves
    out the buffers (running statistics).  ``gradients=True`` treats ``params`` as
    gradients (``dparams`` of a pullback): each PyTorch parameter gets its
    gradient (the two biases summed into one fundl bias both get its gradient),
    comparable with ``param.grad``.  ``as_tensors=True`` returns torch tensors
    (needs torch), ready for ``module.load_state_dict``.
    """
    torch = _require_torch() if as_tensors else None
    out: Dict[str, Any] = {}
    for entry in _entries(mapping):
        prefix = entry.torch + "." if entry.torch else ""
        p = _subtree(params, entry.fundl, "params")
        s = None if state is None else _subtree(state, entry.fundl, "state")
        sd = KINDS[entry.kind][1](p, s, gradients=gradients, **dict(entry.options))
        for k, v in sd.items():
            out[prefix + k] = torch.from_numpy(v) if torch is not None else v  # as_tensors
    return out


# --- the automatic mapper for nn.Sequential ---------------------------------------------

class _TorchLeaf(NamedTuple):
    """A supported torch module with weights: its ``prefix``, what it is (``found``) and its
    ``kernel`` size (convs), for :func:`_torch_layers.check_layer_config`."""

    prefix: str
    found: _torch_layers.ModuleKind
    kernel: Optional[Tuple[int, ...]]


_ROOT = "<root>"


def _torch_leaves(torch: Any, module: Any, prefix: str) -> List[_TorchLeaf]:
    """Supported modules with params or buffers, in order (nested containers walked)."""
    found = _torch_layers.torch_module_kind(torch, module, prefix or _ROOT)
    if found is not None:
        kernel = getattr(module, "kernel_size", None)
        return [_TorchLeaf(prefix, found, None if kernel is None else tuple(kernel))]
    if any(True for _ in module.parameters(recurse=False)) or \
            any(True for _ in module.buffers(recurse=False)):
        raise InteropError(f"torch module '{prefix or _ROOT}' ({type(module).__name__}) "
                           f"has parameters but no fundl counterpart; supported: "
                           f"Linear, Conv1d/2d, BatchNorm1d/2d, LayerNorm, Embedding, RNN, GRU, "
                           f"LSTM, MultiheadAttention")
    out = []
    for name, child in module.named_children():
        out += _torch_leaves(torch, child, f"{prefix}.{name}" if prefix else name)
    return out


def _fundl_leaves(model: Layer, in_shape: Any) -> List[Tuple[str, Layer, Any, bool]]:
    """``(path, layer, in_shape, has_weights)`` of every layer not a serial, whose parents are
    all serials, in order (read from the model's plan): a transparent wrapper's layer
    (``eval_mode(dense(...))``) in its place, a shared layer's later uses without weights."""
    planned = _plan.of(model)
    spec = planned.spec_for(in_shape)
    if spec is None:
        raise InteropError(f"the fundl model cannot take the input shape {in_shape!r}")
    chains = {node.path for node in spec.nodes if node.layer.kind == "serial"}
    return [("/".join(place.path), place.nodes[-1].layer, place.nodes[0].in_shape,
             bool(place.params or place.state))
            for place in planned.places(spec)
            if place.nodes[-1].layer.kind != "serial" and place.path[:-1] in chains]


def sequential_mapping(model: Layer, module: Any, in_shape: Any) -> List[LayerMap]:
    """The mapping between a fundl :func:`~fundl.serial` and a ``torch.nn.Sequential``.

    The modules with parameters or buffers (nested containers are walked) are
    paired in order with the fundl layers that have params or state (nested
    serials are walked); parameter-free layers (activations, pooling, flatten,
    dropout) are skipped on both sides.  A recurrent module with ``num_layers=L``
    takes the next ``L`` fundl layers (``bidirectional`` ones for a bidirectional
    module).  ``in_shape`` is the fundl per-example input shape (channels-last);
    it threads the shapes so that a dense layer after a :func:`~fundl.flatten` of
    spatial data that a PyTorch conv produced (channels-first) gets
    ``options={"flatten_from": shape}``.  Raises :class:`InteropError` when the
    two do not line up.
    """
    torch = _require_torch()
    leaves = _fundl_leaves(model, in_shape)
    flat_from: Dict[str, Any] = {}
    pending = None
    for path, layer, shape, weighted in leaves:
        if layer.kind == "flatten":
            pending = tuple(shape)
        elif weighted:
            if layer.kind == "dense" and pending is not None and len(pending) >= 2:
                flat_from[path] = pending
            pending = None
    fundl_side = [(path, layer) for path, layer, _, weighted in leaves if weighted]
    torch_side = _torch_leaves(torch, module, "")
    want = sum(leaf.found.n_layers for leaf in torch_side)
    if want != len(fundl_side):
        raise InteropError(
            f"the models do not line up: {want} torch layers with weights "
            f"({', '.join(f'{t.prefix or _ROOT}:{t.found.kind}' for t in torch_side)}) but "
            f"{len(fundl_side)} fundl layers with params "
            f"({', '.join(f'{p}:{layer.kind}' for p, layer in fundl_side)})")
    out, i, seen_conv = [], 0, False
    for prefix, found, kernel in torch_side:
        kind, options = found.kind, found.options
        seen_conv = seen_conv or kind in ("conv1d", "conv2d")
        for k in range(found.n_layers):
            path, layer = fundl_side[i]
            i += 1
            expect = "bidirectional" if options.get("bidirectional") else kind
            if layer.kind != expect:
                raise InteropError(f"the models do not line up: fundl layer '{path}' is a "
                                   f"{layer.kind} but torch module '{prefix}' is a {expect}")
            for _, direction in (layer.children if layer.kind == "bidirectional"
                                 else (("", layer),)):
                _torch_layers.check_layer_config(
                    kind, found.expect, direction.config,
                    f"fundl layer '{path}' <- torch module '{prefix or _ROOT}'", kernel=kernel)
            opts = dict(options)
            if kind in _GATES:
                opts["layer"] = k
            if kind == "dense" and path in flat_from and seen_conv:
                opts["flatten_from"] = flat_from[path]
            out.append(LayerMap(path, prefix, kind, opts))
    return out
