"""Recurrent layers over ``(batch, time, features)``: rnn, gru, lstm, bidirectional.

Every cell follows the same plan, for speed:

- forward: the input projection of all time steps is one matmul
  ``(N*T, F) @ (F, G*H)`` (``G`` gates of ``H`` units), done before the loop;
  the loop over time does one ``(N, H) @ (H, G*H)`` per step and writes the
  gate activations in place into that projection buffer;
- backward (BPTT): the pullback loops backward over time and stacks the
  per-step gate gradients ``dG`` of shape ``(N, T, G*H)``; then
  ``dw_x = X^T @ dG``, ``dw_h = H_prev^T @ dG`` and ``dx = dG @ w_x^T`` are one
  matmul each.

Inputs and outputs (builder flags of :func:`rnn`, :func:`gru`, :func:`lstm`; the
plain form ``x`` ``(batch, time, features)`` -> ``y`` is the default):

- ``with_lengths=True``: the input is ``(x, lengths)``, ``lengths`` an integer
  array ``(batch,)`` with ``0 <= lengths[n] <= time`` (``init``'s in_shape
  ``((time, features), ())``).  Steps ``t >= lengths[n]`` are padding: they
  neither update the state (it is carried through unchanged) nor receive
  gradient (their ``dx`` is exactly zero); sequence outputs there are zeros (as
  PyTorch's ``pad_packed_sequence``), and a last-step output
  (``return_sequences=False``) is the state after each sequence's own last valid
  step (PyTorch's ``h_n`` for a packed sequence).  The lengths get no gradient
  (``None`` in their slot of ``dx``).
- ``with_initial_state=True``: the input is ``(x, h0)``, or ``(x, lengths, h0)``;
  ``h0`` is ``(batch, hidden)`` (for the LSTM the pair ``(h0, c0)``; in_shape
  ``(hidden,)`` or ``((hidden,), (hidden,))``), and its gradient is returned in
  its slot of ``dx``.  Without it the initial state is zeros.  PyTorch's
  ``h_0``/``c_0`` of shape ``(1, batch, hidden)`` are ``h0 = h_0[0]``.
- ``return_state=True``: the output is ``(y, h_n)`` (LSTM: ``(y, (h_n, c_n))``),
  the final state after the last valid step, each ``(batch, hidden)``; the
  pullback takes ``(dy, dh_n)`` (``(dy, (dh_n, dc_n))``).

Params (all of ``dtype``, float32 by default):
``w_x`` ``(features, G*hidden)`` Glorot-uniform, ``w_h`` ``(hidden, G*hidden)``
with each gate's ``(hidden, hidden)`` block orthogonal (Saxe et al., 2014), and
``b`` ``(G*hidden,)``.  Gate blocks are laid out side by side in the order
given in each layer's docstring.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np

from .. import fusion, kernels, random
from ..checks import (Array, LayerError, as_shape, check_float_input, check_param_dtype,
                      check_sequence_in_shape, check_trailing_shape, is_shape, normalize_shapes)
from ..combinators import apply_child, init_child, split_key, vjp_child
from ..core import Layer, stateless_layer
from ..initializers import Initializer, glorot_uniform, orthogonal, zeros

__all__ = ["rnn", "gru", "lstm", "bidirectional"]



# --- shared pieces -----------------------------------------------------------------

def _gate_init(w_x_init: Initializer, w_h_init: Initializer, b_init: Initializer,
               gates: int) -> Callable[[Any, int, int, Any], Dict[str, Array]]:
    """``init(key, features, hidden, dtype) -> {"w_x", "w_h", "b"}``; ``w_h`` per gate block."""
    def init(key, features, hidden, dtype):
        k_x, k_h, k_b = random.split(key, 3)
        w_h = np.concatenate([w_h_init(k, (hidden, hidden), dtype)
                              for k in random.split(k_h, gates)], axis=1)
        return {"w_x": w_x_init(k_x, (features, gates * hidden), dtype),
                "w_h": w_h.astype(dtype, copy=False),
                "b": b_init(k_b, (gates * hidden,), dtype)}
    return init


def _check_input(params: Dict[str, Array], x: Any) -> None:
    check_float_input(x)
    w_x = params["w_x"]
    check_trailing_shape(x, (None, w_x.shape[0]))
    if x.shape[1] < 1:
        raise LayerError(f"expected at least one time step, got shape {tuple(x.shape)}")
    check_param_dtype(x, w_x)


def _input_projection(x: Array, w_x: Array, b: Array) -> Array:
    """``x @ w_x + b`` for all steps at once: ``(N, T, F) -> (N, T, G*H)`` (a fresh array)."""
    n, t, f = x.shape
    xp = (x.reshape(n * t, f) @ w_x).reshape(n, t, w_x.shape[1])
    xp += b
    return xp


def _last(h: Array) -> Array:
    """The last hidden state ``(N, H)`` as a compact array (drops the view on a big buffer)."""
    return np.ascontiguousarray(h)


def _add(a: Optional[Array], b: Optional[Array]) -> Array:
    """``a + b`` where either may be None (never both): a fresh array or one of them."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _masked(g: Array, v: Optional[Array]) -> Array:
    """``g`` where the step is valid (``v`` is the ``(N, 1)`` 0/1 mask of a step), else 0."""
    return g if v is None else g * v


