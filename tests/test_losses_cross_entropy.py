import numpy as np
import pytest

import fundl as fl
from fundl.losses import LossError, cross_entropy, softmax_cross_entropy
from fundl.testing import read_only

LN2, LN3 = np.log(2.0), np.log(3.0)
LOGITS = np.array([[0.0, 0.0], [LN3, 0.0]])  # softmax [.5, .5] and [.75, .25]

OPTIONS = [
    dict(label_smoothing=0.1),
    dict(weights=[0.5, 2.0, 1.0, 3.0, 0.0, 1.5, 1.0, 0.25, 4.0, 1.0]),
    dict(ignore_index=-100),
    dict(label_smoothing=0.3, weights=[0.5, 2.0, 1.0, 3.0, 0.0, 1.5, 1.0, 0.25, 4.0, 1.0],
         ignore_index=-100),
    dict(label_smoothing=1.0, ignore_index=1),
]


def _loss(options, classes):
    if "weights" in options:
        options = dict(options, weights=options["weights"][:classes])
    return cross_entropy(**options)


def _labels(shape, ignore_index):
    labels = fl.random.randint(fl.random.key(2), shape[:-1], 0, shape[-1])
    if ignore_index is not None:
        drop = fl.random.uniform(fl.random.key(3), shape[:-1]) < 0.3
        labels = np.where(drop, ignore_index, labels)
    return labels


@pytest.mark.parametrize("shape", [(1, 2), (4, 3), (5, 10), (2, 3, 4), (3, 2, 2, 5)])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o))
def test_gradient_check_labels(shape, options):
    loss = _loss(options, shape[-1])
    labels = _labels(shape, options.get("ignore_index"))
    result = fl.check_vjp(loss, shape[1:], target=labels, batch=shape[0])
    assert result.max_error < 1e-6


@pytest.mark.parametrize("shape", [(1, 2), (4, 3), (5, 10), (2, 3, 4)])
@pytest.mark.parametrize("options", OPTIONS[:2] + [dict(OPTIONS[3], ignore_index=-1)],
                         ids=["smooth", "weights", "both"])
def test_gradient_check_probability_targets(shape, options):
    loss = _loss(options, shape[-1])
    probs = fl.random.uniform(fl.random.key(4), shape, np.float64)
    probs /= probs.sum(-1, keepdims=True)
    assert fl.check_vjp(loss, shape[1:], target=probs, batch=shape[0]).max_error < 1e-6


def test_no_options_is_the_plain_loss():
    assert cross_entropy() is softmax_cross_entropy
    assert cross_entropy(label_smoothing=0.0, weights=None, ignore_index=None) is softmax_cross_entropy
    assert isinstance(cross_entropy(label_smoothing=0.1), fl.Loss)


def test_label_smoothing_exact_value():
    value, grad = cross_entropy(label_smoothing=0.2).value_and_grad(
        read_only(LOGITS[1:]), read_only(np.array([1])))
    # target [0.1, 0.9]
    np.testing.assert_allclose(value, -(0.1 * np.log(0.75) + 0.9 * np.log(0.25)), rtol=1e-14)
    np.testing.assert_allclose(grad, [[0.65, -0.65]], rtol=1e-14)


def test_weights_are_a_weighted_mean():
    value, grad = cross_entropy(weights=[1.0, 3.0]).value_and_grad(
        read_only(LOGITS), read_only(np.array([0, 1])))
    np.testing.assert_allclose(value, (1 * LN2 + 3 * 2 * LN2) / 4, rtol=1e-14)
    np.testing.assert_allclose(grad, np.array([[-0.5, 0.5], [2.25, -2.25]]) / 4, rtol=1e-14)


def test_weights_with_smoothing_share_the_divisor():
    value, grad = cross_entropy(label_smoothing=0.5, weights=[1.0, 3.0]).value_and_grad(
        LOGITS, np.array([0, 1]))
    # a = [[.75, .75], [.25, 2.25]], divided by w_0 + w_1 = 4
    expect = (1.5 * LN2 - 0.25 * np.log(0.75) - 2.25 * np.log(0.25)) / 4
    np.testing.assert_allclose(value, expect, rtol=1e-14)
    np.testing.assert_allclose(grad, np.array([[0.0, 0.0], [1.625, -1.625]]) / 4, atol=1e-16)


