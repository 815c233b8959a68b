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

The initial state is zeros.  Params (all of ``dtype``, float32 by default):
``w_x`` ``(features, G*hidden)`` Glorot-uniform, ``w_h`` ``(hidden, G*hidden)``
with each gate's ``(hidden, hidden)`` block orthogonal (Saxe et al., 2014), and
``b`` ``(G*hidden,)``.  Gate blocks are laid out side by side in the order
given in each layer's docstring.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from .. import fusion, random
from ..checks import (LayerError, as_shape, check_float_input, check_param_dtype,
                      check_sequence_in_shape, check_trailing_shape)
from ..combinators import apply_child, init_child, split_key, vjp_child
from ..core import Layer, stateless_layer
from ..initializers import Initializer, glorot_uniform, orthogonal, zeros

__all__ = ["rnn", "gru", "lstm", "bidirectional"]

Array = np.ndarray


# --- shared pieces -----------------------------------------------------------------

def _sigmoid_(a: Array) -> Array:
    """In place on our own buffer: ``a <- 1 / (1 + exp(-a)) = (1 + tanh(a / 2)) / 2``.

    The tanh form cannot overflow and needs one transcendental per entry.
    """
    a *= 0.5
    np.tanh(a, out=a)
    a += 1.0
    a *= 0.5
    return a


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


def _dy_at(dy: Array, steps: int, sequences: bool) -> Callable[[int], Optional[Array]]:
    """``dy_at(t)``: the output gradient at step ``t`` (None where there is none)."""
    if sequences:
        return lambda t: dy[:, t]
    return lambda t: dy if t == steps - 1 else None