def _passed(dh: Array, g: Array, v: Optional[Array]) -> Array:
    """``dh`` plus the gradient ``g`` carried through the padded rows unchanged."""
    if v is None:
        return dh
    dh += g * (1.0 - v)
    return dh


def _blend_(new: Array, old: Any, valid: Optional[Array]) -> None:
    """In place: ``new <- old`` in the rows of padded steps (``valid`` is ``(N,)`` bool)."""
    if valid is not None and not valid.all():
        np.copyto(new, old, where=~valid[:, None])


def _input_grads(x: Array, dgx: Array, w_x: Array,
                 need_dx: bool) -> Tuple[Array, Array, Optional[Array]]:
    """``(dw_x, db, dx)`` from the stacked input-side gate gradients ``dgx`` ``(N, T, G*H)``."""
    n, t, f = x.shape
    dg2 = dgx.reshape(n * t, -1)
    dw_x = x.reshape(n * t, f).T @ dg2
    db = dg2.sum(axis=0)
    dx = (dg2 @ w_x.T).reshape(n, t, f) if need_dx else None
    return dw_x, db, dx


def _recurrent_grad(hs: Array, dgh: Array, h0: Optional[Array] = None) -> Array:
    """``dw_h = sum_t h_{t-1}^T dG_t`` as one matmul (``h_{-1} = h0``; None: zeros, nothing)."""
    n, t, h = hs.shape
    h_prev = hs[:, :-1].reshape(n * (t - 1), h)
    dw_h = h_prev.T @ dgh[:, 1:].reshape(n * (t - 1), dgh.shape[2])
    if h0 is not None:
        dw_h += h0.T @ dgh[:, 0]
    return dw_h


class _Steps(NamedTuple):
    """What a cell's scan and bptt need beyond params and x.

    ``state0``: the initial state as a tuple (``(h0,)`` or ``(h0, c0)``), or None
    for zeros; ``valid``: ``(N, T)`` bool, True at real (unpadded) steps, or None
    when every step is real; ``vf``: ``valid`` as ``(N, T, 1)`` 0/1 of x's dtype.
    """

    state0: Optional[Tuple[Array, ...]]
    valid: Optional[Array]
    vf: Optional[Array]

    def v(self, t: int) -> Optional[Array]:
        return None if self.vf is None else self.vf[:, t]

    def valid_at(self, t: int) -> Optional[Array]:
        return None if self.valid is None else self.valid[:, t]


