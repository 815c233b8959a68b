"""Train the MNIST-1D CNN with keyed data augmentation through ``fit``, stop it in the middle of an
epoch, resume it from its checkpoint, and check the result is bit for bit the uninterrupted run.

The augmentation shifts every signal by a random -4..4 steps (circularly) and adds a little
noise, drawn from the key ``fit`` gives each epoch (``fl.data.map_batches``), so every epoch
sees other variants and a resumed run sees the same ones again.  ``ReduceLROnPlateau`` halves
the learning rate when the validation loss stalls, ``EarlyStopping`` keeps the best epoch by
validation accuracy, and the training accuracy is reported beside the validation accuracy.

Run: python examples/augment_mnist1d.py [--quick]   (needs `pip install mnist1d` once; the
full run trains up to 30 epochs of 4000 signals, twice; --quick 3 epochs of 1000)
"""

import argparse
import os
import sys
import tempfile

import numpy as np

# Python puts this folder first on sys.path, where examples/mnist1d.py would shadow the
# `mnist1d` package that builds the data: drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import fundl as fl  # noqa: E402
from fundl.fit import ReduceLROnPlateau  # noqa: E402


def shift_and_noise(key, batch):
    """Every signal of the batch shifted by its own random -4..4 steps, plus noise (one gather)."""
    x, y = batch
    k_shift, k_noise = fl.random.split(key)
    s = fl.random.randint(k_shift, (x.shape[0],), -4, 5)
    cols = (np.arange(x.shape[1])[None, :] - s[:, None]) % x.shape[1]
    noisy = np.take_along_axis(x, cols, axis=1)
    noisy += 0.05 * fl.random.normal(k_noise, x.shape, x.dtype)
    return noisy, y


def cnn():
    return fl.serial(
        fl.reshape((40, 1)),
        fl.conv1d(25, 5, stride=2, padding=1), fl.relu(),
        fl.conv1d(25, 3, stride=2, padding=1), fl.relu(),
        fl.conv1d(25, 3, stride=2, padding=1), fl.relu(),
        fl.flatten(), fl.dense(10))


def run(epochs=30, n_train=4000, batch_size=100, verbose=True, workdir=None):
    (x_train, y_train), (x_test, y_test) = fl.datasets.mnist1d()
    x_train, y_train = x_train[:n_train], y_train[:n_train]
    source = fl.data.map_batches(fl.data.from_arrays((x_train, y_train), batch_size),
                                 shift_and_noise)
    kw = dict(key=fl.random.key(0), lr=1e-2, val_data=(x_test, y_test), metrics=["accuracy"],
              progress="auto" if verbose else False)
    callbacks = lambda: [ReduceLROnPlateau("val_loss", factor=0.5, patience=3),  # noqa: E731
                         fl.EarlyStopping("val_accuracy", patience=8)]
    loss, opt = fl.losses.softmax_cross_entropy, fl.optim.adam()

    ts, history = fl.fit(cnn(), loss, opt, source, epochs=epochs, callbacks=callbacks(), **kw)

    # the same run, interrupted in the middle of its second epoch and resumed from the file
    workdir = workdir or tempfile.mkdtemp()
    ckpt = os.path.join(workdir, "augment.npz")
    per_epoch = len(source)
    fl.fit(cnn(), loss, opt, source, steps=per_epoch + per_epoch // 2, callbacks=callbacks(),
           checkpoint_path=ckpt, checkpoint_every=5, **kw)
    resumed, _ = fl.fit(cnn(), loss, opt, source, epochs=epochs, callbacks=callbacks(),
                        checkpoint_path=ckpt, train_state=fl.io.load(ckpt), **kw)
    identical = fl.tree.all_equal(ts, resumed)

    scores = fl.evaluate(cnn(), ts.params, ts.state, (x_test, y_test), ["accuracy"],
                         loss=loss)
    if verbose:
        for e in range(len(history["epoch"])):
            print(f"epoch {history['epoch'][e]:3d}  lr {history['lr'][e]:.2g}  "
                  f"train loss {history['loss'][e]:.3f} accuracy {history['accuracy'][e]:.3f}  "
                  f"val loss {history['val_loss'][e]:.3f} accuracy "
                  f"{history['val_accuracy'][e]:.3f}")
        print(f"best epoch (by val accuracy) at step {ts.step}: test accuracy "
              f"{scores['accuracy']:.3f}, test loss {scores['loss']:.3f}")
        print(f"interrupted at step {per_epoch + per_epoch // 2} and resumed: bit-identical "
              f"{identical}")
    return {"history": history, "scores": scores, "identical": identical, "step": ts.step}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs on 1000 examples")
    args = parser.parse_args()
    fl.perf.keep_freed_memory()
    if args.quick:
        run(epochs=3, n_train=1000)
    else:
        run()


if __name__ == "__main__":
    main()