def _add(a: Optional[Array], b: Optional[Array]) -> Array:
    """``a + b`` where either may be None (never both): a fresh array or one of them."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _input_grads(x: Array, dgx: Array, w_x: Array,
                 need_dx: bool) -> Tuple[Array, Array, Optional[Array]]:
    """``(dw_x, db, dx)`` from the stacked input-side gate gradients ``dgx`` ``(N, T, G*H)``."""
    n, t, f = x.shape
    dg2 = dgx.reshape(n * t, -1)
    dw_x = x.reshape(n * t, f).T @ dg2
    db = dg2.sum(axis=0)
    dx = (dg2 @ w_x.T).reshape(n, t, f) if need_dx else None
    return dw_x, db, dx


def _recurrent_grad(hs: Array, dgh: Array) -> Array:
    """``dw_h = sum_t h_{t-1}^T dG_t`` (``h_{-1} = 0`` adds nothing) as one matmul."""
    n, t, h = hs.shape
    h_prev = hs[:, :-1].reshape(n * (t - 1), h)
    return h_prev.T @ dgh[:, 1:].reshape(n * (t - 1), dgh.shape[2])


def _recurrent_layer(name: str, hidden: int, return_sequences: bool, dtype: Any,
                     init_params: Callable[[Any, int, int, Any], Dict[str, Array]],
                     scan: Callable[..., Tuple[Array, Any]],
                     bptt: Callable[..., Tuple[Dict[str, Array], Optional[Array]]]) -> Layer:
    """Wrap a cell's ``scan``/``bptt`` into a Layer (checks, shapes, return modes).

    ``scan(params, x, keep) -> (hs, cache)``: ``hs`` ``(N, T, H)`` are the hidden
    states of all steps; ``cache`` holds the other residuals for ``bptt`` when
    ``keep`` (inference passes ``keep=False`` and drops them).
    ``bptt(params, x, hs, cache, dy_at, need_dx) -> (dparams, dx)``; ``dy_at(t)``
    is the output gradient at step ``t`` or None.
    """
    if int(hidden) < 1:
        raise ValueError(f"{name} needs hidden >= 1, got {hidden}")
    hidden = int(hidden)
    dtype = np.dtype(dtype)

    def init(key, in_shape):
        in_shape = check_sequence_in_shape(in_shape)
        params = init_params(key, in_shape[1], hidden, dtype)
        return params, (in_shape[0], hidden) if return_sequences else (hidden,)

    def apply(params, x):
        _check_input(params, x)
        hs, _ = scan(params, x, keep=False)
        return hs if return_sequences else _last(hs[:, -1])

    def vjp(params, x, need_dx=True):
        _check_input(params, x)
        hs, cache = scan(params, x, keep=True)
        y = hs if return_sequences else _last(hs[:, -1])

        def pullback(dy):
            return bptt(params, x, hs, cache, _dy_at(dy, x.shape[1], return_sequences), need_dx)

        return y, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",))


# --- simple RNN --------------------------------------------------------------------

def _tanh_(a: Array) -> Array:
    return np.tanh(a, out=a)


def _relu_(a: Array) -> Array:
    return np.maximum(a, 0, out=a)


def _tanh_grad(h: Array, g: Array, out: Array) -> None:
    np.multiply(h, h, out=out)
    np.subtract(1.0, out, out=out)
    out *= g


def _relu_grad(h: Array, g: Array, out: Array) -> None:
    np.multiply(g, h > 0, out=out)


_RNN_ACTIVATIONS = {"tanh": (_tanh_, _tanh_grad), "relu": (_relu_, _relu_grad)}


def rnn(hidden: int, *, return_sequences: bool = True, activation: str = "tanh",
        w_x_init: Initializer = glorot_uniform, w_h_init: Initializer = orthogonal(),
        b_init: Initializer = zeros, dtype: Any = np.float32, name: str = "rnn") -> Layer:
    """Elman RNN: ``h_t = act(x_t @ w_x + h_{t-1} @ w_h + b)``, ``h_{-1} = 0``.

    Shapes: ``x`` is ``(batch, time, features)``; ``y`` is ``(batch, time, hidden)``,
    or the last step ``(batch, hidden)`` with ``return_sequences=False``.
    Params: ``w_x`` ``(features, hidden)`` Glorot-uniform, ``w_h`` ``(hidden, hidden)``
    orthogonal, ``b`` ``(hidden,)`` zeros.  ``activation`` is ``"tanh"`` or ``"relu"``.
    """
    if activation not in _RNN_ACTIVATIONS:
        raise ValueError(f"rnn activation must be one of {sorted(_RNN_ACTIVATIONS)}, "
                         f"got {activation!r}")
    act_, act_grad = _RNN_ACTIVATIONS[activation]

    def scan(params, x, keep):
        w_h = params["w_h"]
        hs = _input_projection(x, params["w_x"], params["b"])  # becomes h_t in place
        h = None
        for t in range(x.shape[1]):
            a = hs[:, t]
            if h is not None:
                a += h @ w_h
            h = act_(a)
        return hs, None

    def bptt(params, x, hs, cache, dy_at, need_dx):
        w_h = params["w_h"]
        da = np.empty_like(hs)  # dL/d(pre-activation), stacked over time
        dh = None
        for t in reversed(range(hs.shape[1])):
            act_grad(hs[:, t], _add(dy_at(t), dh), out=da[:, t])
            dh = da[:, t] @ w_h.T if t > 0 else None
        dw_x, db, dx = _input_grads(x, da, params["w_x"], need_dx)
        return {"w_x": dw_x, "w_h": _recurrent_grad(hs, da), "b": db}, dx

    return _recurrent_layer(name, hidden, return_sequences, dtype,
                            _gate_init(w_x_init, w_h_init, b_init, 1), scan, bptt)


# --- GRU ---------------------------------------------------------------------------

def gru(hidden: int, *, return_sequences: bool = True,
        w_x_init: Initializer = glorot_uniform, w_h_init: Initializer = orthogonal(),
        b_init: Initializer = zeros, dtype: Any = np.float32, name: str = "gru") -> Layer:
    """Gated recurrent unit, the Cho et al. (2014) / PyTorch form (reset after ``w_h``).

    Gate order ``r, z, n`` in the blocks of ``w_x``, ``w_h`` and ``b``::

        r_t = sigmoid(x_t @ w_x[:, r] + b[r] + h_{t-1} @ w_h[:, r])
        z_t = sigmoid(x_t @ w_x[:, z] + b[z] + h_{t-1} @ w_h[:, z])
        n_t = tanh(x_t @ w_x[:, n] + b[n] + r_t * (h_{t-1} @ w_h[:, n] + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_{t-1},        h_{-1} = 0

    Shapes: ``x`` ``(batch, time, features)`` -> ``(batch, time, hidden)``, or the
    last step ``(batch, hidden)`` with ``return_sequences=False``.
    Params: ``w_x`` ``(features, 3*hidden)`` Glorot-uniform, ``w_h``
    ``(hidden, 3*hidden)`` orthogonal per gate, ``b`` ``(3*hidden,)`` zeros (the
    sum of PyTorch's ``b_ih`` and ``b_hh`` for ``r, z``; ``b_in`` for ``n``) and
    ``b_hn`` ``(hidden,)`` zeros (PyTorch's ``b_hn``, inside the reset).
    """
    gate_init = _gate_init(w_x_init, w_h_init, b_init, 3)

    def init_params(key, features, hid, dtype):
        k_g, k_n = random.split(key)
        params = gate_init(k_g, features, hid, dtype)
        params["b_hn"] = b_init(k_n, (hid,), dtype)
        return params

    def scan(params, x, keep):
        w_h, b_hn = params["w_h"], params["b_hn"]
        hdim = w_h.shape[0]
        acts = _input_projection(x, params["w_x"], params["b"])  # becomes r, z, n in place
        n_b, steps = x.shape[0], x.shape[1]
        hs = np.empty((n_b, steps, hdim), x.dtype)
        hns = np.empty_like(hs) if keep else None
        h = np.zeros((n_b, hdim), x.dtype)
        for t in range(steps):
            hp = h @ w_h
            a = acts[:, t]
            rz = a[:, :2 * hdim]
            rz += hp[:, :2 * hdim]
            _sigmoid_(rz)
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
            h = h_new
        return hs, (acts, hns)

    def bptt(params, x, hs, cache, dy_at, need_dx):
        acts, hns = cache
        w_h = params["w_h"]
        hdim = w_h.shape[0]
        dgx = np.empty_like(acts)  # gradient of the input projection (r, z, n)
        dgh = np.empty_like(acts)  # gradient of h @ w_h + [0, 0, b_hn] (r, z, hn)
        dh = None
        for t in reversed(range(hs.shape[1])):
            g = _add(dy_at(t), dh)
            a = acts[:, t]
            r, z, n = a[:, :hdim], a[:, hdim:2 * hdim], a[:, 2 * hdim:]
            gx, gh = dgx[:, t], dgh[:, t]
            h_prev = hs[:, t - 1] if t > 0 else 0.0
            da_n = g * (1.0 - z)
            da_n *= 1.0 - n * n                                   # d(pre-tanh of n)
            gx[:, 2 * hdim:] = da_n
            np.multiply(da_n, r, out=gh[:, 2 * hdim:])              # d(h @ w_hn + b_hn)
            np.multiply(da_n * hns[:, t], r * (1.0 - r), out=gx[:, :hdim])
            np.multiply(g * (h_prev - n), z * (1.0 - z), out=gx[:, hdim:2 * hdim])
            gh[:, :2 * hdim] = gx[:, :2 * hdim]
            dh = g * z
            if t > 0:
                dh += gh @ w_h.T
        dw_x, db, dx = _input_grads(x, dgx, params["w_x"], need_dx)
        grads = {"w_x": dw_x, "w_h": _recurrent_grad(hs, dgh), "b": db,
                 "b_hn": dgh[:, :, 2 * hdim:].sum(axis=(0, 1))}
        return grads, dx

    return _recurrent_layer(name, hidden, return_sequences, dtype, init_params, scan, bptt)


# --- LSTM --------------------------------------------------------------------------

def lstm(hidden: int, *, return_sequences: bool = True, forget_bias: float = 1.0,
         w_x_init: Initializer = glorot_uniform, w_h_init: Initializer = orthogonal(),
         dtype: Any = np.float32, name: str = "lstm") -> Layer:
    """Long short-term memory (Hochreiter & Schmidhuber, 1997; PyTorch's gate order).

    Gate order ``i, f, g, o`` in the blocks of ``w_x``, ``w_h`` and ``b``::

        [a_i, a_f, a_g, a_o] = x_t @ w_x + h_{t-1} @ w_h + b
        i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);   g = tanh(a_g)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t),                                  h_{-1} = c_{-1} = 0

    Shapes: ``x`` ``(batch, time, features)`` -> ``(batch, time, hidden)``, or the
    last ``h`` ``(batch, hidden)`` with ``return_sequences=False``.
    Params: ``w_x`` ``(features, 4*hidden)`` Glorot-uniform, ``w_h``
    ``(hidden, 4*hidden)`` orthogonal per gate, ``b`` ``(4*hidden,)`` zeros except
    the forget-gate block, initialised to ``forget_bias`` (1, as in Keras and
    Jozefowicz et al., 2015).
    """
    gate_init = _gate_init(w_x_init, w_h_init, zeros, 4)

    def init_params(key, features, hid, dtype):
        params = gate_init(key, features, hid, dtype)
        params["b"][hid:2 * hid] = forget_bias  # our own fresh array
        return params

    def scan(params, x, keep):
        w_h = params["w_h"]
        hdim = w_h.shape[0]
        acts = _input_projection(x, params["w_x"], params["b"])  # becomes i, f, g, o
        n_b, steps = x.shape[0], x.shape[1]
        hs = np.empty((n_b, steps, hdim), x.dtype)
        cs = np.empty_like(hs) if keep else None
        tcs = np.empty_like(hs) if keep else None
        h = c = None
        for t in range(steps):
            a = acts[:, t]
            if h is not None:
                a += h @ w_h
            _sigmoid_(a[:, :2 * hdim])
            np.tanh(a[:, 2 * hdim:3 * hdim], out=a[:, 2 * hdim:3 * hdim])
            _sigmoid_(a[:, 3 * hdim:])
            i, f, g, o = (a[:, k * hdim:(k + 1) * hdim] for k in range(4))
            c_new = np.multiply(i, g, out=cs[:, t] if keep else None)
            if c is not None:
                c_new += f * c
            tc = np.tanh(c_new, out=tcs[:, t] if keep else None)
            h = np.multiply(o, tc, out=hs[:, t])
            c = c_new
        return hs, (acts, cs, tcs)

    def bptt(params, x, hs, cache, dy_at, need_dx):
        acts, cs, tcs = cache
        w_h = params["w_h"]
        hdim = w_h.shape[0]
        dg = np.empty_like(acts)
        dh = dc = None
        for t in reversed(range(hs.shape[1])):
            g_h = _add(dy_at(t), dh)
            a, d = acts[:, t], dg[:, t]
            i, f, g, o = (a[:, k * hdim:(k + 1) * hdim] for k in range(4))
            tc = tcs[:, t]
            np.multiply(g_h * tc, o * (1.0 - o), out=d[:, 3 * hdim:])          # a_o
            d_c = g_h * o
            d_c *= 1.0 - tc * tc
            if dc is not None:
                d_c += dc
            np.multiply(d_c * g, i * (1.0 - i), out=d[:, :hdim])                # a_i
            if t > 0:
                np.multiply(d_c * cs[:, t - 1], f * (1.0 - f), out=d[:, hdim:2 * hdim])
            else:
                d[:, hdim:2 * hdim] = 0.0                                        # c_{-1} = 0
            np.multiply(d_c * i, 1.0 - g * g, out=d[:, 2 * hdim:3 * hdim])      # a_g
            if t > 0:
                dc = d_c * f
                dh = d @ w_h.T
        dw_x, db, dx = _input_grads(x, dg, params["w_x"], need_dx)
        return {"w_x": dw_x, "w_h": _recurrent_grad(hs, dg), "b": db}, dx

    return _recurrent_layer(name, hidden, return_sequences, dtype, init_params, scan, bptt)


# --- bidirectional -----------------------------------------------------------------

def bidirectional(layer_fwd: Layer, layer_bwd: Optional[Layer] = None, merge: str = "concat",
                  *, name: str = "bidirectional") -> Layer:
    """Run ``layer_fwd`` forward in time and ``layer_bwd`` on the time-reversed input.

    ``layer_bwd`` defaults to ``layer_fwd`` (same architecture, its own params).
    Sequence outputs ``(batch, time, h)`` of the backward layer are reversed back
    to input time order; a last-step output ``(batch, h)`` is the backward
    layer's final state (it has read the sequence from the end), as in Keras and
    PyTorch.  ``merge="concat"`` joins the two on the feature axis
    (``h_fwd + h_bwd`` features), ``merge="sum"`` adds them (equal shapes).
    Params and state: ``{"forward": ..., "backward": ...}``.
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
        in_shape = as_shape(in_shape)
        if len(in_shape) != 2:
            raise LayerError(f"expected an input shape (time, features), got {in_shape}",
                             name)
        params, state, shapes = {}, {}, {}
        for (k, layer), sub in zip(children, random.split(key, 2)):
            params[k], state[k], shapes[k] = init_child(k, layer, sub, in_shape)
        try:
            return params, state, merged_shape(shapes["forward"], shapes["backward"])
        except LayerError as err:
            raise err.named(name) from None

    def check(x):
        try:
            check_float_input(x)
            check_trailing_shape(x, (None, None))
        except LayerError as err:
            raise err.named(name) from None

    def reversed_input(x):
        return np.ascontiguousarray(x[:, ::-1])  # one compact copy, reused by the child

    def reverse_time(y):
        return y[:, ::-1] if y.ndim == 3 else y

    def combine(y_f, y_b):
        if merge == "sum":
            if y_f.shape != y_b.shape:
                raise LayerError(f"merge='sum' needs equal outputs, got forward shape "
                                 f"{y_f.shape} and backward shape {y_b.shape}", name)
            return y_f + y_b
        return np.concatenate([y_f, y_b], axis=-1)

    def apply(params, state, x, *, key=None, train=False):
        check(x)
        outs = []
        for (k, layer), sub, inp in zip(children, split_key(key, 2, uses_key),
                                        (x, reversed_input(x))):
            outs.append(apply_child(k, layer, params[k], state[k], inp, sub, train))
        return combine(outs[0], reverse_time(outs[1]))

    def vjp(params, state, x, *, key=None, need_dx=True):
        check(x)
        outs, new_state, pullbacks = [], {}, []
        for (k, _), run, sub, inp in zip(children, runs, split_key(key, 2, uses_key),
                                         (x, reversed_input(x))):
            y, new_state[k], pb = vjp_child(k, run, params[k], state[k], inp, sub, need_dx)
            outs.append(y)
            pullbacks.append(pb)
        y_f, y_b = outs[0], reverse_time(outs[1])
        split = y_f.shape[-1]
        y = combine(y_f, y_b)

        def pullback(dy):
            if merge == "sum":
                dy_f, dy_b = dy, dy
            else:
                dy_f, dy_b = dy[..., :split], dy[..., split:]
            dp_f, dx_f = pullbacks[0](dy_f)
            dp_b, dx_b = pullbacks[1](reverse_time(dy_b))
            dx = None
            if need_dx and dx_f is not None and dx_b is not None:
                dx = dx_f + dx_b[:, ::-1]
            return {"forward": dp_f, "backward": dp_b}, dx

        return y, new_state, pullback

    return Layer(init, apply, vjp, name, children,
                 fusion.Speed(uses_key=uses_key, takes=frozenset({"need_dx"})))
