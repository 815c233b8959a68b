"""One Mask: every ``mask=`` of fundl.optim takes a predicate, a glob or list of globs, or a
params-shaped tree of bools, reads them alike, and refuses a predicate that returns a non-bool."""

import numpy as np
import pytest

import fundl as fl
from fundl import optim, tree
from fundl.optim import MaskError

MODEL = fl.serial(fl.dense(4), fl.relu(), fl.dense(3))   # params dense_0/{w,b}, dense_2/{w,b}
PARAMS = MODEL.init(fl.random.key(0), (5,))[0]
GRADS = tree.map(lambda p: np.linspace(-1.0, 1.0, p.size, dtype=p.dtype).reshape(p.shape), PARAMS)
LR = 0.05

# The same selection, dense_0's two leaves, in every form a mask may take.
FORMS = {
    "predicate": lambda path: path.startswith("dense_0/"),
    "numpy_bool_predicate": lambda path: np.bool_(path.startswith("dense_0/")),
    "glob": "dense_0/*",
    "globs": ["dense_0/w", "dense_0/b"],
    "glob_tuple": ("dense_0/w", "*_0/b"),
    "tree": {"dense_0": {"w": True, "b": True}, "relu_1": {},
             "dense_2": {"w": False, "b": np.bool_(False)}},
}
SELECTED = {"dense_0/w", "dense_0/b"}


def _adam_u(params, grads, **kw):
    t = optim.scale_by_adam(**kw)
    return t.update(params, grads, t.init(params))[0]


def _lion_u(params, grads):
    t = optim.scale_by_lion()
    return t.update(params, grads, t.init(params))[0]


def _decay(u, p, rate):
    """The reference: ``u + rate * p`` in u's dtype."""
    out = np.multiply(p, rate, dtype=u.dtype)
    out += u
    return out


def _per_path(t):
    return dict(tree.flatten_with_paths(t))


# ---------------------------------------------------------------- each taker, each form: the reference

def _run(name, mask):
    """(what the taker gives, what it must give) as {path: array} for ``mask``."""
    p, g = PARAMS, GRADS
    if name == "add_weight_decay":
        t = optim.add_weight_decay(0.3, mask)
        got = t.update(p, g, t.init(p))[0]
        want = {k: _decay(gk, pk, 0.3) if k in SELECTED else gk
                for (k, pk), gk in zip(_per_path(p).items(), _per_path(g).values())}
        return _per_path(got), want
    if name in ("adamw", "lion"):
        opt = (optim.adamw(weight_decay=0.3, mask=mask) if name == "adamw"
               else optim.lion(weight_decay=0.3, mask=mask))
        got = opt.update(p, g, opt.init(p), LR)[0]
        u = _per_path(_adam_u(p, g) if name == "adamw" else _lion_u(p, g))
        want = {k: pk - LR * (_decay(u[k], pk, 0.3) if k in SELECTED else u[k])
                for k, pk in _per_path(p).items()}
        return _per_path(got), want
    if name == "masked_optimizer":
        opt = optim.masked(optim.sgd(), mask)
        got = opt.update(p, g, opt.init(p), LR)[0]
        want = {k: pk - LR * _per_path(g)[k] if k in SELECTED else pk for k, pk in _per_path(p).items()}
        return _per_path(got), want
    if name == "freeze_optimizer":
        opt = optim.freeze(optim.sgd(), mask)
        got = opt.update(p, g, opt.init(p), LR)[0]
        want = {k: pk if k in SELECTED else pk - LR * _per_path(g)[k] for k, pk in _per_path(p).items()}
        return _per_path(got), want
    if name == "masked_transform":
        t = optim.masked(optim.scale(2.0), mask)
        got = t.update(p, g, t.init(p))[0]
        want = {k: 2.0 * gk if k in SELECTED else gk for k, gk in _per_path(g).items()}
        return _per_path(got), want
    if name == "freeze_transform":
        t = optim.freeze(optim.scale(2.0), mask)
        got = t.update(p, g, t.init(p))[0]
        want = {k: 0.0 * gk if k in SELECTED else 2.0 * gk for k, gk in _per_path(g).items()}
        return _per_path(got), want
    raise AssertionError(name)


TAKERS = ["add_weight_decay", "adamw", "lion", "masked_optimizer", "freeze_optimizer",
          "masked_transform", "freeze_transform"]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("taker", TAKERS)
def test_every_mask_form_selects_the_same_leaves_in_every_taker(taker, form):
    got, want = _run(taker, FORMS[form])
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # and the same bits as the predicate form (one reading of every form)
    base, _ = _run(taker, FORMS["predicate"])
    assert all(base[k].tobytes() == got[k].tobytes() for k in base)


def test_adamw_with_a_glob_mask_trains():
    """On 76c14af: TypeError 'str' object is not callable at the first step."""
    opt = optim.adamw(weight_decay=0.1, mask="*/w")
    ts = fl.TrainState.create(fl.random.key(1), MODEL, opt, in_shape=(5,))
    step = fl.make_step(MODEL, fl.losses.softmax_cross_entropy, opt)
    x = fl.random.normal(fl.random.key(2), (8, 5))
    y = np.arange(8) % 3
    ts2, metrics = step(ts, (x, y), 0.01)
    assert np.isfinite(metrics["loss"])
    # biases are not decayed: with zero gradients only the weights move
    zero = tree.zeros_like(ts.params)
    moved = opt.update(ts.params, zero, opt.init(ts.params), 0.1)[0]
    for path, new in tree.flatten_with_paths(moved):
        old = _per_path(ts.params)[path]
        if path.endswith("/w"):
            np.testing.assert_allclose(new, old * (1 - 0.1 * 0.1), rtol=1e-6)
        else:
            assert new.tobytes() == old.tobytes()


