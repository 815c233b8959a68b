"""Recurrent layers over ``(batch, time, features)``: rnn, gru, lstm, bidirectional.

Every cell follows the same plan, for speed.  Inside, a step's arrays are
feature-major -- ``(H, N)`` states and ``(G*H, N)`` gates (``G`` gates of ``H``
units) -- so that every gate block of every step is one contiguous array (the
per-step elementwise work is many small ufunc calls; on strided slices each
costs several times more) and the step's matmul is a single ``(G*H, H) @ (H, N)``:

- forward: the input projection of all time steps is one batched matmul (an
  outer product for one feature) into a ``(T, G*H, N)`` buffer, done before the
  loop; the loop over time does one matmul per step and computes the gate
  activations in place in that buffer with preallocated temporaries (nothing is
  allocated per step);
- backward (BPTT): the pullback loops backward over time, writing each step's
  gate gradients ``dG_t`` into a buffer of a chunk of steps; every chunk is
  folded into ``dw_x = X^T dG``, ``dw_h = H_prev^T dG`` and ``dx = dG w_x^T``
  with one matmul each (:class:`_GradChunks`).

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

import functools
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, overload

import numpy as np

from .. import kernels, random
from ..checks import (Array, LayerError, check_input_tuple, as_shape, check_float_input, check_param_dtype,
                      Shape, check_sequence_in_shape, check_trailing_shape, int_arg, is_shape,
                      normalize_shapes)
from ..combinators import combinator, key_splitter
from ..core import Layer, builder, stateless_layer
from ..initializers import Initializer, glorot_uniform, orthogonal, zeros

__all__ = ["rnn", "gru", "lstm", "bidirectional", "cell", "zero_carry"]



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


def _time_major(x: Array) -> Array:
    """``(N, T, F)`` -> a compact time-major ``(T, N, F)`` copy."""
    return np.ascontiguousarray(x.swapaxes(0, 1))


def _feature_major(a: Array) -> Array:
    """A compact transposed copy: ``(N, H)`` -> ``(H, N)``, ``(N, T, H)`` -> ``(T, H, N)``."""
    return np.ascontiguousarray(a.T if a.ndim == 2 else a.transpose(1, 2, 0))


def _input_projection(xt: Array, w_x: Array, b: Array, col_scale: Optional[Array] = None
                      ) -> Array:
    """``(x_t @ w_x + b)^T`` for all steps: ``xt`` ``(T, N, F)`` -> ``(T, G*H, N)`` (fresh;
    each step's gates contiguous); with ``col_scale`` ``(G*H,)``, ``w_x`` and ``b`` are
    scaled by it per column first (see :func:`_sigmoid_halving`).

    The bias rides in the matmul, as a row of ``w_x`` against a row of ones appended to
    each step's ``x_t^T``: a broadcast add over the result, whose rows are only N long,
    costs more than the matmul.
    """
    t, n, f = xt.shape
    xa = np.empty((t, f + 1, n), xt.dtype)
    xa[:, :f] = xt.swapaxes(1, 2)
    xa[:, f] = 1.0
    wa = np.concatenate([w_x, b[None]], axis=0)      # (F + 1, G*H)
    if col_scale is not None:
        wa *= col_scale
    return np.matmul(wa.T, xa)


def _sigmoid_halving(w_h: Array, gate_scales: Tuple[float, ...]) -> Tuple[Array, Array]:
    """``(col_scale, w_ht)`` for a cell whose sigmoid gates use ``(1 + tanh(a / 2)) / 2``:
    ``col_scale`` ``(G*H,)`` repeats ``gate_scales`` (0.5 for a sigmoid gate, 1 for a tanh
    one) over each gate's H columns, ``w_ht`` is ``w_h^T`` ``(G*H, H)`` (compact) with its
    rows so scaled.  Passing ``col_scale`` to :func:`_input_projection` too folds the
    ``a / 2`` into the weights, one pass per step less over the gates; a power-of-two
    scale commutes with rounding, so the gates are bit for bit the same (unless a weight
    is subnormal).
    """
    col_scale = np.repeat(np.array(gate_scales, w_h.dtype), w_h.shape[0])
    return col_scale, np.multiply(w_h.T, col_scale[:, None])


def _projection_by_unit(xt: Array, w_x: Array, b: Array) -> Array:
    """The same as ``(H, T, N)`` (one matmul; a step's slice has rows ``T*N`` apart)."""
    t, n, f = xt.shape
    if f == 1:  # a matmul over one feature is an outer product, ~3x faster so
        xp = np.multiply(w_x.T[:, :, None], xt[None, :, :, 0])
    else:
        xp = (w_x.T @ xt.reshape(t * n, f).T).reshape(w_x.shape[1], t, n)
    xp += b[:, None, None]
    return xp


def _last(h: Array) -> Array:
    """A feature-major state ``(H, N)`` as the compact ``(N, H)`` array of its own."""
    return h.T.copy()


@overload
def _add(a: Array, b: Optional[Array]) -> Array: ...
@overload
def _add(a: Optional[Array], b: Array) -> Array: ...
def _add(a: Optional[Array], b: Optional[Array]) -> Optional[Array]:
    """``a + b`` where either may be None (never both): a fresh array or one of them."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _grad_in(dy_t: Optional[Array], dh: Optional[Array]) -> Optional[Array]:
    """``dy_t + dh``, written into ``dh`` (the scan's own buffer); either may be None."""
    if dh is None:
        return dy_t
    if dy_t is not None:
        dh += dy_t
    return dh


def _masked(g: Array, v: Optional[Array]) -> Array:
    """``g`` where the step is valid (``v`` is the ``(1, N)`` 0/1 mask of a step), else 0."""
    return g if v is None else g * v


def _passed(dh: Array, g: Array, v: Optional[Array]) -> Array:
    """``dh`` plus the gradient ``g`` carried through the padded columns unchanged."""
    if v is None:
        return dh
    dh += g * (1.0 - v)
    return dh


def _blend_(new: Array, old: Any, pad: Optional[Array]) -> None:
    """In place: ``new <- old`` in the columns of padded steps (``pad`` is ``(1, N)`` bool)."""
    if pad is not None:
        np.copyto(new, old, where=pad)


#: Columns (steps x batch) of the gate-gradient buffer of :class:`_GradChunks`: a chunk
#: of steps small enough to stay in the cache, large enough for efficient matmuls.
_CHUNK_COLUMNS = 1024


class _GradChunks:
    """The weight, bias and input gradients of a cell from its per-step gate gradients.

    ``bptt`` writes step ``t``'s gate gradients ``(R, N)`` into :meth:`at` (a
    contiguous buffer) and then calls :meth:`done`; every ``k`` steps the chunk is
    transposed to ``(R, k*N)`` and folded into ``dw_x``, ``db``, ``dx`` and ``dw_h``
    with one matmul each (so no stack of all steps is ever allocated).  ``x_rows``:
    pairs ``(rows, columns)`` mapping buffer rows to the columns of ``w_x``/``b``;
    ``h_rows``: the rows of the recurrent matmul's gradient (``w_h``'s columns in
    order); ``sums``: extra rows whose sum over steps and batch is wanted (the GRU's
    ``b_hn``).  ``xt`` ``(T, N, F)``, ``hs`` ``(H, T, N)``, ``h0`` ``(H, N)`` or None
    (zeros).
    """

    def __init__(self, xt: Array, hs: Array, h0: Optional[Array], w_x: Array, n_rows: int,
                 x_rows: Tuple[Tuple[slice, slice], ...], h_rows: slice,
                 need_dx: bool, sums: Optional[slice] = None) -> None:
        n_t, n_b, f = xt.shape
        dt = xt.dtype
        self.xt, self.hs, self.h0, self.w_x = xt, hs, h0, w_x
        self.x_rows, self.h_rows, self.sum_rows = x_rows, h_rows, sums
        self.k = max(1, min(n_t, _CHUNK_COLUMNS // max(n_b, 1)))
        self.buf = np.empty((self.k, n_rows, n_b), dt)
        self.folded = np.empty((n_rows, self.k, n_b), dt)
        # the weight gradients are summed transposed, as dG @ X and dG @ H_prev^T: OpenBLAS
        # runs those 1.8x and 1.15x faster than X^T @ dG^T and H_prev @ dG^T on the LSTM
        # benchmark's chunks ((512, 1024) x (1024, 32): 156 against 284 us; with (1024, 128):
        # 536 against 614 us)
        self.dw_xt = np.zeros((w_x.shape[1], f), dt)
        self.db = np.zeros(w_x.shape[1], dt)
        self.dw_ht = np.zeros((h_rows.stop - h_rows.start, hs.shape[0]), dt)
        self.sums = None if sums is None else np.zeros(sums.stop - sums.start, dt)
        self.dx = np.empty((n_b, n_t, f), dt) if need_dx else None

    def at(self, t: int) -> Array:
        """Where step ``t``'s gate gradients go: a contiguous ``(R, N)`` view."""
        return self.buf[t % self.k]

    def done(self, t: int) -> None:
        """Step ``t`` is written (steps run backward: fold the chunk at its first step)."""
        if t % self.k == 0:
            self._fold(t, min(self.k, self.xt.shape[0] - t))

    def _fold(self, t0: int, m: int) -> None:
        n_b = self.xt.shape[1]
        d = self.folded[:, :m]
        np.copyto(d, self.buf[:m].swapaxes(0, 1))
        d = d.reshape(d.shape[0], m * n_b)   # explicit rows: n_b may be 0 (an empty batch)
        x2 = self.xt[t0:t0 + m].reshape(m * n_b, self.xt.shape[2])
        # row sums as a gemv: 0.01 against 0.08 ms for d.sum(axis=1) on (512, 1024)
        ones = np.ones(m * n_b, d.dtype)
        dx = None
        for rows, cols in self.x_rows:
            self.dw_xt[cols] += d[rows] @ x2
            self.db[cols] += d[rows] @ ones
            if self.dx is not None:
                part = d[rows].T @ self.w_x[:, cols].T
                dx = part if dx is None else np.add(dx, part, out=dx)
        if dx is not None:
            # dx is made only when self.dx is an array (a check here would be per chunk)
            self.dx[:, t0:t0 + m] = (  # type: ignore[index]
                dx.reshape(m, n_b, self.xt.shape[2]).swapaxes(0, 1))
        if self.sums is not None:
            self.sums += d[self.sum_rows] @ ones
        dh = d[self.h_rows]
        hdim = self.hs.shape[0]
        if t0 > 0:
            self.dw_ht += dh @ self.hs[:, t0 - 1:t0 + m - 1].reshape(hdim, m * n_b).T
            return
        if m > 1:
            self.dw_ht += dh[:, n_b:] @ self.hs[:, :m - 1].reshape(hdim, (m - 1) * n_b).T
        if self.h0 is not None:
            self.dw_ht += dh[:, :n_b] @ self.h0.T

    def grads(self) -> Dict[str, Array]:
        """``{"w_x", "w_h", "b"}`` once every step is folded (the weights compact)."""
        return {"w_x": np.ascontiguousarray(self.dw_xt.T),
                "w_h": np.ascontiguousarray(self.dw_ht.T), "b": self.db}


class _Steps(NamedTuple):
    """What a cell's scan and bptt need beyond params and x (feature-major, time first).

    ``state0``: the initial state as a tuple of ``(H, N)`` arrays (``(h0,)`` or
    ``(h0, c0)``), or None for zeros; ``vf``: ``(T, 1, N)`` 0/1 of x's dtype, 1 at
    real (unpadded) steps, and ``pad``: ``(T, 1, N)`` bool, True at padded steps --
    both None when every step is real (then the mask helpers do nothing).
    """

    state0: Optional[Tuple[Array, ...]]
    vf: Optional[Array]
    pad: Optional[Array]

    def v(self, t: int) -> Optional[Array]:
        return None if self.vf is None else self.vf[t]

    def pad_at(self, t: int) -> Optional[Array]:
        """The ``(1, N)`` padded columns of step ``t``, or None when it has none."""
        if self.pad is None or not self.pad[t].any():
            return None
        return self.pad[t]


def _recurrent_layer(name: str, hidden: int, return_sequences: bool, dtype: Any,
                     init_params: Callable[[Any, int, int, Any], Dict[str, Array]],
                     scan: Callable[..., Tuple[Array, Any, Tuple[Array, ...]]],
                     bptt: Callable[..., Tuple[Dict[str, Array], Optional[Array], Any]],
                     n_state: int = 1, with_lengths: bool = False,
                     with_initial_state: bool = False, return_state: bool = False) -> Layer:
    """Wrap a cell's ``scan``/``bptt`` into a Layer (inputs, checks, shapes, return modes).

    Inside, every per-step array is feature-major, ``(H, N)`` for a state and
    ``(G*H, N)`` for the gates, so that each gate block is contiguous and the step's
    matmul is one ``(G*H, H) @ (H, N)``; the stacks over time are ``(T, G*H, N)``
    (the forward's gates: a step's slice is contiguous) or ``(H, T, N)``, ``(G*H, T,
    N)`` (the states and the gradients: one matmul for ``dw``):
    ``scan(params, x, steps, keep) -> (hs, cache, final)``: ``hs`` ``(H, T, N)`` are
    the hidden states carried after every step (a padded step carries the previous
    one); ``cache`` holds the other residuals for ``bptt`` when ``keep`` (inference
    passes ``keep=False``); ``final`` is the final state tuple.
    ``bptt(params, hs, cache, steps, dy_at, dfinal, need_dx) -> (dparams, dx,
    dstate0)``; ``dy_at(t)`` is the ``(H, N)`` gradient of the carried ``h`` at step
    ``t`` from outside (None if none; never written), ``dfinal`` the gradients of
    the final state's other parts (``(dc_n,)`` for the LSTM, or None), ``dx`` is
    ``(N, T, F)`` (None unless ``need_dx``), ``dstate0`` the initial state's gradient
    tuple (when ``steps.state0`` is given).
    """
    hidden = int_arg(name, "hidden", hidden)
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
        inp = check_input_tuple(inp, n_inputs, forms)
        x = inp[0]
        _check_input(params, x)
        vf = pad = state0 = None
        if with_lengths:
            valid = _valid_steps(inp[1], x.shape[0], x.shape[1])
            if not valid.all():
                valid = valid.T[:, None, :]                   # (T, 1, N)
                vf, pad = valid.astype(x.dtype), ~valid
        if with_initial_state:
            state0 = tuple(_feature_major(a) for a in
                           _check_state(inp[-1], n_state, x.shape[0], hidden, x.dtype))
        return x, _Steps(state0, vf, pad)

    def outputs(hs, final, steps):
        if return_sequences:
            if steps.vf is not None:
                hs = hs * steps.vf.swapaxes(0, 1)              # zeros at padded steps
            y = hs.transpose(2, 1, 0).copy()                   # (N, T, H), compact
        else:
            y = _last(hs[:, -1])
        if not return_state:
            return y
        final = tuple(_last(a) for a in final)
        return y, final[0] if n_state == 1 else final

    def apply(params, inp):
        x, steps = split_inputs(params, inp)
        params = _compact(params)
        hs, _, final = scan(params, x, steps, keep=False)
        return outputs(hs, final, steps)

    def vjp(params, inp, need_dx=True):
        x, steps = split_inputs(params, inp)
        params = _compact(params)
        hs, cache, final = scan(params, x, steps, keep=True)
        y = outputs(hs, final, steps)
        last = x.shape[1] - 1

        def pullback(dy):
            dfinal = None
            if return_state:
                dy, dstate = dy
                dstate = (dstate,) if n_state == 1 else tuple(dstate)
                dfinal = tuple(_feature_major(a) for a in dstate[1:]) or None
                dh_n = _feature_major(dstate[0])
            else:
                dh_n = None
            if return_sequences:
                if steps.vf is None:
                    dys = _feature_major(dy)    # may be dy's own memory: only read
                else:                           # zeros at padded steps, in a new array
                    dys = np.multiply(dy.transpose(1, 2, 0), steps.vf, order="C")
                dy_at = lambda t: _add(dys[t], dh_n) if t == last else dys[t]  # noqa: E731
            else:
                dy_last = _add(_feature_major(dy), dh_n)
                dy_at = lambda t: dy_last if t == last else None  # noqa: E731
            dparams, dx, dstate0 = bptt(params, hs, cache, steps, dy_at, dfinal, need_dx)
            if n_inputs == 1 or not need_dx:
                return dparams, dx
            dxs = (dx,) + ((None,) if with_lengths else ())
            if with_initial_state:
                dstate0 = tuple(_last(a) for a in dstate0)
                dxs += (dstate0[0] if n_state == 1 else dstate0,)
            return dparams, dxs

        return y, pullback

    return stateless_layer(name, init, apply, vjp, takes=("need_dx",), fresh=("dparams",))


def _compact(params: Dict[str, Array]) -> Dict[str, Array]:
    """The params as C-contiguous arrays (themselves when they are, as usual): the matmuls
    then run the same BLAS kernels, and give the same bits, for params in any layout."""
    return {k: np.ascontiguousarray(v) for k, v in params.items()}


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


@builder
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
        w_ht = np.ascontiguousarray(params["w_h"].T)
        xt = _time_major(x)
        hs = _projection_by_unit(xt, params["w_x"], params["b"])  # becomes h_t in place
        h = None if steps.state0 is None else steps.state0[0]
        hp = np.empty_like(hs[:, 0])
        for t in range(hs.shape[1]):
            a = hs[:, t]
            if h is not None:
                a += np.matmul(w_ht, h, out=hp)
            act_(a, out=a)
            _blend_(a, 0.0 if h is None else h, steps.pad_at(t))
            h = a
        return hs, xt, (hs[:, -1],)

    def bptt(params, hs, xt, steps, dy_at, dfinal, need_dx):
        w_h = params["w_h"]
        h0 = None if steps.state0 is None else steps.state0[0]
        hdim, n_t, n_b = hs.shape
        every = slice(0, hdim)
        chunks = _GradChunks(xt, hs, h0, params["w_x"], hdim, ((every, every),), every, need_dx)
        bufs = np.empty((2, hdim, n_b), hs.dtype)   # dh, alternately
        dh = None
        for t in reversed(range(n_t)):
            g, v = _grad_in(dy_at(t), dh), steps.v(t)
            da = chunks.at(t)                       # dL/d(pre-activation)
            act_grad(hs[:, t], _masked(g, v), out=da)
            if t > 0 or h0 is not None:
                dh = _passed(np.matmul(w_h, da, out=bufs[t % 2]), g, v)
            chunks.done(t)
        grads = chunks.grads()
        return grads, chunks.dx, None if h0 is None else (dh,)

    return _recurrent_layer(name, hidden, return_sequences, dtype,
                            _gate_init(w_x_init, w_h_init, b_init, 1), scan, bptt,
                            1, with_lengths, with_initial_state, return_state)


# --- GRU ---------------------------------------------------------------------------

@builder
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
        # sigmoid(a) = (1 + tanh(a / 2)) / 2 on r and z, a / 2 folded into their weights
        half, w_ht = _sigmoid_halving(params["w_h"], (0.5, 0.5, 1.0))
        b_hn = params["b_hn"][:, None]
        xt = _time_major(x)
        acts = _input_projection(xt, params["w_x"], params["b"], half)  # becomes r, z, n
        n_t, n_b, hdim = xt.shape[0], xt.shape[1], w_ht.shape[1]
        hs = np.empty((hdim, n_t, n_b), x.dtype)
        hns = np.empty((n_t, hdim, n_b), x.dtype) if keep else None
        hp = np.empty((3 * hdim, n_b), x.dtype)   # (h @ w_h)^T
        tmp = np.empty((hdim, n_b), x.dtype)
        h = np.zeros((hdim, n_b), x.dtype) if steps.state0 is None else steps.state0[0]
        for t in range(n_t):
            np.matmul(w_ht, h, out=hp)
            a = acts[t]
            rz = a[:2 * hdim]
            rz += hp[:2 * hdim]
            np.tanh(rz, out=rz)                   # halved already: sigmoid = (1 + tanh) / 2
            rz += 1.0
            rz *= 0.5
            r, z, n = a[:hdim], a[hdim:2 * hdim], a[2 * hdim:]
            hn = np.add(hp[2 * hdim:], b_hn, out=hns[t] if keep else hp[2 * hdim:])
            n += np.multiply(r, hn, out=tmp)
            np.tanh(n, out=n)
            h_new = np.subtract(h, n, out=tmp)
            h_new *= z
            h_new += n
            _blend_(h_new, h, steps.pad_at(t))
            h = hs[:, t]
            h[...] = h_new
        return hs, (xt, acts, hns), (hs[:, -1],)

    def bptt(params, hs, cache, steps, dy_at, dfinal, need_dx):
        xt, acts, hns = cache
        w_h = params["w_h"]
        h0 = None if steps.state0 is None else steps.state0[0]
        hdim, n_t, n_b = hs.shape
        # rows r, z, hn, n: the gradients of (h @ w_h + [0, 0, b_hn])^T (r, z, hn) and of
        # the input projection's n block (its r, z blocks are those of h @ w_h)
        h2, h3 = 2 * hdim, 3 * hdim
        chunks = _GradChunks(xt, hs, h0, params["w_x"], 4 * hdim,
                             ((slice(0, h2), slice(0, h2)), (slice(h3, 4 * hdim), slice(h2, h3))),
                             slice(0, h3), need_dx, sums=slice(h2, h3))
        omrz = np.empty((2 * hdim, n_b), hs.dtype)   # 1 - r, 1 - z, then r (1 - r), z (1 - z)
        tmp = np.empty((hdim, n_b), hs.dtype)
        bufs = np.empty((2, hdim, n_b), hs.dtype)     # dh, alternately
        dh = None
        for t in reversed(range(n_t)):
            g_all, v = _grad_in(dy_at(t), dh), steps.v(t)
            g = _masked(g_all, v)                   # zero at padded steps
            a, d = acts[t], chunks.at(t)
            r, z, n = a[:hdim], a[hdim:2 * hdim], a[2 * hdim:]
            d_r, d_z, d_hn, d_n = d[:hdim], d[hdim:h2], d[h2:h3], d[h3:]
            h_prev = hs[:, t - 1] if t > 0 else (0.0 if h0 is None else h0)
            np.subtract(1.0, a[:2 * hdim], out=omrz)
            np.multiply(g, omrz[hdim:], out=d_n)                  # d(pre-tanh of n)
            np.multiply(n, n, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            d_n *= tmp
            np.multiply(d_n, r, out=d_hn)                          # d(h @ w_hn + b_hn)
            np.multiply(d_n, hns[t], out=d_r)
            np.subtract(h_prev, n, out=d_z)
            d_z *= g
            omrz *= a[:2 * hdim]
            d[:2 * hdim] *= omrz                                   # d(a_r), d(a_z)
            if t > 0 or h0 is not None:
                dh = np.multiply(g, z, out=bufs[t % 2])
                dh += np.matmul(w_h, d[:3 * hdim], out=tmp)
                dh = _passed(dh, g_all, v)
            chunks.done(t)
        grads = dict(chunks.grads(), b_hn=chunks.sums)
        return grads, chunks.dx, None if h0 is None else (dh,)

    return _recurrent_layer(name, hidden, return_sequences, dtype, init_params, scan, bptt,
                            1, with_lengths, with_initial_state, return_state)


# --- LSTM --------------------------------------------------------------------------

@builder
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
        dt = x.dtype
        # sigmoid(a) = (1 + tanh(a / 2)) / 2 on i, f, o and tanh(a) on g, all four at once;
        # the a / 2 is folded into the i, f, o weights, the rest is tanh, * scale, + shift
        gate_scales = (0.5, 0.5, 1.0, 0.5)
        half, w_ht = _sigmoid_halving(params["w_h"], gate_scales)
        xt = _time_major(x)
        acts = _input_projection(xt, params["w_x"], params["b"], half)  # becomes i, f, g, o
        n_t, n_b, hdim = xt.shape[0], xt.shape[1], w_ht.shape[1]
        scale, shift = (np.array(v, dt).reshape(4, 1, 1) for v in
                        (gate_scales, (0.5, 0.5, 0.0, 0.5)))
        hs = np.empty((hdim, n_t, n_b), dt)
        cs = np.empty((n_t, hdim, n_b), dt) if keep else np.empty((2, hdim, n_b), dt)
        hp = np.empty((4 * hdim, n_b), dt)     # (h @ w_h)^T
        tmp = np.empty((hdim, n_b), dt)
        h, c = (None, None) if steps.state0 is None else steps.state0
        for t in range(n_t):
            a = acts[t]
            if h is not None:
                a += np.matmul(w_ht, h, out=hp)
            a4 = a.reshape(4, hdim, n_b)
            np.tanh(a, out=a)
            a4 *= scale
            a4 += shift
            i, f, g, o = a4
            c_new = np.multiply(i, g, out=cs[t] if keep else cs[t % 2])
            if c is not None:
                c_new += np.multiply(f, c, out=tmp)
            pad = steps.pad_at(t)
            _blend_(c_new, 0.0 if c is None else c, pad)
            h_new = np.multiply(o, np.tanh(c_new, out=tmp), out=hs[:, t])
            _blend_(h_new, 0.0 if h is None else h, pad)
            h, c = h_new, c_new
        return hs, (xt, acts, cs), (hs[:, -1], c)

    def bptt(params, hs, cache, steps, dy_at, dfinal, need_dx):
        xt, acts, cs = cache
        w_h = params["w_h"]
        hdim, n_t, n_b = hs.shape
        dt = hs.dtype
        h0, c0 = (None, None) if steps.state0 is None else steps.state0
        # the gates' derivatives: (1 - u) * (u + shift) is u (1 - u) for a sigmoid's
        # output u (i, f, o) and 1 - u^2 for the tanh's (g)
        shift = np.array((0.0, 0.0, 1.0, 0.0), dt).reshape(4, 1, 1)
        every = slice(0, 4 * hdim)
        chunks = _GradChunks(xt, hs, h0, params["w_x"], 4 * hdim, ((every, every),), every,
                             need_dx)
        der, d4 = np.empty((4, hdim, n_b), dt), np.empty((4, hdim, n_b), dt)
        d_c, tc = np.empty((hdim, n_b), dt), np.empty((hdim, n_b), dt)
        bufs = np.empty((2, 2, hdim, n_b), dt)   # (dh, dc), alternately
        dh, dc = None, (None if dfinal is None else dfinal[0])
        for t in reversed(range(n_t)):
            g_all, v = _grad_in(dy_at(t), dh), steps.v(t)
            g_h = _masked(g_all, v)                 # zero at padded steps
            a4 = acts[t].reshape(4, hdim, n_b)
            i, f, g, o = a4
            np.tanh(cs[t], out=tc)
            np.subtract(1.0, a4, out=der)
            np.add(a4, shift, out=d4)
            der *= d4
            np.multiply(g_h, tc, out=d4[3])                             # d(o)
            np.multiply(tc, tc, out=d_c)
            np.subtract(1.0, d_c, out=d_c)
            d_c *= o
            d_c *= g_h
            if dc is not None:
                d_c += _masked(dc, v)
            np.multiply(d_c, g, out=d4[0])                              # d(i)
            c_prev = cs[t - 1] if t > 0 else c0
            if c_prev is not None:
                np.multiply(d_c, c_prev, out=d4[1])                     # d(f)
            else:
                d4[1] = 0.0                                              # c_{-1} = 0
            np.multiply(d_c, i, out=d4[2])                              # d(g)
            d = chunks.at(t)
            np.multiply(d4, der, out=d.reshape(4, hdim, n_b))            # d(a_i, a_f, a_g, a_o)
            if t > 0 or c0 is not None:
                dh_new, dc_new = bufs[t % 2]
                np.multiply(d_c, f, out=dc_new)
                if dc is not None:
                    dc_new = _passed(dc_new, dc, v)
                dc = dc_new
                dh = _passed(np.matmul(w_h, d, out=dh_new), g_all, v)
            chunks.done(t)
        grads = chunks.grads()
        return grads, chunks.dx, None if c0 is None else (dh, dc)

    return _recurrent_layer(name, hidden, return_sequences, dtype, init_params, scan, bptt,
                            2, with_lengths, with_initial_state, return_state)


# --- bidirectional -----------------------------------------------------------------

@builder(children=("layer_fwd", "layer_bwd"))
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
    stay in place (zero outputs, zero gradient).  Both children must then take
    lengths.  Children with ``with_initial_state`` or ``return_state`` are not
    supported here.
    """
    if merge not in ("concat", "sum"):
        raise ValueError(f"bidirectional merge must be 'concat' or 'sum', got {merge!r}")
    # the default backward layer: the same builder's layer, a distinct object (its own params)
    layer_bwd = layer_fwd.replace() if layer_bwd is None else layer_bwd
    for what, layer in (("layer_fwd", layer_fwd), ("layer_bwd", layer_bwd)):
        if not isinstance(layer, Layer):
            raise TypeError(f"bidirectional: {what} is a {type(layer).__name__}, not a fundl Layer")
    compose = functools.partial(_bidirectional, merge=merge)
    return combinator(compose, (("forward", layer_fwd), ("backward", layer_bwd)), name,
                      fresh=("y", "dx", "dparams"))


def _merged_shape(merge: str, fwd_shape: Any, bwd_shape: Any) -> Shape:
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


def _sequence_and_reversal(inp: Any) -> Tuple[Array, Optional[Array]]:
    """``(x, reversal index or None)`` of a bidirectional layer's input; the index
    reverses each sequence within its length."""
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


def _reverse_time(y: Array, index: Optional[Array]) -> Array:
    if y.ndim != 3:
        return y
    if index is None:
        return y[:, ::-1]
    return np.take_along_axis(y, index[:, :, None], axis=1)


def _bidirectional(children, merge: str):
    (_, forward), (_, backward) = children
    split = key_splitter(children)

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
                             f"with lengths, got {in_shape}")
        k_f, k_b = random.split(key, 2)
        p_f, s_f, out_f = forward.init_fn(k_f, in_shape)
        p_b, s_b, out_b = backward.init_fn(k_b, in_shape)
        return ({"forward": p_f, "backward": p_b}, {"forward": s_f, "backward": s_b},
                _merged_shape(merge, out_f, out_b))

    def child_inputs(inp, x, index):
        if index is None:
            return x, x[:, ::-1]  # a view: the recurrent cells copy their input once anyway
        return inp, (_reverse_time(x, index), inp[1])

    def combine(y_f, y_b):
        if merge == "sum":
            if y_f.shape != y_b.shape:
                raise LayerError(f"merge='sum' needs equal outputs, got forward shape "
                                 f"{y_f.shape} and backward shape {y_b.shape}")
            return y_f + y_b
        return np.concatenate([y_f, y_b], axis=-1)

    def apply(params, state, inp, *, key=None, train=False):
        x, index = _sequence_and_reversal(inp)
        (k_f, k_b), (in_f, in_b) = split(key), child_inputs(inp, x, index)
        y_f = forward.apply_fn(params["forward"], state["forward"], in_f, key=k_f, train=train)
        y_b = backward.apply_fn(params["backward"], state["backward"], in_b, key=k_b, train=train)
        return combine(y_f, _reverse_time(y_b, index))

    def vjp(params, state, inp, *, key=None, train=True):
        x, index = _sequence_and_reversal(inp)
        (k_f, k_b), (in_f, in_b) = split(key), child_inputs(inp, x, index)
        y_f, s_f, pullback_f = forward.vjp_fn(params["forward"], state["forward"], in_f,
                                              key=k_f, train=train)
        y_b, s_b, pullback_b = backward.vjp_fn(params["backward"], state["backward"], in_b,
                                               key=k_b, train=train)
        y_b = _reverse_time(y_b, index)
        split_at = y_f.shape[-1]

        def pullback(dy):
            dy_f, dy_b = (dy, dy) if merge == "sum" else (dy[..., :split_at], dy[..., split_at:])
            dp_f, dx_f = pullback_f(dy_f)
            dp_b, dx_b = pullback_b(_reverse_time(dy_b, index))
            if index is not None:   # the children's (dx, None): the lengths get no gradient
                dx_f = None if dx_f is None else dx_f[0]
                dx_b = None if dx_b is None else dx_b[0]
            dx = None
            if dx_f is not None and dx_b is not None:
                dx = dx_f + _reverse_time(dx_b, index)
                if index is not None:
                    dx = (dx, None)
            return {"forward": dp_f, "backward": dp_b}, dx

        return combine(y_f, y_b), {"forward": s_f, "backward": s_b}, pullback

    return init, apply, vjp


# --- one step at a time: generation ------------------------------------------------------------

_STEPPED = ("rnn", "gru", "lstm")


def cell(layer: Layer) -> Layer:
    """One time step of the ``rnn``/``gru``/``lstm`` ``layer``, with the same params.

    A Layer ``(x_t, carry) -> carry``: ``x_t`` ``(batch, features)`` is one step of
    the layer's input and ``carry`` the state before it, ``h`` ``(batch, hidden)``
    (the LSTM's pair ``(h, c)``); the output is the state after the step, whose
    ``h`` (``carry[0]`` for the LSTM) is the layer's output at that step.  Stepping
    through a sequence from ``zero_carry`` gives the layer's outputs step by step
    (a padded step of ``with_lengths`` is the caller's to skip).  ``init``'s
    ``in_shape`` is ``((features,), (hidden,))`` (LSTM ``((features,), ((hidden,),
    (hidden,)))``) and its params are the layer's own (``w_x``, ``w_h``, ``b`` ...);
    ``vjp`` gives the exact gradient for the params, ``x_t`` and ``carry``.  It is the
    layer itself run over one step with ``with_initial_state=True`` and
    ``return_state=True``: a sampler calls it once per generated token.
    """
    if not isinstance(layer, Layer) or layer.kind not in _STEPPED:
        got = layer.kind if isinstance(layer, Layer) else type(layer).__name__
        raise TypeError(f"cell takes an rnn, gru or lstm layer, got a {got}")
    config = dict(layer.config, return_sequences=False, with_lengths=False,
                  with_initial_state=True, return_state=True)
    inner = {"rnn": rnn, "gru": gru, "lstm": lstm}[layer.kind](**config)
    hidden = int(config["hidden"])
    state_shape = ((hidden,), (hidden,)) if layer.kind == "lstm" else (hidden,)
    forms = "(x_t, (h, c))" if layer.kind == "lstm" else "(x_t, h)"

    def init(key, in_shape):
        if is_shape(in_shape) or not isinstance(in_shape, (tuple, list)) or len(in_shape) != 2 \
                or not is_shape(in_shape[0]) or len(as_shape(in_shape[0])) != 1:
            raise LayerError(f"expected the input shapes {forms} as ((features,), "
                             f"{state_shape}), got {in_shape!r}")
        params, _, _ = inner.init_fn(key, ((1,) + as_shape(in_shape[0]), in_shape[1]))
        return params, state_shape

    def one_step(inp):
        x_t, carry = check_input_tuple(inp, 2, forms)
        check_float_input(x_t, "input x_t")
        if x_t.ndim != 2:
            raise LayerError(f"expected one time step x_t of shape (batch, features), got shape "
                             f"{tuple(x_t.shape)}")
        return x_t[:, None, :], carry

    def apply(params, inp):
        return inner.apply_fn(params, {}, one_step(inp))[1]

    def vjp(params, inp):
        (h, carry), _, pullback = inner.vjp_fn(params, {}, one_step(inp))

        def cell_pullback(dcarry):
            dparams, (dx, dcarry0) = pullback((np.zeros_like(h), dcarry))
            return dparams, (dx[:, 0], dcarry0)

        return carry, cell_pullback

    return stateless_layer(f"{layer.kind}_cell", init, apply, vjp)


def zero_carry(layer: Layer, batch: int, dtype: Any = None) -> Any:
    """The zero state an ``rnn``/``gru``/``lstm`` ``layer`` starts from, for :func:`cell`:
    ``(batch, hidden)`` zeros of ``dtype`` (the layer's by default), a pair for the LSTM."""
    if not isinstance(layer, Layer) or layer.kind not in _STEPPED:
        got = layer.kind if isinstance(layer, Layer) else type(layer).__name__
        raise TypeError(f"zero_carry takes an rnn, gru or lstm layer, got a {got}")
    shape = (int_arg("zero_carry", "batch", batch, minimum=0), int(layer.config["hidden"]))
    dtype = np.dtype(layer.config["dtype"] if dtype is None else dtype)
    if layer.kind == "lstm":
        return np.zeros(shape, dtype), np.zeros(shape, dtype)
    return np.zeros(shape, dtype)
