"""Hand-written numpy references: the same networks as the fundl workloads, as tight as
plain numpy allows (no framework, no purity).

Each reference keeps its own copy of the weights and updates them in place with SGD.
Weights use fundl's layout (dense ``w`` is ``(in, out)``, conv kernels are
``(kh, kw, c_in, c_out)`` on NHWC data) and are copied from a fundl ``params`` tree,
so the same initial weights and batch give the same loss as fundl.

Tricks used, as a careful numpy programmer would: the bias add, ReLU and the
softmax/cross-entropy gradient work in place on the step's own arrays, the ReLU
backward multiplies by the mask in place, the first layer computes no input
gradient, bias gradients are a BLAS gemv (``ones @ dy``), the SGD update scales
the gradient in place and subtracts it from the weights in place, convolutions
are im2col + one sgemm (a loop over the 9 kernel offsets only; the bias is a
column of ones in im2col, so the sgemm adds it and ``cols.T @ dy`` gives its
gradient; im2col is built transposed for the single-channel input) and their
input gradient is one small sgemm per kernel offset, the centre one straight
into dx, the others into a reused buffer, max-pooling
takes the max of four strided views, and the CNN's ReLU runs after its max pool
(``relu(max(x)) == max(relu(x))``: on a 4x smaller array, as fundl's ``serial``
does too).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

__all__ = ["MLPReference", "CNNReference"]


def _softmax_ce_grad(z: np.ndarray, labels: np.ndarray) -> float:
    """Overwrite logits ``z`` (n, k) with d(mean CE)/dz; return the mean loss (float)."""
    n = z.shape[0]
    rows = np.arange(n)
    z -= z.max(axis=1, keepdims=True)
    picked = z[rows, labels]                      # shifted logit of the true class
    np.exp(z, out=z)
    total = z.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(total[:, 0]) - picked))
    z *= (1.0 / n) / total                        # softmax / n
    z[rows, labels] -= z.dtype.type(1.0 / n)
    return loss


def _bias_grad(dy2: np.ndarray) -> np.ndarray:
    """Column sums of dy2 (rows, f) as a BLAS gemv: several times faster than sum(axis=0)."""
    return np.ones(dy2.shape[0], dy2.dtype) @ dy2


def _relu_backward_(dh: np.ndarray, h: np.ndarray) -> np.ndarray:
    """dh *= (h > 0), in place on our own dh."""
    np.multiply(dh, h > 0, out=dh)
    return dh


class MLPReference:
    """MLP ``in-h1-...-out`` with ReLU, softmax cross-entropy and in-place SGD.

    ``params`` is fundl's tree for ``serial(dense, relu, ..., dense)``; the dense
    layers' ``w``/``b`` are copied in order.
    """

    def __init__(self, params: Dict) -> None:
        dense = [p for p in params.values() if "w" in p]
        self.ws: List[np.ndarray] = [np.array(p["w"]) for p in dense]
        self.bs: List[np.ndarray] = [np.array(p["b"]) for p in dense]

    def params_list(self) -> List[np.ndarray]:
        """The weights in fundl's leaf order: w, b of each dense layer."""
        return [a for wb in zip(self.ws, self.bs) for a in wb]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch ``x`` (n, in): inference, no residuals kept."""
        h = x
        last = len(self.ws) - 1
        for i, (w, b) in enumerate(zip(self.ws, self.bs)):
            z = h @ w
            z += b
            if i < last:
                np.maximum(z, 0, out=z)
            h = z
        return h

    def step(self, x: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """One SGD step on batch ``(x, labels)``; returns the loss before the update."""
        ws, bs = self.ws, self.bs
        hs = [x]
        last = len(ws) - 1
        for i in range(len(ws)):
            z = hs[-1] @ ws[i]
            z += bs[i]
            if i < last:
                np.maximum(z, 0, out=z)
            hs.append(z)
        dz = hs.pop()
        loss = _softmax_ce_grad(dz, labels)
        lr32 = ws[0].dtype.type(lr)
        for i in range(last, -1, -1):
            h = hs.pop()
            dw = h.T @ dz
            db = _bias_grad(dz)
            dh = dz @ ws[i].T if i > 0 else None   # no input gradient for the first layer
            dw *= lr32
            ws[i] -= dw
            db *= lr32
            bs[i] -= db
            if dh is not None:
                dz = _relu_backward_(dh, h)
        return loss


# --- CNN: im2col convolutions -------------------------------------------------

def _im2col3x3(x: np.ndarray, ones_column: bool = False) -> np.ndarray:
    """Patches of a 3x3 'same' conv: x (n, h, w, c) -> cols (n*h*w, 9*c), with
    ``ones_column`` one more last column of ones (the bias's input: the matmul adds the
    bias, and ``cols.T @ dy`` gives its gradient in the last row).

    One copy of a strided (n, h, w, 3, 3, c) patch view of the padded input, so ``cols``
    is written once front to back with 3*c-long contiguous pieces (a copy per kernel
    offset writes c-long pieces and was measured ~2x slower).  With at most 4 channels
    those pieces are a few floats: ``cols`` is then built transposed, one contiguous
    row per kernel offset and channel, and returned as its (Fortran-ordered) transpose
    (for the first conv, c = 1: 0.13 against 0.97 ms).
    """
    n, h, w, c = x.shape
    xp = np.zeros((n, h + 2, w + 2, c), x.dtype)
    xp[:, 1:-1, 1:-1, :] = x
    width = 9 * c + int(ones_column)
    if c <= 4:
        cols_t = np.empty((width, n, h, w), x.dtype)
        per_offset = cols_t[:9 * c].reshape(3, 3, c, n, h, w)
        for i in range(3):
            for j in range(3):
                per_offset[i, j] = np.moveaxis(xp[:, i:i + h, j:j + w, :], -1, 0)
        if ones_column:
            cols_t[-1] = 1.0
        return cols_t.reshape(width, -1).T
    sn, sh, sw, sc = xp.strides
    patches = np.lib.stride_tricks.as_strided(xp, (n, h, w, 3, 3, c), (sn, sh, sw, sh, sw, sc),
                                              writeable=False)
    cols = np.empty((n, h, w, width), x.dtype)
    cols[..., :9 * c].reshape(n, h, w, 3, 3, c)[...] = patches
    if ones_column:
        cols[..., -1] = 1.0
    return cols.reshape(n * h * w, width)


#: For kernel offset 0, 1, 2 of a 3x3 'same' conv: (the outputs, the inputs they reach).
_REACH = {0: (slice(1, None), slice(0, -1)), 1: (slice(None), slice(None)),
          2: (slice(0, -1), slice(1, None))}


def _conv3x3_input_grad(dy2: np.ndarray, k: np.ndarray,
                        shape: Tuple[int, int, int, int]) -> np.ndarray:
    """dx of a 3x3 'same' conv: one ``dy2 @ k[i, j].T`` per kernel offset, the centre
    one straight into dx (it reaches every input cell, so dx needs no zeroing), the
    others into a reused buffer added into the cells they reach (cheaper than a
    (n*h*w, 9c) dcols and col2im)."""
    n, h, w, c = shape
    dx = np.empty(shape, dy2.dtype)
    np.matmul(dy2, k[1, 1].T, out=dx.reshape(-1, c))
    buf = np.empty(shape, dy2.dtype)
    for i in range(3):
        for j in range(3):
            if i == j == 1:
                continue
            np.matmul(dy2, k[i, j].T, out=buf.reshape(-1, c))
            (out_r, in_r), (out_c, in_c) = _REACH[i], _REACH[j]
            dx[:, in_r, in_c] += buf[:, out_r, out_c]
    return dx


def _col2im3x3(dcols: np.ndarray, shape: Tuple[int, int, int, int]) -> np.ndarray:
    """Adjoint of :func:`_im2col3x3`: dcols (n*h*w, 9*c) -> dx (n, h, w, c)."""
    n, h, w, c = shape
    d = dcols.reshape(n, h, w, 9, c)
    dxp = np.zeros((n, h + 2, w + 2, c), dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, i:i + h, j:j + w, :] += d[:, :, :, 3 * i + j, :]
    return dxp[:, 1:-1, 1:-1, :]


def _maxpool2(x: np.ndarray) -> np.ndarray:
    """2x2 max-pool, stride 2: the max of the four strided views (no reduction over
    non-contiguous axes, which numpy runs slowly)."""
    y = np.maximum(x[:, 0::2, 0::2, :], x[:, 0::2, 1::2, :])
    np.maximum(y, x[:, 1::2, 0::2, :], out=y)
    np.maximum(y, x[:, 1::2, 1::2, :], out=y)
    return y


def _maxpool2_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Route dy to the window maxima: one broadcast compare written straight into the float
    dx, one broadcast multiply (measured ~2x faster than per-offset views).  Every tied
    maximum gets the gradient; a shortcut that is exact only without ties, which the
    conv outputs pooled here (before the ReLU) have in practice never; fundl's pool gives
    each window's gradient to one cell, ties or not."""
    n, h, w, c = x.shape
    dx = np.empty_like(x)
    dxr = dx.reshape(n, h // 2, 2, w // 2, 2, c)
    np.equal(x.reshape(n, h // 2, 2, w // 2, 2, c), y[:, :, None, :, None, :], out=dxr)
    dxr *= dy[:, :, None, :, None, :]
    return dx


def _pool_relu(a: np.ndarray) -> np.ndarray:
    """relu(maxpool2(a)), the ReLU in place on the pooled maxima (``relu(max(a)) ==
    max(relu(a))``, on a 4x smaller array)."""
    p = _maxpool2(a)
    np.maximum(p, 0, out=p)
    return p


def _pool_relu_backward(a: np.ndarray, p: np.ndarray, dp: np.ndarray) -> np.ndarray:
    """da of :func:`_pool_relu` (``dp`` is overwritten): the ReLU mask, then the pool.
    The pool's backward compares ``a`` with relu(max), which differs from the max only
    where the ReLU's gradient is 0 anyway."""
    return _maxpool2_backward(a, p, _relu_backward_(dp, p))


class CNNReference:
    """conv3x3(c1) same, relu, maxpool2, conv3x3(c2) same, relu, maxpool2, flatten, dense.

    ``params`` is fundl's tree for the same ``serial``: the two conv layers' ``w``
    (3, 3, c_in, c_out) / ``b`` and the dense layer's ``w``/``b``, taken in order.
    """

    def __init__(self, params: Dict) -> None:
        layers = [p for p in params.values() if "w" in p]
        (c1, c2, d) = layers
        self.k1, self.b1 = np.array(c1["w"]), np.array(c1["b"])
        self.k2, self.b2 = np.array(c2["w"]), np.array(c2["b"])
        self.w3, self.b3 = np.array(d["w"]), np.array(d["b"])

    def params_list(self) -> List[np.ndarray]:
        """The weights in fundl's leaf order: w, b of conv 1, conv 2 and the dense layer."""
        return [self.k1, self.b1, self.k2, self.b2, self.w3, self.b3]

    def _conv(self, x: np.ndarray, k: np.ndarray, b: np.ndarray):
        """y and cols (with its ones column: the matmul adds the bias)."""
        n, h, w, _ = x.shape
        cols = _im2col3x3(x, ones_column=True)
        y = cols @ np.concatenate([k.reshape(-1, k.shape[-1]), b[None]])
        return y.reshape(n, h, w, k.shape[-1]), cols

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch ``x`` (n, 28, 28, 1): inference, no residuals kept."""
        a, _ = self._conv(x, self.k1, self.b1)
        a, _ = self._conv(_pool_relu(a), self.k2, self.b2)
        p = _pool_relu(a)
        z = p.reshape(p.shape[0], -1) @ self.w3
        z += self.b3
        return z

    def step(self, x: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """One SGD step on batch ``(x, labels)``; returns the loss before the update."""
        n = x.shape[0]
        a1, cols1 = self._conv(x, self.k1, self.b1)
        p1 = _pool_relu(a1)
        a2, cols2 = self._conv(p1, self.k2, self.b2)
        p2 = _pool_relu(a2)
        f = p2.reshape(n, -1)
        z = f @ self.w3
        z += self.b3
        loss = _softmax_ce_grad(z, labels)
        lr32 = self.w3.dtype.type(lr)
        # dense
        dw3 = f.T @ z
        db3 = _bias_grad(z)
        df = z @ self.w3.T
        # relu 2 on the pooled gradient, then pool 2
        da2 = _pool_relu_backward(a2, p2, df.reshape(p2.shape))
        dy2 = da2.reshape(-1, da2.shape[-1])
        g2 = cols2.T @ dy2                      # dk2 and, in the last row, db2
        dk2, db2 = g2[:-1], g2[-1]
        dp1 = _conv3x3_input_grad(dy2, self.k2, p1.shape)
        # relu 1, pool 1
        da1 = _pool_relu_backward(a1, p1, dp1)
        dy1 = da1.reshape(-1, da1.shape[-1])
        g1 = cols1.T @ dy1                      # no input gradient for the first conv
        dk1, db1 = g1[:-1], g1[-1]
        for p, g in ((self.w3, dw3), (self.b3, db3), (self.k2, dk2.reshape(self.k2.shape)),
                     (self.b2, db2), (self.k1, dk1.reshape(self.k1.shape)), (self.b1, db1)):
            g *= lr32
            p -= g
        return loss
