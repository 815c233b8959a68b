"""Recurrent layers to ONNX: the ``RNN``, ``GRU`` and ``LSTM`` ops (no unrolling).

ONNX's recurrent ops compute fundl's cells exactly, with the gate blocks reordered
and the weights transposed:

- rnn: ``W = w_x^T``, ``R = w_h^T``, ``B = [b, 0]``, activation ``Tanh`` or ``Relu``;
- gru: fundl's ``r, z, n`` blocks are ONNX's ``z, r, h`` reordered; fundl's GRU is
  PyTorch's (the reset applied after ``h @ w_h``), which is ONNX's
  ``linear_before_reset=1``; ``B = [b (as Wb), 0, 0, b_hn (as Rb)]``;
- lstm: fundl's ``i, f, g, o`` blocks are ONNX's ``i, o, f, c`` reordered; ``B = [b, 0]``.

``with_lengths``: the lengths (an int64 graph input) are the op's ``sequence_lens``
(int32).  ONNX's semantics are fundl's: steps past a sequence's length are
zeros in ``Y`` and do not change the state, ``Y_h`` is the state after the last
valid step, and the reverse direction starts at each sequence's own last valid
step (as fundl's :func:`~fundl.bidirectional` reverses within lengths).
``with_initial_state`` feeds ``initial_h`` (``initial_c``), ``return_state`` reads
``Y_h`` (``Y_c``); with lengths too, a ``Where`` keeps the initial state of an empty
sequence (fundl's rule; ONNX Runtime gives zeros there). ``bidirectional`` over two
recurrent layers of one kind and size is one op with ``direction="bidirectional"``;
over other layers it reverses the sequence in the graph (``ReverseSequence`` within
the lengths, or a reversing ``Slice``) around the backward layer.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .site import Site, check_built_by_fundl, converts

_OP = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}
#: fundl's gate blocks in ONNX's order: GRU r, z, n -> z, r, h; LSTM i, f, g, o -> i, o, f, c.
_ORDER = {"rnn": (0,), "gru": (1, 0, 2), "lstm": (0, 3, 1, 2)}


def onnx_weights(kind: str, params: Dict[str, np.ndarray]) -> Tuple[np.ndarray, ...]:
    """``(W, R, B)`` of one direction in ONNX's layout: ``W`` ``(G*H, features)``, ``R``
    ``(G*H, H)``, ``B`` ``(2*G*H,)`` (the input biases, then the recurrent ones)."""
    hidden = params["w_h"].shape[0]

    def blocks(a: np.ndarray) -> np.ndarray:     # gate blocks of the last axis, reordered
        return np.concatenate([a[..., k * hidden:(k + 1) * hidden] for k in _ORDER[kind]],
                              axis=-1)

    recurrent_bias = np.zeros_like(params["b"])
    if kind == "gru":
        recurrent_bias[2 * hidden:] = params["b_hn"]   # the h (fundl's n) block, last in ONNX
    return (blocks(params["w_x"]).T, blocks(params["w_h"]).T,
            np.concatenate([blocks(params["b"]), recurrent_bias]))


def run_op(s: Site, kind: str, config: Any, directions: Sequence[Dict[str, np.ndarray]],
           x: Any, lengths: Optional[Any], state0: Optional[Any], direction: str) -> List[Any]:
    """The ``RNN``/``GRU``/``LSTM`` node on ``x`` ``(batch, time, features)``; its outputs
    ``[Y (T, D, N, H), Y_h (D, N, H)]`` (and ``Y_c`` for the LSTM)."""
    g = s.g
    weights = [onnx_weights(kind, p) for p in directions]
    w, r, b = (g.const(np.stack([wt[i] for wt in weights]), name) for i, name in
               enumerate(("W", "R", "B")))
    # the lengths: an int64 graph input, cast to the op's int32
    seq = None if lengths is None else g.need(g.need(lengths, np.int64), np.int32)
    if state0 is None:
        initial: Tuple[Any, ...] = ()
    else:
        parts = state0 if kind == "lstm" else (state0,)
        initial = tuple(g.unsqueeze(p, [0]) for p in parts)
    attrs: Dict[str, Any] = {"hidden_size": int(config["hidden"]), "direction": direction}
    if kind == "gru":
        attrs["linear_before_reset"] = 1
    if kind == "rnn":
        attrs["activations"] = [config["activation"].capitalize()] * len(directions)
    outputs = 3 if kind == "lstm" else 2
    outs = list(g.op(_OP[kind], g.transpose(x, [1, 0, 2]), w, r, b, seq, *initial,
                     outputs=outputs, **attrs))
    if seq is not None and initial:
        # an empty sequence keeps its initial state in fundl; ONNX Runtime's Y_h/Y_c are
        # zeros there (the ONNX spec leaves it open): put the initial state back
        empty = g.unsqueeze(g.op("Equal", g.need(lengths, np.int64), g.ints([0], "zero")),
                            [0, 2])                                  # (1, N, 1)
        outs[1:] = [g.op("Where", empty, h0, out) for h0, out in zip(initial, outs[1:])]
    return outs


def sequences(s: Site, y: Any, steps: int, width: int, merge: str = "concat") -> Any:
    """``Y`` ``(T, D, N, H)`` as ``(batch, T, D*H)`` (``width = D*H``: the directions
    concatenated) or, for ``merge="sum"``, ``(batch, T, H)``."""
    y = s.g.transpose(y, [2, 0, 1, 3])                        # (N, T, D, H)
    if merge == "sum":
        return s.g.reduce("ReduceSum", y, [2], keepdims=False)
    return s.g.reshape(y, (steps, width))


def last_states(s: Site, y_h: Any, width: int, merge: str = "concat") -> Any:
    """``Y_h`` ``(D, N, H)`` as ``(batch, D*H)`` (``width = D*H``) or, for ``merge="sum"``,
    ``(batch, H)``."""
    if merge == "sum":
        return s.g.reduce("ReduceSum", y_h, [0], keepdims=False)
    return s.g.reshape(s.g.transpose(y_h, [1, 0, 2]), (width,))


def split_inputs(config: Any, x: Any) -> Tuple[Any, Optional[Any], Optional[Any]]:
    """``(x, lengths or None, initial state or None)`` from a recurrent layer's input."""
    if not (config["with_lengths"] or config["with_initial_state"]):
        return x, None, None
    lengths = x[1] if config["with_lengths"] else None
    state0 = x[-1] if config["with_initial_state"] else None
    return x[0], lengths, state0


