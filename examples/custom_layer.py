"""Write your own layer as three plain functions, check its gradient, train with it.

The layer: a tanh with a learnable per-feature output scale,
``y = scale * tanh(x)`` over the last axis, ``scale`` of shape ``(features,)``.

Run: python examples/custom_layer.py   (a few seconds; numpy only)
"""

import numpy as np

import fundl as fl
from fundl import random
from fundl import LayerError
from fundl.checks import as_shape, check_float_input, check_param_dtype
from fundl.datasets import spirals
from fundl.testing import check_layer
from fundl import fit


def scaled_tanh(init_scale: float = 1.0, dtype=np.float32) -> fl.Layer:
    """``y = scale * tanh(x)``; x is ``(batch, ..., features)``; params ``scale``: ``(features,)``."""

    def init(key, in_shape):
        in_shape = as_shape(in_shape)
        if not in_shape:
            raise LayerError(f"expected an input shape (..., features), got {in_shape}")
        return {"scale": np.full(in_shape[-1:], init_scale, dtype)}, in_shape

    def check(params, x):
        check_float_input(x)
        if x.ndim < 2 or x.shape[-1] != params["scale"].shape[0]:
            raise LayerError(f"expected input of shape (batch, ..., {params['scale'].shape[0]}), "
                             f"got shape {x.shape}")
        check_param_dtype(x, params["scale"])

    def apply(params, x):
        check(params, x)
        return params["scale"] * np.tanh(x)

    def vjp(params, x):
        check(params, x)
        t = np.tanh(x)
        scale = params["scale"]
        y = scale * t

        def pullback(dy):
            # dL/dscale = sum over every position but the last axis of dy * tanh(x)
            dscale = (dy * t).reshape(-1, scale.shape[0]).sum(axis=0)
            # dL/dx = dy * scale * (1 - tanh(x)^2)
            dx = dy * scale
            dx *= 1 - t * t
            return {"scale": dscale}, dx

        return y, pullback   # the pullback keeps t (not x): all the backward needs

    return fl.stateless_layer("scaled_tanh", init, apply, vjp)


def main() -> None:
    layer = scaled_tanh(0.5)
    result = fl.check_vjp(layer, (4, 3))  # float64 finite differences vs the pullback
    print(result)
    # The whole contract (shapes, float32 kept, purity, determinism, and check_vjp again):
    check_layer(layer, (4, 3))
    print("check_layer: contract checks passed")

    k_data, k_fit = random.split(random.key(1))
    x, y = spirals(k_data, n_per_class=200, classes=3, noise=0.1)
    model = fl.serial(fl.dense(64), scaled_tanh(), fl.dense(64), scaled_tanh(), fl.dense(3))
    ts, history = fit(model, fl.losses.softmax_cross_entropy, fl.optim.sgd(), (x, y),
                      key=k_fit, epochs=80, batch_size=32, lr=0.3, val_data=(x, y),
                      metrics=["accuracy"], progress=False)
    print(f"after {ts.step} steps: train loss {history['loss'][-1]:.4f}, "
          f"accuracy {history['val_accuracy'][-1]:.3f}")
    print("learned scales of the first scaled_tanh:", np.round(ts.params["scaled_tanh_1"]["scale"][:6], 3))


if __name__ == "__main__":
    main()
