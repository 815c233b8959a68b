"""Fine-tune a PyTorch-pretrained CNN in fundl: a frozen eval-mode body and a new head.

1. PyTorch pretrains a small 1-D CNN with batch norm on MNIST-1D's digits 0-4.
2. ``fundl.interop.torch`` ports it into the same fundl model; the ported model's
   outputs match ``net.eval()``'s.
3. Surgery: ``surgery.first_layers(..., -1)`` takes the body (everything but the
   head) with its params and state; the new model is
   ``serial(eval_mode(body), dense(5))`` and ``surgery.graft`` puts the pretrained
   body's params and state in place.  ``fl.eval_mode`` keeps the body's batch-norm
   statistics frozen (and runs it as deployed), ``fl.optim.freeze`` keeps its params.
4. ``fl.fit`` trains the new head on digits 5-9, a task the body never saw; the same
   head on a randomly initialised body is the baseline.  The body's params and
   statistics come out bit-identical.
5. The fine-tuned model is saved with its architecture (``fl.io.save(..., model=)``)
   and rebuilt from the file alone (``fl.io.load_model``).

Needs PyTorch and mnist1d (``pip install torch mnist1d``); without them it says so
and exits cleanly.

Run:  python3 examples/fine_tune.py            (about half a minute on 2 cores)
      python3 examples/fine_tune.py --quick    (a few seconds)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from typing import Any, Dict

import numpy as np

# Python puts this folder first on sys.path, where examples/mnist1d.py would shadow the
# `mnist1d` package that builds the data: drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import fundl as fl  # noqa: E402
from fundl import surgery  # noqa: E402


def fundl_cnn(classes: int) -> fl.Layer:
    """The fundl twin of :func:`torch_cnn` (NWC data: ``(batch, 40, 1)``)."""
    return fl.serial(fl.conv1d(16, 5, padding=2), fl.batch_norm(momentum=0.9), fl.relu(),
                     fl.max_pool1d(2),
                     fl.conv1d(32, 3, padding=1), fl.batch_norm(momentum=0.9), fl.relu(),
                     fl.max_pool1d(2), fl.flatten(), fl.dense(64), fl.relu(), fl.dense(classes))


def torch_cnn(torch: Any, classes: int) -> Any:
    """A small 1-D CNN with batch norm (NCW data: ``(batch, 1, 40)``)."""
    nn = torch.nn
    return nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.MaxPool1d(2),
                         nn.Conv1d(16, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.MaxPool1d(2), nn.Flatten(), nn.Linear(32 * 10, 64), nn.ReLU(),
                         nn.Linear(64, classes))


def pretrain_in_torch(torch: Any, x: np.ndarray, y: np.ndarray, epochs: int) -> Any:
    """The CNN trained with Adam on ``(x, y)`` (``x`` ``(n, 40)``), returned in eval mode."""
    torch.manual_seed(0)
    net = torch_cnn(torch, int(y.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt = torch.from_numpy(x[:, None, :])
    yt = torch.from_numpy(y)
    order = np.random.default_rng(0)
    net.train()
    for _ in range(epochs):
        for batch in np.array_split(order.permutation(len(x)), max(1, len(x) // 64)):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[batch]), yt[batch])
            loss.backward()
            opt.step()
    return net.eval()


def accuracy(model: fl.Layer, params: Any, state: Any, x: np.ndarray, y: np.ndarray) -> float:
    return fl.evaluate(model, params, state, (x, y), metrics=["accuracy"])["accuracy"]


def main(quick: bool = False) -> Dict[str, float]:
    missing = [m for m in ("torch", "mnist1d") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"skipped: this example needs {' and '.join(missing)} "
              f"(pip install {' '.join(missing)})")
        return {}
    import torch
    from fundl.interop import torch as fit
    torch.set_num_threads(1)

    (x_train, y_train), (x_test, y_test) = fl.datasets.mnist1d()
    x_train, x_test = x_train[:, :, None], x_test[:, :, None]        # NWC: (n, 40, 1)
    source, target = y_train < 5, y_train >= 5
    if quick:
        source &= np.arange(len(y_train)) < 2000
        target &= np.arange(len(y_train)) < 2000
    results: Dict[str, float] = {}

    # 1. pretrain in PyTorch on digits 0-4
    net = pretrain_in_torch(torch, x_train[source, :, 0], y_train[source], 4 if quick else 12)

    # 2. port: the same architecture in fundl, the state_dict mapped layer by layer
    pretrained = fundl_cnn(5)
    params, state, _ = pretrained.init(fl.random.key(0), (40, 1))
    mapping = fit.sequential_mapping(pretrained, net, in_shape=(40, 1))
    params, state = fit.load_state_dict(params, state, net.state_dict(), mapping)
    test_source = y_test < 5
    with torch.no_grad():
        want = net(torch.from_numpy(x_test[test_source].transpose(0, 2, 1))).numpy()
    got = pretrained.apply(params, state, x_test[test_source])
    results["port max difference"] = float(np.abs(got - want).max())
    results["pretrained accuracy (0-4)"] = accuracy(pretrained, params, state,
                                                    x_test[test_source], y_test[test_source])
    print(f"1-2. pretrained in PyTorch on digits 0-4, ported to fundl: test accuracy "
          f"{results['pretrained accuracy (0-4)']:.3f}, max |fundl - torch| "
          f"{results['port max difference']:.1e}")

    # 3. surgery: the body without its head, frozen, under a new head for 5 classes
    body, body_params, body_state = surgery.first_layers(pretrained, params, state, -1)
    model = fl.serial(fl.eval_mode(body), fl.dense(5))
    opt = fl.optim.freeze(fl.optim.adam(), "eval_mode_0/*")
    k_head, k_fit = fl.random.split(fl.random.key(1))
    new_params, new_state, _ = model.init(k_head, (40, 1))
    random_body = fl.TrainState(new_params, new_state, opt.init(new_params), k_fit, 0)
    new_params, new_state = surgery.graft(new_params, new_state, "eval_mode_0", body_params,
                                          body_state)
    start = fl.TrainState(new_params, new_state, opt.init(new_params), k_fit, 0)

    # 4. train the head on digits 5-9 (labels 0-4 again), the pretrained and a random body
    test_target = y_test >= 5
    data = (x_train[target], y_train[target] - 5)
    val = (x_test[test_target], y_test[test_target] - 5)
    kw = dict(key=k_fit, epochs=4 if quick else 15, batch_size=64, lr=1e-2, val_data=val,
              metrics=["accuracy"], progress=False)
    ts, history = fl.fit(model, fl.losses.softmax_cross_entropy, opt, data, train_state=start,
                         **kw)
    base, base_history = fl.fit(model, fl.losses.softmax_cross_entropy, opt, data,
                                train_state=random_body, **kw)
    results["fine-tuned accuracy (5-9)"] = history["val_accuracy"][-1]
    results["random-body accuracy (5-9)"] = base_history["val_accuracy"][-1]
    frozen = (fl.tree.all_equal(ts.params["eval_mode_0"], body_params)
              and fl.tree.all_equal(ts.state["eval_mode_0"], body_state))
    results["body unchanged"] = float(frozen)
    print(f"3-4. a new head on the frozen body, digits 5-9: test accuracy "
          f"{results['fine-tuned accuracy (5-9)']:.3f} (the same head on a random body: "
          f"{results['random-body accuracy (5-9)']:.3f}); the body's params and batch-norm "
          f"statistics {'bit-identical' if frozen else 'CHANGED'}")

    # 5. the fine-tuned model with its architecture in one file, rebuilt with no code
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fine_tuned.npz")
        fl.io.save(path, ts, model=model)
        again, loaded = fl.io.load_model(path)
        same = np.array_equal(again.apply(loaded.params, loaded.state, val[0]),
                              model.apply(ts.params, ts.state, val[0]))
    results["reloaded equal"] = float(same)
    print(f"5. saved with its architecture and rebuilt by fl.io.load_model: "
          f"{repr(again)[:60]}...; the same outputs: {same}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="less data and fewer epochs")
    main(parser.parse_args().quick)
    sys.exit(0)
