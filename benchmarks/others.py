"""PyTorch (eager) and JAX (jit) versions of the workloads, when importable.

Never a fundl dependency: :func:`build` returns ``None`` (and :func:`unavailable`
says why) when the framework is missing.  Weights are copied from fundl's params
so that the first-step loss matches.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["build", "unavailable", "versions"]

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

class TorchImpl:
    name = "torch"

    def __init__(self, torch, workload: str, params, x, y, lr) -> None:
        nn = torch.nn
        layers = _weights(params)
        with torch.no_grad():
            if workload == "mlp":
                mods = []
                for i, p in enumerate(layers):
                    lin = nn.Linear(*p["w"].shape)
                    lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(p["w"].T)))
                    lin.bias.copy_(torch.from_numpy(np.array(p["b"])))
                    mods.append(lin)
                    if i < len(layers) - 1:
                        mods.append(nn.ReLU())
                self.model = nn.Sequential(*mods)
                self.x = torch.from_numpy(np.array(x))
            else:
                c1, c2, d = layers
                convs = []
                for p in (c1, c2):
                    kh, kw, ci, co = p["w"].shape
                    conv = nn.Conv2d(ci, co, (kh, kw), padding="same")
                    conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(
                        np.transpose(p["w"], (3, 2, 0, 1)))))
                    conv.bias.copy_(torch.from_numpy(np.array(p["b"])))
                    convs.append(conv)
                # fundl flattens NHWC as (h, w, c); torch's NCHW flatten is (c, h, w).
                w3 = np.asarray(d["w"]).reshape(7, 7, 64, -1).transpose(2, 0, 1, 3).reshape(3136, -1)
                lin = nn.Linear(3136, w3.shape[1])
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w3.T)))
                lin.bias.copy_(torch.from_numpy(np.array(d["b"])))
                self.model = nn.Sequential(convs[0], nn.ReLU(), nn.MaxPool2d(2),
                                           convs[1], nn.ReLU(), nn.MaxPool2d(2),
                                           nn.Flatten(), lin)
                self.x = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.torch = torch
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
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


def build(name: str, workload: str, params, x, y, lr) -> Any:
    """The ``name`` ("torch" or "jax") implementation of ``workload``, or None if unavailable."""
    if name == "torch":
        t = _torch()
        return None if t is None else TorchImpl(t, workload, params, x, y, lr)
    if name == "jax":
        j = _jax()
        return None if j is None else JaxImpl(j, workload, params, x, y, lr)
    raise ValueError(f"unknown framework {name!r}")