def test_ignore_index_drops_rows_from_sum_and_count():
    value, grad = cross_entropy(ignore_index=-100).value_and_grad(LOGITS, np.array([0, -100]))
    np.testing.assert_allclose(value, LN2, rtol=1e-15)
    np.testing.assert_allclose(grad, [[-0.5, 0.5], [0.0, 0.0]], rtol=1e-15)
    # a non-negative ignore_index is a class id that stops counting
    v2, g2 = cross_entropy(ignore_index=1).value_and_grad(LOGITS, np.array([0, 1]))
    assert v2 == value
    np.testing.assert_array_equal(g2, grad)


@pytest.mark.parametrize("options", [dict(ignore_index=-100),
                                     dict(ignore_index=-1, label_smoothing=0.2, weights=[1, 2, 3])])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_ignored_batch_gives_zero_not_nan(options, dtype):
    loss = cross_entropy(**options)
    labels = np.full((4,), options["ignore_index"])
    value, grad = loss.value_and_grad(np.ones((4, 3), dtype), labels)
    assert value == 0 and value.dtype == dtype
    assert grad.dtype == dtype and not grad.any()
    assert loss(np.ones((4, 3), dtype), labels) == 0


def test_zero_weight_labels_only_give_zero():
    value, grad = cross_entropy(weights=[0.0, 1.0]).value_and_grad(LOGITS, np.array([0, 0]))
    assert value == 0 and not grad.any()


def test_options_match_plain_loss_when_neutral():
    x = fl.random.normal(fl.random.key(5), (6, 4), np.float64)
    labels = np.array([0, 1, 2, 3, 2, 1])
    plain = softmax_cross_entropy.value_and_grad(x, labels)
    for loss in [cross_entropy(weights=np.ones(4)), cross_entropy(ignore_index=-100),
                 cross_entropy(weights=[2.0] * 4)]:
        value, grad = loss.value_and_grad(x, labels)
        np.testing.assert_allclose(value, plain[0], rtol=1e-14)
        np.testing.assert_allclose(grad, plain[1], rtol=1e-13, atol=1e-17)
    # and probability targets with uniform weights
    onehot = np.eye(4)[labels]
    value, grad = cross_entropy(weights=np.ones(4)).value_and_grad(x, onehot)
    np.testing.assert_allclose(value, plain[0], rtol=1e-14)
    np.testing.assert_allclose(grad, plain[1], rtol=1e-13, atol=1e-17)


def test_probability_targets_smoothing_and_weights_exact():
    t = np.array([[0.25, 0.75]])
    value, grad = cross_entropy(label_smoothing=0.5, weights=[2.0, 1.0]).value_and_grad(
        LOGITS[1:], t)
    a = np.array([2.0 * (0.125 + 0.25), 1.0 * (0.375 + 0.25)])  # w (t (1 - eps) + eps / C)
    np.testing.assert_allclose(value, -(a * np.log([0.75, 0.25])).sum(), rtol=1e-14)
    np.testing.assert_allclose(grad, [np.array([0.75, 0.25]) * a.sum() - a], rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS[:4], ids=lambda o: "-".join(o))
def test_stable_for_huge_logits_and_dtype_preserved(options, dtype):
    loss = _loss(options, 3)
    logits = read_only(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [3e4, -3e4, 0]], dtype))
    value, grad = loss.value_and_grad(logits, read_only(np.array([1, 2, 0])))
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert value.dtype == dtype and grad.dtype == dtype and grad.shape == (3, 3)
    assert loss(logits, np.array([1, 2, 0])).dtype == dtype


@pytest.mark.parametrize("options", [dict(weights=[1.0, 2.0, 3.0]), dict(ignore_index=-100)])
def test_logit_gap_beyond_float32_range_stays_finite(options):
    logits = np.array([[3e38, -3e38, 0.0], [0.0, 1.0, 2.0]], np.float32)
    loss = cross_entropy(**options)
    value, grad = loss.value_and_grad(logits, np.array([0, 2]))
    with np.errstate(over="ignore"):
        plain = softmax_cross_entropy.value_and_grad(logits, np.array([0, 2]))
    assert np.isfinite(value) and np.isfinite(grad).all()
    if "ignore_index" in options:
        np.testing.assert_allclose(value, plain[0], rtol=1e-6)
        np.testing.assert_allclose(grad, plain[1], rtol=1e-6)


def test_caller_changing_weights_later_has_no_effect():
    w = np.array([1.0, 3.0])
    loss = cross_entropy(weights=w)
    before = loss(LOGITS, np.array([0, 1]))
    w[:] = 0
    assert loss(LOGITS, np.array([0, 1])) == before