@converts("rnn", "gru", "lstm")
def recurrent(s: Site, x: Any) -> Any:
    """One ``RNN``/``GRU``/``LSTM`` node (``direction="forward"``) and the reshapes of its
    outputs to fundl's: ``(batch, time, hidden)``, or the last state ``(batch, hidden)``,
    and ``(y, h_n)`` / ``(y, (h_n, c_n))`` with ``return_state``."""
    c = s.config
    seq, lengths, state0 = split_inputs(c, x)
    x_shape = s.in_shape if seq is x else s.in_shape[0]
    outs = run_op(s, s.kind, c, [s.params], seq, lengths, state0, "forward")
    y = (sequences(s, outs[0], x_shape[0], c["hidden"]) if c["return_sequences"]
         else last_states(s, outs[1], c["hidden"]))
    if not c["return_state"]:
        return y
    final = tuple(s.g.squeeze(o, [0]) for o in outs[1:])
    return y, final if s.kind == "lstm" else final[0]


_SAME = ("hidden", "return_sequences", "with_lengths", "with_initial_state", "return_state")


def _one_op(forward: Any, backward: Any) -> bool:
    """Whether two recurrent children run as one bidirectional ONNX op (same kind, size and
    options)."""
    if forward.kind not in _OP or backward.kind != forward.kind:
        return False
    keys = _SAME + (("activation",) if forward.kind == "rnn" else ())
    return all(forward.config[k] == backward.config[k] for k in keys)


@converts("bidirectional")
def bidirectional(s: Site, x: Any) -> Any:
    """``layer_fwd`` on the sequence and ``layer_bwd`` on it reversed (within each length),
    merged by ``concat`` (features ``[forward, backward]``) or ``sum``: one
    ``direction="bidirectional"`` op when the two are recurrent layers of one kind and
    size, else the two converted apart around a reversal of the sequence."""
    (_, forward), (_, backward) = s.layer.children
    merge = s.config["merge"]
    seq, lengths = x if isinstance(x, tuple) else (x, None)
    sequence_out = len(s.out_shape) == 2
    if _one_op(forward, backward):
        for key, child in s.layer.children:
            check_built_by_fundl(child, s.path + (key,))
        c = forward.config
        outs = run_op(s, forward.kind, c, [s.params["forward"], s.params["backward"]], seq,
                      lengths, None, "bidirectional")
        width = 2 * c["hidden"]
        if sequence_out:
            return sequences(s, outs[0], s.out_shape[0], width, merge)
        return last_states(s, outs[1], width, merge)

    def reverse(v: Any) -> Any:
        if lengths is not None:
            return s.g.op("ReverseSequence", v, s.g.need(lengths, np.int64), batch_axis=0,
                          time_axis=1)
        return s.g.op("Slice", v, s.g.ints([-1]), s.g.ints([np.iinfo(np.int64).min]),
                      s.g.ints([1]), s.g.ints([-1]))

    y_f = s.child("forward", x)
    y_b = s.child("backward", reverse(seq) if lengths is None else (reverse(seq), lengths))
    if sequence_out:
        y_b = reverse(y_b)
    if merge == "sum":
        return s.g.op("Add", y_f, y_b)
    return s.g.op("Concat", y_f, y_b, axis=-1)
