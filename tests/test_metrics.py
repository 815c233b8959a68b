"""fundl.metrics: exact values on hand-made inputs."""

import numpy as np
import pytest

from fundl import losses, metrics
from fundl.metrics import (Mean, accuracy, confusion_matrix, cross_entropy, mae, mse,
                           top_k_accuracy, weighted_mean)

LOGITS = np.array([[0.1, 2.0, 0.3],
                   [1.0, 0.0, -1.0],
                   [0.0, 0.5, 0.4],
                   [0.2, 0.2, 0.2]], dtype=np.float32)
LABELS = np.array([1, 2, 2, 1])


def test_accuracy():
    # argmax: 1, 0, 1, 0 (tie -> first) vs labels 1, 2, 2, 1
    assert accuracy(LOGITS, LABELS) == 0.25
    onehot = np.eye(3, dtype=np.float32)[LABELS]
    assert accuracy(LOGITS, onehot) == 0.25
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        accuracy(LOGITS, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer labels of shape"):
        accuracy(LOGITS, np.array([0, 1]))


def test_top_k_accuracy():
    # label ranks (ties by index): ex0 label1 rank0; ex1 label2 rank2; ex2 label2 rank1;
    # ex3 label1 (all tie) rank1
    assert top_k_accuracy(LOGITS, LABELS, 1) == accuracy(LOGITS, LABELS) == 0.25
    assert top_k_accuracy(LOGITS, LABELS, 2) == 0.75
    assert top_k_accuracy(LOGITS, LABELS, 3) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy(LOGITS, LABELS, 4)


def test_confusion_matrix():
    cm = confusion_matrix(np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 0, 2]), 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [1, 0, 2]])
    assert cm.dtype == np.int64
    cm2 = confusion_matrix(LABELS, LOGITS, 3)  # logits are argmax'ed
    np.testing.assert_array_equal(cm2, [[0, 0, 0], [1, 1, 0], [1, 1, 0]])
    with pytest.raises(ValueError, match="preds must lie"):
        confusion_matrix(np.array([0]), np.array([5]), 3)


def test_regression_metrics_and_cross_entropy():
    p = np.array([[1.0, 2.0], [3.0, 5.0]], dtype=np.float32)
    t = np.array([[1.0, 0.0], [4.0, 5.0]], dtype=np.float32)
    assert mse(p, t) == pytest.approx(5.0 / 4)
    assert mae(p, t) == pytest.approx(3.0 / 4)
    # hand-computed: -log softmax of the label's logit, averaged
    z = LOGITS.astype(np.float64)
    expect = np.mean([np.log(np.exp(r).sum()) - r[c] for r, c in zip(z, LABELS)])
    assert cross_entropy(LOGITS, LABELS) == pytest.approx(expect, rel=1e-12)
    assert cross_entropy(LOGITS, LABELS) == pytest.approx(
        float(losses.softmax_cross_entropy(LOGITS, LABELS)), rel=1e-6)


def test_means():
    m = Mean().add(1.0, 3).add(5.0, 1)
    assert m.value == 2.0 and m.count == 4
    assert np.isnan(Mean().value)
    assert weighted_mean([1.0, 5.0], [3, 1]) == 2.0


def test_resolve_names_losses_and_functions():
    def my_metric(p, t):
        return 1.0
    fns = metrics.resolve(["accuracy", "top_2_accuracy", losses.mse, my_metric])
    assert list(fns) == ["accuracy", "top_2_accuracy", "mse", "my_metric"]
    assert fns["top_2_accuracy"](LOGITS, LABELS) == 0.75
    assert list(metrics.resolve({"acc": "accuracy"})) == ["acc"]
    assert list(metrics.resolve(losses.mse)) == ["mse"]
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.get("f2")


def test_one_logit_is_a_binary_classifier_and_a_regression_is_refused():
    logits = np.array([[2.0], [-1.0], [0.5], [-0.2]], np.float32)
    assert accuracy(logits, np.array([1, 0, 0, 0])) == 0.75              # labels (n,)
    assert accuracy(logits, np.array([[1.0], [0.0], [1.0], [1.0]])) == 0.75  # float (n, 1)
    assert accuracy(logits[:, 0], np.array([True, False, True, False])) == 1.0
    with pytest.raises(ValueError, match=r"targets are 0 or 1.*one-output regression\? use 'mse'"):
        accuracy(logits, np.array([0.3, 1.2, 5.0, 0.0]))
    # elementwise, with a threshold for probabilities
    probs = np.array([[0.9, 0.2], [0.4, 0.6]])
    assert metrics.binary_accuracy(0.5)(probs, np.array([[1, 1], [0, 1]])) == 0.75