def _recurrent_layer(name: str, hidden: int, return_sequences: bool, dtype: Any,
                     init_params: Callable[[Any, int, int, Any], Dict[str, Array]],
                     scan: Callable[..., Tuple[Array, Any, Tuple[Array, ...]]],
                     bptt: Callable[..., Tuple[Dict[str, Array], Optional[Array], Any]],
                     n_state: int = 1, with_lengths: bool = False,
                     with_initial_state: bool = False, return_state: bool = False) -> Layer:
    """Wrap a cell's ``scan``/``bptt`` into a Layer (inputs, checks, shapes, return modes).

    ``scan(params, x, steps, keep) -> (hs, cache, final)``: ``hs`` ``(N, T, H)`` are
    the hidden states carried after every step (a padded step carries the previous
    one); ``cache`` holds the other residuals for ``bptt`` when ``keep`` (inference
    passes ``keep=False``); ``final`` is the final state tuple.
    ``bptt(params, x, hs, cache, steps, dy_at, dfinal, need_dx) -> (dparams, dx,
    dstate0)``; ``dy_at(t)`` is the gradient of the carried ``h`` at step ``t`` from
    outside (None if none), ``dfinal`` the gradients of the final state's other
    parts (``(dc_n,)`` for the LSTM, or None), ``dstate0`` the initial state's
    gradient tuple (when ``steps.state0`` is given).
    """
    if int(hidden) < 1:
        raise ValueError(f"{name} needs hidden >= 1, got {hidden}")
    hidden = int(hidden)
    dtype = np.dtype(dtype)
    n_inputs = 1 + int(with_lengths) + int(with_initial_state)
    state_shape = (hidden,) if n_state == 1 else ((hidden,),) * n_state
    forms = "(x, " + ", ".join(["lengths"] * with_lengths
                               + ["initial_state"] * with_initial_state) + ")"

    def init(key, in_shape):
        if n_inputs == 1:
            x_shape = check_sequence_in_shape(in_shape)
        else:
            if is_shape(in_shape) or not isinstance(in_shape, (tuple, list)) \
                    or len(in_shape) != n_inputs:
                raise LayerError(f"expected a tuple of {n_inputs} input shapes {forms}, "
                                 f"got {in_shape!r}")
            x_shape = check_sequence_in_shape(in_shape[0])
            if with_lengths and as_shape(in_shape[1]) != ():
                raise LayerError(f"expected the per-example lengths shape (), got "
                                 f"{in_shape[1]!r}")
            if with_initial_state and normalize_shapes(in_shape[-1]) != state_shape:
                raise LayerError(f"expected the per-example initial state shape {state_shape}, "
                                 f"got {in_shape[-1]!r}")
        params = init_params(key, x_shape[1], hidden, dtype)
        y_shape = (x_shape[0], hidden) if return_sequences else (hidden,)
        return params, (y_shape, state_shape) if return_state else y_shape

    def split_inputs(params, inp):
        """``(x, steps)`` from the layer's input, checked."""
        if n_inputs == 1:
            _check_input(params, inp)
            return inp, _Steps(None, None, None)
        if not isinstance(inp, (tuple, list)) or len(inp) != n_inputs:
            got = (f"an array of shape {tuple(inp.shape)}" if isinstance(inp, np.ndarray)
                   else f"{type(inp).__name__} of length {len(inp)}"
                   if isinstance(inp, (tuple, list)) else type(inp).__name__)
            raise LayerError(f"expected a tuple of {n_inputs} inputs {forms}, got {got}")
        x = inp[0]
        _check_input(params, x)
        valid = vf = state0 = None
        if with_lengths:
            valid = _valid_steps(inp[1], x.shape[0], x.shape[1])
            if valid.all():
                valid = None
            else:
                vf = valid[:, :, None].astype(x.dtype)
        if with_initial_state:
            state0 = _check_state(inp[-1], n_state, x.shape[0], hidden, x.dtype)
        return x, _Steps(state0, valid, vf)

    def outputs(hs, final, steps):
        if return_sequences:
            y = hs if steps.vf is None else hs * steps.vf     # zeros at padded steps
        else:
            y = _last(hs[:, -1])
        if not return_state:
            return y
        final = tuple(_last(a) for a in final)
        return y, final[0] if n_state == 1 else final

    def apply(params, inp):
        x, steps = split_inputs(params, inp)
        hs, _, final = scan(params, x, steps, keep=False)
        return outputs(hs, final, steps)

    def vjp(params, inp, need_dx=True):
        x, steps = split_inputs(params, inp)
        hs, cache, final = scan(params, x, steps, keep=True)
        y = outputs(hs, final, steps)
        last = x.shape[1] - 1

        def pullback(dy):
            dfinal = None
            if return_state:
                dy, dstate = dy
                dstate = (dstate,) if n_state == 1 else tuple(dstate)
                dfinal = dstate[1:] or None
                dh_n = dstate[0]
            else:
                dh_n = None
            if return_sequences:
                dys = dy if steps.vf is None else dy * steps.vf
                dy_at = lambda t: _add(dys[:, t], dh_n) if t == last else dys[:, t]  # noqa: E731
            else:
                dy_last = _add(dy, dh_n)
                dy_at = lambda t: dy_last if t == last else None  # noqa: E731
            dparams, dx, dstate0 = bptt(params, x, hs, cache, steps, dy_at, dfinal, need_dx)
            if n_inputs == 1 or not need_dx:
                return dparams, dx
            dxs = (dx,) + ((None,) if with_lengths else ())
            if with_initial_state:
                dxs += (dstate0[0] if n_state == 1 else tuple(dstate0),)
            return dparams, dxs

        return y, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",))


