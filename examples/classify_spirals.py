"""Classify three interleaved spirals with a small MLP: fit, evaluate, print the accuracy.

Run: python examples/classify_spirals.py   (a few seconds; numpy only)
"""

import time

import fundl as fl
from fundl import random
from fundl.data import train_test_split
from fundl.datasets import spirals
from fundl.metrics import confusion_matrix
from fundl.summary import summary
from fundl import evaluate, fit


def main() -> float:
    k_data, k_split, k_fit = random.split(random.key(0), 3)
    x, y = spirals(k_data, n_per_class=400, classes=3, noise=0.2)
    (x_train, y_train), (x_test, y_test) = train_test_split(k_split, (x, y), test_fraction=0.25)

    model = fl.serial(fl.dense(64), fl.relu(), fl.dense(64), fl.relu(), fl.dense(3))
    print(summary(model, (2,)))

    start = time.perf_counter()
    ts, history = fit(model, fl.losses.softmax_cross_entropy, fl.optim.sgd(), (x_train, y_train),
                      key=k_fit, epochs=60, batch_size=32, lr=lambda step: 0.3 if step < 1200 else 0.1,
                      val_data=(x_test, y_test), metrics=["accuracy"], progress="auto")
    seconds = time.perf_counter() - start
    for e in (0, 9, 29, len(history["epoch"]) - 1):
        print(f"epoch {history['epoch'][e]:3d}  train loss {history['loss'][e]:.4f}  "
              f"val loss {history['val_loss'][e]:.4f}  val accuracy {history['val_accuracy'][e]:.3f}")

    scores = evaluate(model, ts.params, ts.state, (x_test, y_test),
                      metrics=["accuracy", fl.losses.softmax_cross_entropy])
    logits = model.apply(ts.params, ts.state, x_test)
    print(f"trained {ts.step} steps in {seconds:.1f} s")
    print("confusion matrix (rows: true class, columns: predicted):")
    print(confusion_matrix(y_test, logits, 3))
    print(f"test accuracy: {scores['accuracy']:.3f}  test loss: {scores['softmax_cross_entropy']:.4f}")
    return scores["accuracy"]


if __name__ == "__main__":
    main()
