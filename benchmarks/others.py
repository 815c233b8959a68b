"""PyTorch (eager) and JAX (jit) versions of the workloads, when importable.

Never a fundl dependency: :func:`build` returns ``None`` (and :func:`unavailable`
says why) when the framework is missing; :func:`unsupported` says which workloads
a framework has (torch: all of them, with SGD and Adam; JAX: mlp and cnn with SGD).
Weights are copied from fundl's params so that the first-step loss matches.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["build", "unavailable", "unsupported", "versions", "TorchImpl"]

_WHY: Dict[str, str] = {}


def _torch():
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        _WHY["torch"] = f"not importable ({type(err).__name__}: {err})"
        return None
    threads = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads else (os.cpu_count() or 1))
    return torch


def _jax():
    try:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax
    except Exception as err:  # noqa: BLE001
        _WHY["jax"] = f"not importable ({type(err).__name__}: {err})"
        return None
    return jax


def unavailable(name: str) -> Optional[str]:
    """Why framework ``name`` is skipped, or None if it is available."""
    (_torch if name == "torch" else _jax)()
    return _WHY.get(name)


def versions() -> Dict[str, str]:
    out = {}
    t = _torch()
    if t is not None:
        out["torch"] = f"{t.__version__} (threads {t.get_num_threads()})"
    j = _jax()
    if j is not None:
        import jaxlib
        out["jax"] = f"{j.__version__} (jaxlib {jaxlib.__version__}, {j.default_backend()})"
    return out


def _weights(params) -> list:
    return [p for p in params.values() if "w" in p]


# --- PyTorch eager ----------------------------------------------------------
#
# Each builder maps fundl's params tree (in its layer order) onto torch modules:
# dense ``w`` (in, out) is ``Linear.weight.T``; conv ``w`` (kh, kw, c_in, c_out)
# on NHWC is ``Conv2d.weight`` (c_out, c_in, kh, kw) on NCHW, and a dense layer
# after a flatten has its rows reordered from fundl's (h, w, c) to torch's
# (c, h, w); recurrent ``w_x`` (features, G*H) / ``w_h`` (H, G*H) are
# ``weight_ih.T`` / ``weight_hh.T`` with the same gate order (LSTM i, f, g, o;
# GRU r, z, n).  Where torch has a redundant bias, the copy that fundl does not
# have is zero and is not trained, so both frameworks train the same function
# with the same parameters: the LSTM's ``bias_hh`` (fundl's ``b`` is
# ``bias_ih + bias_hh``) is frozen; the GRU's ``bias_hh`` holds fundl's ``b_hn``
# in its n block and a gradient hook zeroes its r and z blocks (fundl's ``b``
# is ``bias_ih`` there plus ``bias_hh``'s r, z).  The attention's key bias
# (fundl has none: the softmax cancels it) stays trainable in torch's packed
# ``in_proj_bias``; its gradient is zero up to rounding and it cannot change the
# outputs.

def _tensor(torch, a) -> Any:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _linear(torch, p) -> Any:
    lin = torch.nn.Linear(*p["w"].shape)
    with torch.no_grad():
        lin.weight.copy_(_tensor(torch, np.asarray(p["w"]).T))
        lin.bias.copy_(_tensor(torch, p["b"]))
    return lin


def _conv2d(torch, p) -> Any:
    kh, kw, ci, co = p["w"].shape
    conv = torch.nn.Conv2d(ci, co, (kh, kw), padding="same")
    with torch.no_grad():
        conv.weight.copy_(_tensor(torch, np.transpose(p["w"], (3, 2, 0, 1))))
        conv.bias.copy_(_tensor(torch, p["b"]))
    return conv


def _dense_after_nhwc_flatten(torch, p, h: int, w: int, c: int) -> Any:
    """fundl flattens NHWC as (h, w, c); torch's NCHW flatten is (c, h, w)."""
    wt = np.asarray(p["w"]).reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    return _linear(torch, {"w": wt, "b": p["b"]})


def _nchw(torch, x) -> Any:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _torch_mlp(torch, params, x, cfg):
    layers = _weights(params)
    mods = []
    for i, p in enumerate(layers):
        mods.append(_linear(torch, p))
        if i < len(layers) - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods), torch.from_numpy(np.array(x))