@pytest.mark.parametrize("loss", [softmax_cross_entropy, cross_entropy(label_smoothing=0.1)])
def test_empty_batch_and_no_classes_raise(loss):
    with pytest.raises(LossError, match=rf"{loss.name}: the batch is empty \(prediction shape \(0, 3\)\)"):
        loss.value_and_grad(np.zeros((0, 3)), np.zeros((0,), np.int64))
    with pytest.raises(LossError, match=r"the batch is empty \(prediction shape \(2, 0, 3\)\)"):
        loss(np.zeros((2, 0, 3)), np.zeros((2, 0), np.int64))
    with pytest.raises(LossError, match=r"at least one class, got shape \(2, 0\)"):
        loss(np.zeros((2, 0)), np.zeros((2,), np.int64))
    with pytest.raises(LossError, match="class \\(last\\) axis, got a scalar"):
        loss(np.zeros(()), np.zeros((), np.int64))


@pytest.mark.parametrize("loss", [softmax_cross_entropy, cross_entropy(weights=[1, 1, 1])])
@pytest.mark.parametrize("bad", [np.nan, -0.5])
def test_nan_or_negative_probability_targets_raise(loss, bad):
    t = np.array([[0.5, 0.5, 0.0], [0.0, bad, 1.0]])
    with pytest.raises(LossError, match=rf"{loss.name}: probability targets must be >= 0 and "
                                        rf"not NaN, got a minimum of {bad}"):
        loss.value_and_grad(np.zeros((2, 3)), t)
    with pytest.raises(LossError, match="probability targets must be >= 0"):
        loss(np.zeros((2, 3)), t)


def test_option_errors_are_clear():
    x = np.zeros((2, 3))
    with pytest.raises(LossError, match=r"cross_entropy: labels must lie in \[0, 3\) or equal "
                                        r"ignore_index=-100, got other values in \[-1, 0\]"):
        cross_entropy(ignore_index=-100)(x, np.array([-1, 0]))
    with pytest.raises(LossError,
                       match=r"cross_entropy: labels must lie in \[0, 3\), got values in \[0, 3\]"):
        cross_entropy(label_smoothing=0.1).value_and_grad(x, np.array([0, 3]))
    with pytest.raises(LossError, match=r"weights must have shape \(3,\), one per class .* got \(2,\)"):
        cross_entropy(weights=[1.0, 2.0])(x, np.array([0, 1]))
    with pytest.raises(LossError, match=r"weights must be a non-empty 1-D array .* got shape \(1, 3\)"):
        cross_entropy(weights=[[1.0, 2.0, 3.0]])
    with pytest.raises(LossError, match="weights must be finite and >= 0"):
        cross_entropy(weights=[1.0, -2.0, 3.0])
    with pytest.raises(LossError, match=r"label_smoothing must lie in \[0, 1\], got 1.5"):
        cross_entropy(label_smoothing=1.5)
    with pytest.raises(LossError, match="ignore_index must be an int or None, got 0.5"):
        cross_entropy(ignore_index=0.5)
    with pytest.raises(LossError, match=r"ignore_index=0 applies to integer labels only"):
        cross_entropy(ignore_index=0)(x, np.ones((2, 3)) / 3)
    with pytest.raises(LossError, match=r"integer labels must have shape \(2,\) .* got \(2, 1\)"):
        cross_entropy(ignore_index=-1)(x, np.zeros((2, 1), np.int64))
    with pytest.raises(LossError, match=r"one-hot \(or probability\) targets must have the "
                                        r"logits' shape \(2, 3\), got \(2, 2\)"):
        cross_entropy(label_smoothing=0.1)(x, np.zeros((2, 2)))


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o))
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_float16_logits_are_widened_once_per_value_and_grad(monkeypatch, options, kind):
    """value_and_grad widens float16 logits to float32 once; total_weight (fit calls it every
    step) needs only the labels and never widens them."""
    import sys
    module = sys.modules["fundl.losses.cross_entropy"]   # fundl.losses.cross_entropy is the factory
    calls = []

    def working(pred):
        calls.append(pred.dtype)
        return pred.astype(np.float32) if pred.dtype == np.float16 else pred
    monkeypatch.setattr(module, "working", working)
    loss = _loss(options, 10)
    logits = fl.random.normal(fl.random.key(1), (6, 10), np.float16)
    if kind == "labels":
        target = _labels((6, 10), options.get("ignore_index"))
    else:
        if options.get("ignore_index", -1) >= 0:
            pytest.skip("a non-negative ignore_index refuses probability targets")
        target = np.full((6, 10), 0.1)
    loss.value_and_grad(logits, target)
    assert calls == [np.float16]
    loss.total_weight(logits, target)
    assert calls == [np.float16]
