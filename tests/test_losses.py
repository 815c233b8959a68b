import numpy as np
import pytest

import fundl as fl
from fundl.losses import LossError, mse, softmax_cross_entropy
from fundl.testing import read_only


@pytest.mark.parametrize("shape", [(1, 1), (4, 2), (3, 5, 2)])
def test_mse_gradient_check(shape):
    target = fl.random.normal(fl.random.key(1), shape, np.float64)
    result = fl.check_vjp(mse, shape[1:], target=target, batch=shape[0])
    assert result.max_error < 1e-7


def test_mse_exact_value_and_gradient_includes_two_over_n():
    pred = read_only(np.array([[1.0, 2.0], [3.0, 5.0]]))
    target = read_only(np.array([[0.0, 2.0], [1.0, 1.0]]))
    value, grad = mse.value_and_grad(pred, target)
    assert value == (1 + 0 + 4 + 16) / 4
    np.testing.assert_array_equal(grad, 2 * np.array([[1.0, 0.0], [2.0, 4.0]]) / 4)
    assert mse(pred, target) == value


@pytest.mark.parametrize("shape", [(1, 2), (4, 3), (5, 10), (2, 3, 4)])
def test_softmax_cross_entropy_gradient_check_labels_and_onehot(shape):
    labels = fl.random.randint(fl.random.key(2), shape[:-1], 0, shape[-1])
    onehot = np.eye(shape[-1])[labels]
    r1 = fl.check_vjp(softmax_cross_entropy, shape[1:], target=labels, batch=shape[0])
    r2 = fl.check_vjp(softmax_cross_entropy, shape[1:], target=onehot, batch=shape[0])
    assert max(r1.max_error, r2.max_error) < 1e-6


def test_softmax_cross_entropy_soft_targets_gradient():
    probs = fl.random.uniform(fl.random.key(3), (4, 5), np.float64)
    probs = probs / probs.sum(-1, keepdims=True)
    assert fl.check_vjp(softmax_cross_entropy, (5,), target=probs, batch=4).max_error < 1e-6


def test_softmax_cross_entropy_exact_values():
    logits = read_only(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]))
    labels = read_only(np.array([0, 1]))
    value, grad = softmax_cross_entropy.value_and_grad(logits, labels)
    # p = [.5, .5] and [.75, .25]: loss = (ln 2 + ln 4) / 2
    np.testing.assert_allclose(value, (np.log(2) + np.log(4)) / 2, rtol=1e-15)
    np.testing.assert_allclose(grad, np.array([[-0.5, 0.5], [0.75, -0.75]]) / 2, rtol=1e-15)
    v2, g2 = softmax_cross_entropy.value_and_grad(logits, np.eye(2)[labels])
    np.testing.assert_allclose(v2, value, rtol=1e-15)
    np.testing.assert_allclose(g2, grad, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype)
    value, grad = softmax_cross_entropy.value_and_grad(logits, np.array([1, 2]))
    assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_allclose(value, 2e4 / 2, rtol=1e-6)
    np.testing.assert_allclose(grad, np.array([[1, -1, 0], [0, 0, 0]]) / 2, atol=1e-6)
    assert value.dtype == dtype and grad.dtype == dtype


def test_losses_preserve_float32():
    pred = fl.random.normal(fl.random.key(0), (4, 3))
    for loss, target in [(mse, np.zeros((4, 3))), (softmax_cross_entropy, np.array([0, 1, 2, 0]))]:
        value, grad = loss.value_and_grad(pred, target)
        assert value.dtype == np.float32 and grad.dtype == np.float32