# ---------------------------------------------------------------- a predicate must return a bool

BAD_RESULTS = {
    "None": (None, r"got NoneType None for path 'dense_0/w'"),
    "yes": ("yes", r"got str 'yes' for path 'dense_0/w'"),
    "int": (1, r"got int 1 for path 'dense_0/w'"),
    "array": (np.array([True, False]), r"got an array of shape \(2,\) and dtype bool "
                                       r"for path 'dense_0/w'"),
}


def _first_use(taker, mask):
    """Build the taker with ``mask`` and run it once on PARAMS (where a mask is first read)."""
    if taker == "add_weight_decay":
        t = optim.add_weight_decay(0.3, mask)
        return t.update(PARAMS, GRADS, t.init(PARAMS))
    if taker in ("adamw", "lion"):
        opt = (optim.adamw(weight_decay=0.3, mask=mask) if taker == "adamw"
               else optim.lion(weight_decay=0.3, mask=mask))
        return opt.update(PARAMS, GRADS, opt.init(PARAMS), LR)
    wrap = optim.masked if taker.startswith("masked") else optim.freeze
    inner = optim.sgd() if taker.endswith("optimizer") else optim.scale(2.0)
    part = wrap(inner, mask)
    state = part.init(PARAMS)
    return part.update(PARAMS, GRADS, state, LR) if taker.endswith("optimizer") \
        else part.update(PARAMS, GRADS, state)


@pytest.mark.parametrize("bad", list(BAD_RESULTS))
@pytest.mark.parametrize("taker", TAKERS)
def test_a_predicate_returning_a_non_bool_is_a_mask_error(taker, bad):
    """On 76c14af: taken by truthiness (None, "yes", 1) or a raw numpy ValueError (the array)."""
    value, message = BAD_RESULTS[bad]
    with pytest.raises(MaskError, match=r"the mask predicate must return True or False, " + message):
        _first_use(taker, lambda path: value)


def test_freeze_with_an_array_predicate_names_the_path():
    opt = optim.freeze(optim.adam(), lambda p: np.array([True, False]))
    with pytest.raises(MaskError, match=r"freeze\(adam\): .*array of shape \(2,\).* 'dense_0/w'"):
        opt.init(PARAMS)


@pytest.mark.parametrize("taker", TAKERS)
def test_a_glob_that_matches_nothing_is_an_error_everywhere(taker):
    with pytest.raises(MaskError, match=r"the pattern 'dense_9/\*' matches no parameter path "
                                        r"\(the paths are 'dense_0/w', 'dense_0/b'"):
        _first_use(taker, ["dense_0/*", "dense_9/*"])


def test_the_error_names_the_optimizer():
    with pytest.raises(MaskError, match=r"^adamw: the pattern 'x' matches no parameter path"):
        _first_use("adamw", "x")
    with pytest.raises(MaskError, match=r"^lion: the mask predicate must return"):
        _first_use("lion", lambda p: None)
    with pytest.raises(MaskError, match=r"^add_weight_decay: the mask tree must hold True/False "
                                        r"at every leaf, got str 'y' at 'dense_2/b'"):
        _first_use("add_weight_decay", {"dense_0": {"w": True, "b": True}, "relu_1": {},
                                        "dense_2": {"w": False, "b": "y"}})


@pytest.mark.parametrize("taker", TAKERS)
def test_a_mask_tree_of_another_structure_is_a_mask_error(taker):
    with pytest.raises(MaskError, match=r"the mask tree does not match the params"):
        _first_use(taker, {"dense_0": {"w": True, "b": True}, "dense_2": {"w": False, "b": False}})


def test_masks_that_are_no_mask_are_refused_when_built():
    with pytest.raises(TypeError, match=r"masked\(sgd\): mask=None selects nothing"):
        optim.masked(optim.sgd(), None)
    with pytest.raises(MaskError, match=r"freeze\(adam\): the mask is an empty pattern"):
        optim.freeze(optim.adam(), "")
    with pytest.raises(TypeError, match=r"adamw: a list of glob patterns must hold strings only, "
                                        r"got NoneType None"):
        optim.adamw(mask=["dense_0/*", None])


def test_a_zero_decay_still_checks_its_mask():
    """A typo in the mask is reported even while the decay is switched off."""
    with pytest.raises(MaskError, match="matches no parameter path"):
        t = optim.add_weight_decay(0.0, "dense_9/*")
        t.update(PARAMS, GRADS, t.init(PARAMS))
    t = optim.add_weight_decay(0.0, "dense_0/*")
    assert t.update(PARAMS, GRADS, {})[0] is GRADS


def test_a_masked_decay_refuses_a_gradient_of_another_shape():
    """The masked path broadcast a (3,)-gradient into a (4, 3) weight on 76c14af."""
    bad = dict(GRADS, dense_2={"w": GRADS["dense_2"]["w"][0], "b": GRADS["dense_2"]["b"]})
    with pytest.raises(ValueError, match=r"the gradient of 'dense_2/w' has shape \(3,\), its "
                                         r"parameter \(4, 3\)"):
        optim.add_weight_decay(0.1, "*/w").update(PARAMS, bad, {})


def test_one_mask_type():
    from fundl.optim import mask, masking, transforms
    assert optim.Mask is mask.Mask is masking.Mask
    assert not hasattr(transforms, "Mask") or transforms.Mask is mask.Mask
    assert optim.MaskError is mask.MaskError