def _valid_steps(lengths: Any, n: int, steps: int) -> Array:
    """``(N, T)`` bool, True at the steps ``t < lengths[n]``; checks ``lengths``."""
    if not isinstance(lengths, np.ndarray) or lengths.dtype.kind not in "iu":
        what = (f"dtype {lengths.dtype}" if isinstance(lengths, np.ndarray)
                else type(lengths).__name__)
        raise LayerError(f"expected integer lengths of shape ({n},), got {what}")
    if lengths.shape != (n,):
        raise LayerError(f"expected lengths of shape ({n},) (one per example), got shape "
                         f"{tuple(lengths.shape)}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > steps):
        raise LayerError(f"expected lengths in [0, {steps}] (the time steps of the input), "
                         f"got min {lengths.min()} and max {lengths.max()}")
    return np.arange(steps)[None, :] < lengths[:, None]


def _check_state(state: Any, n_state: int, n: int, hidden: int, dtype: Any) -> Tuple[Array, ...]:
    """The initial state as a tuple of ``n_state`` ``(N, hidden)`` arrays of ``dtype``."""
    if n_state == 1:
        parts = (state,)
    elif isinstance(state, (tuple, list)) and len(state) == n_state:
        parts = tuple(state)
    else:
        raise LayerError(f"expected the initial state as a tuple (h0, c0) of ({n}, {hidden}) "
                         f"arrays, got {type(state).__name__}")
    for j, a in enumerate(parts):
        what = "initial state" + ("" if n_state == 1 else f" {'hc'[j]}0")
        check_float_input(a, what)
        if a.shape != (n, hidden) or a.dtype != dtype:
            raise LayerError(f"expected the {what} of shape ({n}, {hidden}) and dtype {dtype}, "
                             f"got shape {tuple(a.shape)} and dtype {a.dtype}")
    return parts


# --- simple RNN --------------------------------------------------------------------

def _tanh_grad(h: Array, g: Array, out: Array) -> None:
    np.multiply(h, h, out=out)
    np.subtract(1.0, out, out=out)
    out *= g


def _relu_grad(h: Array, g: Array, out: Array) -> None:
    np.multiply(g, h > 0, out=out)


_RNN_ACTIVATIONS = {"tanh": (kernels.tanh, _tanh_grad), "relu": (kernels.relu, _relu_grad)}


def rnn(hidden: int, *, return_sequences: bool = True, activation: str = "tanh",
        with_lengths: bool = False, with_initial_state: bool = False, return_state: bool = False,
        w_x_init: Initializer = glorot_uniform, w_h_init: Initializer = orthogonal(),
        b_init: Initializer = zeros, dtype: Any = np.float32, name: str = "rnn") -> Layer:
    """Elman RNN: ``h_t = act(x_t @ w_x + h_{t-1} @ w_h + b)``, ``h_{-1} = 0`` (or ``h0``).

    Shapes: ``x`` is ``(batch, time, features)``; ``y`` is ``(batch, time, hidden)``,
    or the last step ``(batch, hidden)`` with ``return_sequences=False``.
    ``with_lengths``, ``with_initial_state`` and ``return_state`` add the inputs
    and output described in :mod:`fundl.layers.recurrent`.
    Params: ``w_x`` ``(features, hidden)`` Glorot-uniform, ``w_h`` ``(hidden, hidden)``
    orthogonal, ``b`` ``(hidden,)`` zeros.  ``activation`` is ``"tanh"`` or ``"relu"``.
    PyTorch ``nn.RNN(features, hidden, nonlinearity=activation, batch_first=True)``:
    ``w_x = weight_ih_l0.T``, ``w_h = weight_hh_l0.T``, ``b = bias_ih_l0 + bias_hh_l0``.
    """
    if activation not in _RNN_ACTIVATIONS:
        raise ValueError(f"rnn activation must be one of {sorted(_RNN_ACTIVATIONS)}, "
                         f"got {activation!r}")
    act_, act_grad = _RNN_ACTIVATIONS[activation]

    def scan(params, x, steps, keep):
        w_h = params["w_h"]
        hs = _input_projection(x, params["w_x"], params["b"])  # becomes h_t in place
        h = None if steps.state0 is None else steps.state0[0]
        for t in range(x.shape[1]):
            a = hs[:, t]
            if h is not None:
                a += h @ w_h
            act_(a, out=a)
            _blend_(a, 0.0 if h is None else h, steps.valid_at(t))
            h = a
        return hs, None, (hs[:, -1],)

    def bptt(params, x, hs, cache, steps, dy_at, dfinal, need_dx):
        w_h = params["w_h"]
        h0 = None if steps.state0 is None else steps.state0[0]
        da = np.empty_like(hs)  # dL/d(pre-activation), stacked over time
        dh = None
        for t in reversed(range(hs.shape[1])):
            g, v = _add(dy_at(t), dh), steps.v(t)
            act_grad(hs[:, t], _masked(g, v), out=da[:, t])
            dh = _passed(da[:, t] @ w_h.T, g, v) if t > 0 or h0 is not None else None
        dw_x, db, dx = _input_grads(x, da, params["w_x"], need_dx)
        grads = {"w_x": dw_x, "w_h": _recurrent_grad(hs, da, h0), "b": db}
        return grads, dx, None if h0 is None else (dh,)

    return _recurrent_layer(name, hidden, return_sequences, dtype,
                            _gate_init(w_x_init, w_h_init, b_init, 1), scan, bptt,
                            1, with_lengths, with_initial_state, return_state)


# --- GRU ---------------------------------------------------------------------------

def gru(hidden: int, *, return_sequences: bool = True,
        with_lengths: bool = False, with_initial_state: bool = False, return_state: bool = False,
        w_x_init: Initializer = glorot_uniform, w_h_init: Initializer = orthogonal(),
        b_init: Initializer = zeros, dtype: Any = np.float32, name: str = "gru") -> Layer:
    """Gated recurrent unit, the Cho et al. (2014) / PyTorch form (reset after ``w_h``).

    Gate order ``r, z, n`` in the blocks of ``w_x``, ``w_h`` and ``b``::

        r_t = sigmoid(x_t @ w_x[:, r] + b[r] + h_{t-1} @ w_h[:, r])
        z_t = sigmoid(x_t @ w_x[:, z] + b[z] + h_{t-1} @ w_h[:, z])
        n_t = tanh(x_t @ w_x[:, n] + b[n] + r_t * (h_{t-1} @ w_h[:, n] + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_{t-1},        h_{-1} = 0 (or h0)

    Shapes: ``x`` ``(batch, time, features)`` -> ``(batch, time, hidden)``, or the
    last step ``(batch, hidden)`` with ``return_sequences=False``.
    ``with_lengths``, ``with_initial_state`` and ``return_state`` add the inputs
    and output described in :mod:`fundl.layers.recurrent`.
    Params: ``w_x`` ``(features, 3*hidden)`` Glorot-uniform, ``w_h``
    ``(hidden, 3*hidden)`` orthogonal per gate, ``b`` ``(3*hidden,)`` zeros (the
    sum of PyTorch's ``b_ih`` and ``b_hh`` for ``r, z``; ``b_in`` for ``n``) and
    ``b_hn`` ``(hidden,)`` zeros (PyTorch's ``b_hn``, inside the reset).
    PyTorch ``nn.GRU(features, hidden, batch_first=True)``: ``w_x = weight_ih_l0.T``,
    ``w_h = weight_hh_l0.T``, ``b = bias_ih_l0 + [bias_hh_l0[:2H], 0]``,
    ``b_hn = bias_hh_l0[2H:]`` (gate blocks in the same order).
    """
    gate_init = _gate_init(w_x_init, w_h_init, b_init, 3)

    def init_params(key, features, hid, dtype):
        k_g, k_n = random.split(key)
        params = gate_init(k_g, features, hid, dtype)
        params["b_hn"] = b_init(k_n, (hid,), dtype)
        return params

    def scan(params, x, steps, keep):
        w_h, b_hn = params["w_h"], params["b_hn"]
        hdim = w_h.shape[0]
        acts = _input_projection(x, params["w_x"], params["b"])  # becomes r, z, n in place
        n_b, n_t = x.shape[0], x.shape[1]
        hs = np.empty((n_b, n_t, hdim), x.dtype)
        hns = np.empty_like(hs) if keep else None
        h = np.zeros((n_b, hdim), x.dtype) if steps.state0 is None else steps.state0[0]
        for t in range(n_t):
            hp = h @ w_h
            a = acts[:, t]
            rz = a[:, :2 * hdim]
            rz += hp[:, :2 * hdim]
            kernels.sigmoid_tanh(rz, out=rz)
            r, z = a[:, :hdim], a[:, hdim:2 * hdim]
            hn = hp[:, 2 * hdim:]
            hn += b_hn
            if keep:
                hns[:, t] = hn
            n = a[:, 2 * hdim:]
            n += r * hn
            np.tanh(n, out=n)
            h_new = np.subtract(h, n, out=hs[:, t])
            h_new *= z
            h_new += n
            _blend_(h_new, h, steps.valid_at(t))
            h = h_new
        return hs, (acts, hns), (hs[:, -1],)

    def bptt(params, x, hs, cache, steps, dy_at, dfinal, need_dx):
        acts, hns = cache
        w_h = params["w_h"]
        hdim = w_h.shape[0]
        h0 = None if steps.state0 is None else steps.state0[0]
        dgx = np.empty_like(acts)  # gradient of the input projection (r, z, n)
        dgh = np.empty_like(acts)  # gradient of h @ w_h + [0, 0, b_hn] (r, z, hn)
        dh = None
        for t in reversed(range(hs.shape[1])):
            g_all, v = _add(dy_at(t), dh), steps.v(t)
            g = _masked(g_all, v)                   # zero at padded steps
            a = acts[:, t]
            r, z, n = a[:, :hdim], a[:, hdim:2 * hdim], a[:, 2 * hdim:]
            gx, gh = dgx[:, t], dgh[:, t]
            h_prev = hs[:, t - 1] if t > 0 else (0.0 if h0 is None else h0)
            da_n = g * (1.0 - z)
            da_n *= 1.0 - n * n                                   # d(pre-tanh of n)
            gx[:, 2 * hdim:] = da_n
            np.multiply(da_n, r, out=gh[:, 2 * hdim:])              # d(h @ w_hn + b_hn)
            np.multiply(da_n * hns[:, t], r * (1.0 - r), out=gx[:, :hdim])
            np.multiply(g * (h_prev - n), z * (1.0 - z), out=gx[:, hdim:2 * hdim])
            gh[:, :2 * hdim] = gx[:, :2 * hdim]
            dh = g * z
            if t > 0 or h0 is not None:
                dh += gh @ w_h.T
            dh = _passed(dh, g_all, v)
        dw_x, db, dx = _input_grads(x, dgx, params["w_x"], need_dx)
        grads = {"w_x": dw_x, "w_h": _recurrent_grad(hs, dgh, h0), "b": db,
                 "b_hn": dgh[:, :, 2 * hdim:].sum(axis=(0, 1))}
        return grads, dx, None if h0 is None else (dh,)

    return _recurrent_layer(name, hidden, return_sequences, dtype, init_params, scan, bptt,
                            1, with_lengths, with_initial_state, return_state)


# --- LSTM --------------------------------------------------------------------------

def lstm(hidden: int, *, return_sequences: bool = True, forget_bias: float = 1.0,
         with_lengths: bool = False, with_initial_state: bool = False, return_state: bool = False,
         w_x_init: Initializer = glorot_uniform, w_h_init: Initializer = orthogonal(),
         dtype: Any = np.float32, name: str = "lstm") -> Layer:
    """Long short-term memory (Hochreiter & Schmidhuber, 1997; PyTorch's gate order).

    Gate order ``i, f, g, o`` in the blocks of ``w_x``, ``w_h`` and ``b``::

        [a_i, a_f, a_g, a_o] = x_t @ w_x + h_{t-1} @ w_h + b
        i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);   g = tanh(a_g)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t),                 h_{-1} = c_{-1} = 0 (or h0, c0)

    Shapes: ``x`` ``(batch, time, features)`` -> ``(batch, time, hidden)``, or the
    last ``h`` ``(batch, hidden)`` with ``return_sequences=False``.
    ``with_lengths``, ``with_initial_state`` and ``return_state`` add the inputs
    and output described in :mod:`fundl.layers.recurrent` (the state is ``(h, c)``).
    Params: ``w_x`` ``(features, 4*hidden)`` Glorot-uniform, ``w_h``
    ``(hidden, 4*hidden)`` orthogonal per gate, ``b`` ``(4*hidden,)`` zeros except
    the forget-gate block, initialised to ``forget_bias`` (1, as in Keras and
    Jozefowicz et al., 2015).
    PyTorch ``nn.LSTM(features, hidden, batch_first=True)``: ``w_x = weight_ih_l0.T``,
    ``w_h = weight_hh_l0.T``, ``b = bias_ih_l0 + bias_hh_l0`` (same gate order).
    """
    gate_init = _gate_init(w_x_init, w_h_init, zeros, 4)

    def init_params(key, features, hid, dtype):
        params = gate_init(key, features, hid, dtype)
        params["b"][hid:2 * hid] = forget_bias  # our own fresh array
        return params

    def scan(params, x, steps, keep):
        w_h = params["w_h"]
        hdim = w_h.shape[0]
        acts = _input_projection(x, params["w_x"], params["b"])  # becomes i, f, g, o
        n_b, n_t = x.shape[0], x.shape[1]
        hs = np.empty((n_b, n_t, hdim), x.dtype)
        cs = np.empty_like(hs) if keep else None
        tcs = np.empty_like(hs) if keep else None
        h, c = (None, None) if steps.state0 is None else steps.state0
        for t in range(n_t):
            a = acts[:, t]
            if h is not None:
                a += h @ w_h
            kernels.sigmoid_tanh(a[:, :2 * hdim], out=a[:, :2 * hdim])
            np.tanh(a[:, 2 * hdim:3 * hdim], out=a[:, 2 * hdim:3 * hdim])
            kernels.sigmoid_tanh(a[:, 3 * hdim:], out=a[:, 3 * hdim:])
            i, f, g, o = (a[:, k * hdim:(k + 1) * hdim] for k in range(4))
            c_new = np.multiply(i, g, out=cs[:, t] if keep else None)
            if c is not None:
                c_new += f * c
            valid = steps.valid_at(t)
            _blend_(c_new, 0.0 if c is None else c, valid)
            tc = np.tanh(c_new, out=tcs[:, t] if keep else None)
            h_new = np.multiply(o, tc, out=hs[:, t])
            _blend_(h_new, 0.0 if h is None else h, valid)
            h, c = h_new, c_new
        return hs, (acts, cs, tcs), (hs[:, -1], c)

    def bptt(params, x, hs, cache, steps, dy_at, dfinal, need_dx):
        acts, cs, tcs = cache
        w_h = params["w_h"]
        hdim = w_h.shape[0]
        h0, c0 = (None, None) if steps.state0 is None else steps.state0
        dg = np.empty_like(acts)
        dh, dc = None, (None if dfinal is None else dfinal[0])
        for t in reversed(range(hs.shape[1])):
            g_all, v = _add(dy_at(t), dh), steps.v(t)
            g_h = _masked(g_all, v)                 # zero at padded steps
            a, d = acts[:, t], dg[:, t]
            i, f, g, o = (a[:, k * hdim:(k + 1) * hdim] for k in range(4))
            tc = tcs[:, t]
            np.multiply(g_h * tc, o * (1.0 - o), out=d[:, 3 * hdim:])          # a_o
            d_c = g_h * o
            d_c *= 1.0 - tc * tc
            if dc is not None:
                d_c += _masked(dc, v)
            np.multiply(d_c * g, i * (1.0 - i), out=d[:, :hdim])                # a_i
            c_prev = cs[:, t - 1] if t > 0 else c0
            if c_prev is not None:
                np.multiply(d_c * c_prev, f * (1.0 - f), out=d[:, hdim:2 * hdim])
            else:
                d[:, hdim:2 * hdim] = 0.0                                        # c_{-1} = 0
            np.multiply(d_c * i, 1.0 - g * g, out=d[:, 2 * hdim:3 * hdim])      # a_g
            if t > 0 or c0 is not None:
                dc_prev = d_c * f
                if dc is not None:
                    dc_prev = _passed(dc_prev, dc, v)
                dc = dc_prev
                dh = _passed(d @ w_h.T, g_all, v)
        dw_x, db, dx = _input_grads(x, dg, params["w_x"], need_dx)
        grads = {"w_x": dw_x, "w_h": _recurrent_grad(hs, dg, h0), "b": db}
        return grads, dx, None if c0 is None else (dh, dc)

    return _recurrent_layer(name, hidden, return_sequences, dtype, init_params, scan, bptt,
                            2, with_lengths, with_initial_state, return_state)


# --- bidirectional -----------------------------------------------------------------

def bidirectional(layer_fwd: Layer, layer_bwd: Optional[Layer] = None, merge: str = "concat",
                  *, name: str = "bidirectional") -> Layer:
    """Run ``layer_fwd`` forward in time and ``layer_bwd`` on the time-reversed input.

    ``layer_bwd`` defaults to ``layer_fwd`` (same architecture, its own params).
    Sequence outputs ``(batch, time, h)`` of the backward layer are reversed back
    to input time order; a last-step output ``(batch, h)`` is the backward
    layer's final state (it has read the sequence from the end), as in Keras and
    PyTorch.  ``merge="concat"`` joins the two on the feature axis
    (``h_fwd + h_bwd`` features; PyTorch's ``bidirectional=True`` output order),
    ``merge="sum"`` adds them (equal shapes).  Params and state:
    ``{"forward": ..., "backward": ...}``.

    Variable lengths: with children built with ``with_lengths=True`` the input is
    ``(x, lengths)`` (in ``init``: ``((time, features), ())``) and each sequence is
    reversed within its own length, so the backward direction starts at the
    sequence's own last valid step, as PyTorch's packed sequences do; padded steps
    stay in place (zero outputs, zero gradient).  Children with
    ``with_initial_state`` or ``return_state`` are not supported here.
    """
    if merge not in ("concat", "sum"):
        raise ValueError(f"bidirectional merge must be 'concat' or 'sum', got {merge!r}")
    layer_bwd = layer_fwd if layer_bwd is None else layer_bwd
    for what, layer in (("layer_fwd", layer_fwd), ("layer_bwd", layer_bwd)):
        if not isinstance(layer, Layer):
            raise TypeError(f"bidirectional: {what} is a {type(layer).__name__}, not a fundl Layer")
    children = (("forward", layer_fwd), ("backward", layer_bwd))
    uses_key = fusion.speed_of(layer_fwd).uses_key or fusion.speed_of(layer_bwd).uses_key
    runs = (fusion.runner(layer_fwd), fusion.runner(layer_bwd))

    def merged_shape(fwd_shape, bwd_shape):
        if not (is_shape(fwd_shape) and is_shape(bwd_shape)):
            raise LayerError(f"expected children with one output each (no return_state), got "
                             f"output shapes {fwd_shape!r} and {bwd_shape!r}")
        fwd_shape, bwd_shape = as_shape(fwd_shape), as_shape(bwd_shape)
        if merge == "sum" and fwd_shape != bwd_shape:
            raise LayerError(f"merge='sum' needs equal output shapes, got forward {fwd_shape} "
                             f"and backward {bwd_shape}")
        if merge == "concat" and fwd_shape[:-1] != bwd_shape[:-1]:
            raise LayerError(f"merge='concat' needs output shapes equal but for the last axis, "
                             f"got forward {fwd_shape} and backward {bwd_shape}")
        if merge == "sum":
            return fwd_shape
        return fwd_shape[:-1] + (fwd_shape[-1] + bwd_shape[-1],)

    def init(key, in_shape):
        if is_shape(in_shape):
            in_shape = as_shape(in_shape)
            ok = len(in_shape) == 2
        else:
            ok = (isinstance(in_shape, (tuple, list)) and len(in_shape) == 2
                  and is_shape(in_shape[0]) and len(as_shape(in_shape[0])) == 2
                  and is_shape(in_shape[1]) and as_shape(in_shape[1]) == ())
            in_shape = normalize_shapes(in_shape) if ok else in_shape
        if not ok:
            raise LayerError(f"expected an input shape (time, features), or ((time, features), ()) "
                             f"with lengths, got {in_shape}", name)
        params, state, shapes = {}, {}, {}
        for (k, layer), sub in zip(children, random.split(key, 2)):
            params[k], state[k], shapes[k] = init_child(k, layer, sub, in_shape)
        try:
            return params, state, merged_shape(shapes["forward"], shapes["backward"])
        except LayerError as err:
            raise err.named(name) from None

    def split_input(inp):
        """``(x, reversal index or None)``; the index reverses each sequence in its length."""
        try:
            if isinstance(inp, (tuple, list)):
                if len(inp) != 2:
                    raise LayerError(f"expected x or a tuple (x, lengths), got a "
                                     f"{type(inp).__name__} of length {len(inp)}")
                x, lengths = inp
            else:
                x, lengths = inp, None
            check_float_input(x)
            check_trailing_shape(x, (None, None))
            if lengths is None:
                return x, None
            n, steps = x.shape[:2]
            valid = _valid_steps(lengths, n, steps)
            t = np.arange(steps)[None, :]
            return x, np.where(valid, lengths[:, None] - 1 - t, t)
        except LayerError as err:
            raise err.named(name) from None

    def reverse_time(y, index):
        if y.ndim != 3:
            return y
        if index is None:
            return y[:, ::-1]
        return np.take_along_axis(y, index[:, :, None], axis=1)

    def child_inputs(inp, x, index):
        if index is None:
            return x, np.ascontiguousarray(x[:, ::-1])  # one compact copy, reused by the child
        return inp, (reverse_time(x, index), inp[1])

    def combine(y_f, y_b):
        if merge == "sum":
            if y_f.shape != y_b.shape:
                raise LayerError(f"merge='sum' needs equal outputs, got forward shape "
                                 f"{y_f.shape} and backward shape {y_b.shape}", name)
            return y_f + y_b
        return np.concatenate([y_f, y_b], axis=-1)

    def apply(params, state, inp, *, key=None, train=False):
        x, index = split_input(inp)
        outs = []
        for (k, layer), sub, child_in in zip(children, split_key(key, 2, uses_key),
                                             child_inputs(inp, x, index)):
            outs.append(apply_child(k, layer, params[k], state[k], child_in, sub, train))
        return combine(outs[0], reverse_time(outs[1], index))

    def vjp(params, state, inp, *, key=None, need_dx=True):
        x, index = split_input(inp)
        outs, new_state, pullbacks = [], {}, []
        for (k, _), run, sub, child_in in zip(children, runs, split_key(key, 2, uses_key),
                                              child_inputs(inp, x, index)):
            y, new_state[k], pb = vjp_child(k, run, params[k], state[k], child_in, sub, need_dx)
            outs.append(y)
            pullbacks.append(pb)
        y_f, y_b = outs[0], reverse_time(outs[1], index)
        split = y_f.shape[-1]
        y = combine(y_f, y_b)

        def pullback(dy):
            if merge == "sum":
                dy_f, dy_b = dy, dy
            else:
                dy_f, dy_b = dy[..., :split], dy[..., split:]
            dp_f, dx_f = pullbacks[0](dy_f)
            dp_b, dx_b = pullbacks[1](reverse_time(dy_b, index))
            if index is not None:   # the children's (dx, None): the lengths get no gradient
                dx_f = None if dx_f is None else dx_f[0]
                dx_b = None if dx_b is None else dx_b[0]
            dx = None
            if need_dx and dx_f is not None and dx_b is not None:
                dx = dx_f + reverse_time(dx_b, index)
                if index is not None:
                    dx = (dx, None)
            return {"forward": dp_f, "backward": dp_b}, dx

        return y, new_state, pullback

    return Layer(init, apply, vjp, name, children,
                 fusion.Speed(uses_key=uses_key, takes=frozenset({"need_dx"})))