def test_loss_errors_are_clear():
    with pytest.raises(LossError, match=r"mse: prediction shape \(2, 3\) and target shape \(2, 2\)"):
        mse(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(LossError, match=r"labels must have shape \(2,\)"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([[0], [1]]))
    with pytest.raises(LossError, match=r"labels must lie in \[0, 3\)"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(LossError, match="floating-point prediction"):
        mse(np.zeros((2, 3), np.int64), np.zeros((2, 3)))


def test_package_exports_and_one_loss_type():
    import fundl.losses as L
    assert L.Loss is fl.Loss and issubclass(L.LossError, ValueError)
    for name in ["mse", "l1", "softmax_cross_entropy", "nll", "kl_divergence",
                 "sigmoid_binary_cross_entropy"]:
        assert isinstance(getattr(L, name), fl.Loss) and getattr(L, name).name == name
    for made in [L.huber(), L.cross_entropy(label_smoothing=0.1),
                 L.binary_cross_entropy_with_logits(pos_weight=2.0)]:
        assert isinstance(made, fl.Loss)
    assert set(L.__all__) >= {"Loss", "LossError", "huber", "cross_entropy",
                              "binary_cross_entropy_with_logits"}


def _every_loss_and_input():
    L = fl.losses
    x = fl.random.normal(fl.random.key(0), (4, 3), np.float64)
    labels = np.array([0, 2, -100, 1])
    probs = np.full((4, 3), 1 / 3)
    yield L.mse, x, probs
    yield L.l1, x, probs
    yield L.huber(0.5), x, probs
    yield L.softmax_cross_entropy, x, labels.clip(0)
    yield L.softmax_cross_entropy, x, probs
    yield L.cross_entropy(label_smoothing=0.1, weights=[1, 2, 3], ignore_index=-100), x, labels
    yield L.cross_entropy(label_smoothing=0.1, weights=[1, 2, 3]), x, probs
    yield L.nll, x, labels.clip(0)
    yield L.kl_divergence, x, probs
    yield L.sigmoid_binary_cross_entropy, x, probs
    yield L.binary_cross_entropy_with_logits(pos_weight=[1, 2, 3]), x, probs


def test_every_loss_is_pure_and_value_agrees_with_value_and_grad():
    for loss, x, t in _every_loss_and_input():
        xr, tr = read_only(x), read_only(t)
        value, grad = loss.value_and_grad(xr, tr)  # would raise on a write
        np.testing.assert_array_equal(xr, x)
        np.testing.assert_array_equal(tr, t)
        np.testing.assert_allclose(loss(xr, tr), value, rtol=1e-14, err_msg=loss.name)
        assert grad.shape == x.shape and grad is not xr


def test_every_loss_preserves_float32_and_rejects_an_empty_batch():
    for loss, x, t in _every_loss_and_input():
        value, grad = loss.value_and_grad(x.astype(np.float32), t)
        assert value.dtype == np.float32 and value.shape == () and grad.dtype == np.float32
        with pytest.raises(LossError, match=rf"^{loss.name}: the batch is empty"):
            loss.value_and_grad(x[:0], t[:0])


# --- the ratio protocol: total_weight ---------------------------------------------------

def _ratio_cases():
    """(name, loss, pred, target) in float64, each with parts of unequal weight."""
    rng = np.random.default_rng(7)
    z = rng.normal(size=(9, 4))
    labels = np.array([0, 3, -1, 1, -1, -1, 2, 2, 0])         # -1: ignored
    probs = rng.uniform(size=(9, 4))
    probs /= probs.sum(-1, keepdims=True)
    y = rng.normal(size=(9, 3))
    bits = (rng.uniform(size=(9, 3)) > 0.5).astype(np.float64)
    plain = np.where(labels < 0, 1, labels)
    return [
        ("mse", fl.losses.mse, y * 0.5, y),
        ("l1", fl.losses.l1, y * 0.5, y),
        ("huber", fl.losses.huber(0.3), y * 0.5, y),
        ("sce labels", fl.losses.softmax_cross_entropy, z, plain),
        ("sce (N, T, C)", fl.losses.softmax_cross_entropy, z.reshape(9, 1, 4), plain[:, None]),
        ("ce ignore_index", fl.losses.cross_entropy(ignore_index=-1), z, labels),
        ("ce weights", fl.losses.cross_entropy(weights=[1.0, 0.2, 3.0, 0.5]), z, plain),
        ("ce all options", fl.losses.cross_entropy(weights=[1.0, 0.2, 3.0, 0.5],
                                                   ignore_index=-1, label_smoothing=0.2),
         z, labels),
        ("ce soft targets", fl.losses.cross_entropy(label_smoothing=0.1), z, probs),
        ("nll", fl.losses.nll, z - np.log(np.exp(z).sum(-1, keepdims=True)), plain),
        ("kl", fl.losses.kl_divergence, z - np.log(np.exp(z).sum(-1, keepdims=True)), probs),
        ("bce", fl.losses.sigmoid_binary_cross_entropy, y, bits),
        ("bce pos_weight", fl.losses.binary_cross_entropy_with_logits(pos_weight=[2.0, 1, 0.5]),
         y, bits),
    ]


@pytest.mark.parametrize("case", _ratio_cases(), ids=lambda c: c[0])
def test_loss_over_parts_is_the_ratio_of_summed_numerators_and_weights(case):
    """Split one batch into uneven parts (one of them all-ignored for ignore_index): the
    weighted sums give exactly the whole batch's value, and the parts' gradients scaled by
    W_part / W the whole batch's gradient."""
    _, loss, pred, target = case
    value, grad = loss.value_and_grad(pred, target)
    whole = loss.weight_of(pred, target)
    parts = [slice(0, 2), slice(2, 3), slice(3, 9)]            # row 2 alone: ignored by -1
    numer, denom, grads = 0.0, 0.0, []
    for part in parts:
        v, g = loss.value_and_grad(pred[part], target[part])
        w = loss.weight_of(pred[part], target[part])
        numer += float(v) * w
        denom += w
        grads.append(g * (w / whole) if whole else g)
    assert denom == pytest.approx(whole, rel=1e-15)
    assert numer / denom == pytest.approx(float(value), rel=1e-12)
    np.testing.assert_allclose(np.concatenate(grads), grad, rtol=1e-12, atol=1e-15)


def test_total_weight_values():
    z = np.zeros((4, 3))
    assert fl.losses.mse.weight_of(np.zeros((4, 3)), np.zeros((4, 3))) == 12.0
    assert fl.losses.softmax_cross_entropy.weight_of(np.zeros((4, 2, 3)), np.zeros((4, 2), int)) == 8.0
    ce = fl.losses.cross_entropy(weights=[1.0, 0.5, 2.0], ignore_index=-1)
    assert ce.weight_of(z, np.array([0, 1, -1, 2])) == 3.5
    assert ce.weight_of(z, np.array([-1, -1, -1, -1])) == 0.0
    custom = fl.losses.Loss(fl.losses.mse.value, fl.losses.mse.value_and_grad, "mine")
    assert custom.weight_of(np.zeros((5, 2)), np.zeros((5, 2))) == 5.0   # examples by default
    with pytest.raises(LossError, match="labels must lie"):
        ce.weight_of(z, np.array([0, 7, 1, 1]))