def _torch_cnn(torch, params, x, cfg):
    nn = torch.nn
    c1, c2, d = _weights(params)
    model = nn.Sequential(_conv2d(torch, c1), nn.ReLU(), nn.MaxPool2d(2),
                          _conv2d(torch, c2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          _dense_after_nhwc_flatten(torch, d, 7, 7, c2["w"].shape[-1]))
    return model, _nchw(torch, x)


def _batch_norm2d(torch, p) -> Any:
    # fundl's momentum 0.99 keeps 99% of the running statistic: torch's momentum 0.01.
    bn = torch.nn.BatchNorm2d(p["scale"].shape[0], eps=1e-5, momentum=0.01)
    with torch.no_grad():
        bn.weight.copy_(_tensor(torch, p["scale"]))
        bn.bias.copy_(_tensor(torch, p["bias"]))
    return bn


def _torch_cnn_bn(torch, params, x, cfg):
    nn = torch.nn
    conv1, bn1, conv2, bn2, d = [p for p in params.values() if p]
    s = cfg["size"] // 4
    model = nn.Sequential(_conv2d(torch, conv1), _batch_norm2d(torch, bn1), nn.ReLU(),
                          nn.MaxPool2d(2),
                          _conv2d(torch, conv2), _batch_norm2d(torch, bn2), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(),
                          _dense_after_nhwc_flatten(torch, d, s, s, cfg["c2"]))
    return model, _nchw(torch, x)


def _set_recurrent(torch, rnn, p, suffix: str, gates: int) -> None:
    """Copy one direction of a fundl LSTM/GRU's params into ``rnn`` (see the comment above)."""
    hid = p["w_h"].shape[0]
    get = lambda what: getattr(rnn, f"{what}_l0{suffix}")  # noqa: E731
    with torch.no_grad():
        get("weight_ih").copy_(_tensor(torch, np.asarray(p["w_x"]).T))
        get("weight_hh").copy_(_tensor(torch, np.asarray(p["w_h"]).T))
        get("bias_ih").copy_(_tensor(torch, p["b"]))
        b_hh = np.zeros(gates * hid, np.float32)
        if "b_hn" in p:
            b_hh[2 * hid:] = p["b_hn"]
        get("bias_hh").copy_(_tensor(torch, b_hh))
    if gates == 4:
        get("bias_hh").requires_grad_(False)
    else:
        mask = torch.ones(gates * hid)
        mask[:2 * hid] = 0.0
        get("bias_hh").register_hook(lambda g: g * mask)


def _torch_lstm(torch, params, x, cfg):
    nn = torch.nn
    rec, d = [p for p in params.values() if p]
    lstm = nn.LSTM(cfg["features"], cfg["hidden"], batch_first=True)
    _set_recurrent(torch, lstm, rec, "", 4)

    class LSTMClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = lstm, _linear(torch, d)

        def forward(self, xb):
            out, _ = self.lstm(xb)
            return self.head(out[:, -1])

    return LSTMClassifier(), torch.from_numpy(np.array(x))


def _torch_gru(torch, params, x, cfg):
    nn = torch.nn
    rec, d = [p for p in params.values() if p]
    gru = nn.GRU(cfg["features"], cfg["hidden"], batch_first=True, bidirectional=True)
    _set_recurrent(torch, gru, rec["forward"], "", 3)
    _set_recurrent(torch, gru, rec["backward"], "_reverse", 3)

    class BiGRUClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.head = gru, _linear(torch, d)

        def forward(self, xb):
            out, _ = self.gru(xb)                      # (N, T, 2H): [forward, backward]
            return self.head(out.reshape(out.shape[0], -1))

    xt = torch.from_numpy(np.ascontiguousarray(
        np.asarray(x).reshape(x.shape[0], cfg["steps"], cfg["features"])))
    return BiGRUClassifier(), xt


def _layer_norm(torch, p, width: int) -> Any:
    ln = torch.nn.LayerNorm(width, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(_tensor(torch, p["scale"]))
        ln.bias.copy_(_tensor(torch, p["bias"]))
    return ln


def _mha(torch, p, width: int, heads: int) -> Any:
    """fundl's ``w_q, w_k, w_v`` (F, D) stacked transposed into ``in_proj_weight`` (3D, F);
    ``in_proj_bias`` = [b_q, 0, b_v]; ``out_proj`` = ``w_o.T``, ``b_o``."""
    mha = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(_tensor(torch, np.concatenate(
            [np.asarray(p[k]).T for k in ("w_q", "w_k", "w_v")], axis=0)))
        mha.in_proj_bias.copy_(_tensor(torch, np.concatenate(
            [p["b_q"], np.zeros_like(p["b_q"]), p["b_v"]])))
        mha.out_proj.weight.copy_(_tensor(torch, np.asarray(p["w_o"]).T))
        mha.out_proj.bias.copy_(_tensor(torch, p["b_o"]))
    return mha


def _torch_transformer(torch, params, x, cfg):
    nn = torch.nn
    width, heads, steps = cfg["width"], cfg["heads"], cfg["steps"]
    vals = list(params.values())
    emb_p, pos_p, block_ps = vals[0], vals[1], vals[2:2 + 2 * cfg["blocks"]]
    ln_f, head_p = vals[-2], vals[-1]

    def inner(res):          # residual -> serial -> its children's params, in order
        (serial_params,) = res.values()
        return list(serial_params.values())

    class Block(nn.Module):
        def __init__(self, attn_ps, mlp_ps):
            super().__init__()
            self.ln1, self.attn = _layer_norm(torch, attn_ps[0], width), _mha(torch, attn_ps[1], width, heads)
            self.ln2 = _layer_norm(torch, mlp_ps[0], width)
            self.fc1, self.act, self.fc2 = _linear(torch, mlp_ps[1]), nn.GELU(), _linear(torch, mlp_ps[3])

        def forward(self, h, mask):
            a = self.ln1(h)
            h = h + self.attn(a, a, a, attn_mask=mask, need_weights=False, is_causal=True)[0]
            return h + self.fc2(self.act(self.fc1(self.ln2(h))))

    class CausalLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(*emb_p["w"].shape)
            with torch.no_grad():
                self.emb.weight.copy_(_tensor(torch, emb_p["w"]))
            (pos,) = pos_p.values()       # {"pos": (max_len, width)}
            self.pos = nn.Parameter(_tensor(torch, pos))
            self.blocks = nn.ModuleList(Block(inner(a), inner(m))
                                        for a, m in zip(block_ps[0::2], block_ps[1::2]))
            self.ln, self.head = _layer_norm(torch, ln_f, width), _linear(torch, head_p)
            self.register_buffer("mask", torch.triu(torch.ones(steps, steps, dtype=torch.bool), 1))

        def forward(self, ids):
            t = ids.shape[1]
            h = self.emb(ids) + self.pos[:t]
            for block in self.blocks:
                h = block(h, self.mask[:t, :t])
            return self.head(self.ln(h))

    return CausalLM(), torch.from_numpy(np.asarray(x, dtype=np.int64))


_TORCH_BUILDERS = {"mlp": _torch_mlp, "cnn": _torch_cnn, "cnn_bn": _torch_cnn_bn,
                   "lstm": _torch_lstm, "gru_paper": _torch_gru, "gru128": _torch_gru,
                   "transformer": _torch_transformer}


class TorchImpl:
    """A torch model on a fixed batch: ``zero_grad``, forward, cross entropy, backward, step."""

    name = "torch"

    def __init__(self, torch, workload: str, params, x, y, lr, optimizer: str = "sgd",
                 cfg: Optional[Dict[str, int]] = None) -> None:
        self.model, self.x = _TORCH_BUILDERS[workload](torch, params, x, cfg or {})
        self.model.train()
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64).reshape(-1))
        self.torch = torch
        trained = [p for p in self.model.parameters() if p.requires_grad]
        if optimizer == "sgd":
            self.opt = torch.optim.SGD(trained, lr=lr)
        elif optimizer == "adam":
            self.opt = torch.optim.Adam(trained, lr=lr, betas=(0.9, 0.999), eps=1e-8)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        out = self.model(self.x)
        loss = self.loss_fn(out.reshape(-1, out.shape[-1]), self.y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def infer(self):
        with self.torch.inference_mode():
            return self.model(self.x)


# --- JAX jit ----------------------------------------------------------------

class JaxImpl:
    name = "jax"

    def __init__(self, jax, workload: str, params, x, y, lr) -> None:
        import jax.numpy as jnp
        from jax import lax
        layers = _weights(params)
        self.params = [(jnp.asarray(p["w"]), jnp.asarray(p["b"])) for p in layers]
        self.x, self.y = jnp.asarray(x), jnp.asarray(np.asarray(y, dtype=np.int32))

        if workload == "mlp":
            def forward(ps, xb):
                h = xb
                for i, (w, b) in enumerate(ps):
                    h = h @ w + b
                    if i < len(ps) - 1:
                        h = jax.nn.relu(h)
                return h
        else:
            def conv(h, w, b):
                return lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

            def pool(h):
                return lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

            def forward(ps, xb):
                (k1, b1), (k2, b2), (w3, b3) = ps
                h = pool(jax.nn.relu(conv(xb, k1, b1)))
                h = pool(jax.nn.relu(conv(h, k2, b2)))
                return h.reshape(h.shape[0], -1) @ w3 + b3

        def loss_fn(ps, xb, yb):
            logp = jax.nn.log_softmax(forward(ps, xb))
            return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

        def step(ps, xb, yb):
            loss, grads = jax.value_and_grad(loss_fn)(ps, xb, yb)
            return jax.tree_util.tree_map(lambda p, g: p - lr * g, ps, grads), loss

        self._step = jax.jit(step, donate_argnums=(0,))
        self._forward = jax.jit(forward)

    def step(self) -> float:
        self.params, loss = self._step(self.params, self.x, self.y)
        return float(loss)  # blocks until ready

    def infer(self):
        return self._forward(self.params, self.x).block_until_ready()


def unsupported(name: str, workload: str, optimizer: str) -> Optional[str]:
    """Why framework ``name`` has no version of ``workload`` with ``optimizer`` (None if it has)."""
    if name == "torch":
        return None if workload in _TORCH_BUILDERS else f"no torch version of {workload}"
    if name == "jax":
        if workload in ("mlp", "cnn") and optimizer == "sgd":
            return None
        return "the JAX versions are mlp and cnn with SGD only"
    raise ValueError(f"unknown framework {name!r}")


def build(name: str, workload: str, params, x, y, lr, optimizer: str = "sgd",
          cfg: Optional[Dict[str, int]] = None) -> Any:
    """The ``name`` ("torch" or "jax") implementation of ``workload``, or None if unavailable."""
    why = unsupported(name, workload, optimizer)
    if why:
        raise ValueError(why)
    if name == "torch":
        t = _torch()
        return None if t is None else TorchImpl(t, workload, params, x, y, lr, optimizer, cfg)
    j = _jax()
    return None if j is None else JaxImpl(j, workload, params, x, y, lr)
