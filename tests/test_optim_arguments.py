"""Every optimizer, transform and schedule factory checks every argument when it is built, and a
state that cannot be its own (a negative count, another optimizer's) is refused with a clear error."""

import math

import numpy as np
import pytest

import fundl as fl
from fundl import optim, tree
from fundl.optim import schedules
from fundl.validate import SpecError

P = {"a": np.array([1.0, -2.0, 0.5], np.float32), "b": np.zeros((2, 2), np.float32)}
ZERO = tree.zeros_like(P)

# (factory, argument, bad value, error type, the message): every argument of every factory.
NAN, INF = float("nan"), float("inf")
BAD = []
for name, make in {
    "adam": optim.adam, "adamw": optim.adamw, "adamax": optim.adamax,
    "scale_by_adam": optim.scale_by_adam, "scale_by_adamax": optim.scale_by_adamax,
}.items():
    for arg in ("b1", "b2"):
        BAD += [(name, make, arg, v, ValueError, rf"{name}: {arg} must be in \[0, 1\)")
                for v in (1.0, -0.1, 1.5)]
        BAD += [(name, make, arg, NAN, ValueError, rf"{name}: {arg} must be finite")]
    BAD += [(name, make, "eps", v, ValueError, rf"{name}: eps must be > 0") for v in (0.0, -1e-8)]
    BAD += [(name, make, "eps", v, ValueError, rf"{name}: eps must be finite") for v in (NAN, INF)]
    BAD += [(name, make, "eps", "1e-8", TypeError, rf"{name}: eps must be a real number, got str")]
for name, make in {"adamw": optim.adamw, "lion": optim.lion}.items():
    BAD += [(name, make, "weight_decay", -0.1, ValueError, rf"{name}: weight_decay must be >= 0"),
            (name, make, "weight_decay", NAN, ValueError, rf"{name}: weight_decay must be finite"),
            (name, make, "weight_decay", INF, ValueError, rf"{name}: weight_decay must be finite"),
            (name, make, "weight_decay", None, TypeError, rf"{name}: weight_decay must be a real number")]
for name, make in {"lion": optim.lion, "scale_by_lion": optim.scale_by_lion}.items():
    BAD += [(name, make, arg, v, ValueError, rf"{name}: {arg} must be in \[0, 1\)")
            for arg in ("b1", "b2") for v in (1.0, -0.5)]
for name, make in {"rmsprop": optim.rmsprop, "scale_by_rms": optim.scale_by_rms}.items():
    BAD += [(name, make, "decay", v, ValueError, rf"{name}: decay must be in \[0, 1\)") for v in (1.0, -0.1)]
    BAD += [(name, make, "eps", v, ValueError, rf"{name}: eps must be > 0") for v in (0.0, -1.0)]
    BAD += [(name, make, "eps", INF, ValueError, rf"{name}: eps must be finite"),
            (name, make, "centered", "yes", TypeError, rf"{name}: centered must be True or False")]
BAD += [("rmsprop", optim.rmsprop, "momentum", v, ValueError, r"rmsprop: momentum must be in \[0, 1\)")
        for v in (-0.9, 1.0)]
for name, make in {"momentum": optim.momentum, "nesterov": optim.nesterov}.items():
    BAD += [(name, make, "beta", v, ValueError, rf"{name}: beta must be in \[0, 1\)") for v in (1.0, -0.1)]
    BAD += [(name, make, "beta", NAN, ValueError, rf"{name}: beta must be finite"),
            (name, make, "beta", True, TypeError, rf"{name}: beta must be a real number, got bool")]
BAD += [("trace", optim.trace, "beta", 1.0, ValueError, r"trace: beta must be in \[0, 1\)"),
        ("trace", optim.trace, "nesterov", "no", TypeError, r"trace: nesterov must be True or False")]
for name, make in {"adagrad": optim.adagrad, "scale_by_rss": optim.scale_by_rss}.items():
    BAD += [(name, make, "initial_accumulator_value", -0.1, ValueError,
             rf"{name}: initial_accumulator_value must be >= 0"),
            (name, make, "eps", -1e-10, ValueError, rf"{name}: eps must be >= 0"),
            (name, make, "eps", NAN, ValueError, rf"{name}: eps must be finite")]
BAD += [("clip_by_global_norm", optim.clip_by_global_norm, "max_norm", v, ValueError,
         r"clip_by_global_norm: max_norm must be (> 0|finite)") for v in (0.0, -1.0, NAN, INF)]
BAD += [("clip_by_value", optim.clip_by_value, "lo", NAN, ValueError, r"clip_by_value: lo must be finite"),
        ("scale", optim.scale, "factor", NAN, ValueError, r"scale: factor must be finite"),
        ("scale", optim.scale, "factor", "2", TypeError, r"scale: factor must be a real number"),
        ("add_weight_decay", optim.add_weight_decay, "rate", -1e-4, ValueError,
         r"add_weight_decay: rate must be >= 0"),
        ("add_weight_decay", optim.add_weight_decay, "rate", INF, ValueError,
         r"add_weight_decay: rate must be finite")]


@pytest.mark.parametrize("name, make, arg, value, error, message", BAD,
                         ids=[f"{b[0]}-{b[2]}={b[3]!r}" for b in BAD])
def test_a_bad_hyper_parameter_is_refused_when_built(name, make, arg, value, error, message):
    kwargs = {"lo": -1.0, "hi": 1.0} if make is optim.clip_by_value else {}
    if make in (optim.clip_by_global_norm, optim.scale, optim.add_weight_decay):
        first = {"clip_by_global_norm": "max_norm", "scale": "factor", "add_weight_decay": "rate"}[name]
        kwargs[first] = 1.0
    kwargs[arg] = value
    with pytest.raises(error, match=message):
        make(**kwargs)


@pytest.mark.parametrize("make", [optim.adam, optim.adamw, optim.adamax, optim.rmsprop])
def test_eps_zero_is_refused_where_it_made_nan(make):
    """On 76c14af eps=0 was accepted and a zero gradient turned its params into NaN."""
    with pytest.raises(ValueError, match="eps must be > 0"):
        make(eps=0.0)
    opt = make(eps=1e-8)
    new = opt.update(P, ZERO, opt.init(P), 0.1)[0]
    assert all(np.isfinite(v).all() for v in tree.leaves(new))


@pytest.mark.parametrize("make", [lambda: optim.adam(eps=1e-50), lambda: optim.adamax(eps=1e-50),
                                  lambda: optim.rmsprop(eps=1e-50),
                                  lambda: optim.adagrad(initial_accumulator_value=0.0, eps=1e-50)])
def test_an_eps_that_is_zero_in_the_params_dtype_is_refused(make):
    """eps=1e-50 is 0 in float32: the first zero gradient would give 0/0."""
    opt = make()
    with pytest.raises(ValueError, match=r"eps=1e-50 is 0 in float32 \(the update would divide by zero\)"):
        opt.update(P, ZERO, opt.init(P), 0.1)
    p64 = tree.cast(P, np.float64)
    new = opt.update(p64, tree.zeros_like(p64), opt.init(p64), 0.1)[0]
    assert all(np.isfinite(v).all() for v in tree.leaves(new))


def test_rmsprop_default_eps_in_float16_is_refused():
    """The default eps=1e-8 is 0 in float16: rmsprop gave NaN for every zero gradient."""
    p16 = tree.cast(P, np.float16)
    opt = optim.rmsprop()
    with pytest.raises(ValueError, match=r"rmsprop: eps=1e-08 is 0 in float16"):
        opt.update(p16, tree.zeros_like(p16), opt.init(p16), 0.1)
    opt = optim.rmsprop(eps=1e-4)
    assert np.isfinite(opt.update(p16, tree.zeros_like(p16), opt.init(p16), 0.1)[0]["a"]).all()


def test_descend_takes_a_transform():
    with pytest.raises(TypeError, match=r"descend: expected a GradientTransform, got Optimizer "
                                        r"\(it is already an optimizer: use it as it is\)"):
        optim.descend(optim.adam())


def test_accumulate_and_scale_lr_arguments():
    with pytest.raises(ValueError, match="accumulate needs an integer k >= 1, got 2.5"):
        optim.accumulate(optim.sgd(), 2.5)
    with pytest.raises(ValueError, match="accumulate needs an integer k >= 1, got True"):
        optim.accumulate(optim.sgd(), True)
    with pytest.raises(ValueError, match="accumulate needs an integer k >= 1, got None"):
        optim.accumulate(optim.sgd(), None)
    with pytest.raises(TypeError, match="accumulate: expected an Optimizer, got GradientTransform"):
        optim.accumulate(optim.scale(1.0), 2)
    with pytest.raises(ValueError, match="scale_lr: factor must be >= 0, got -0.1"):
        optim.scale_lr(optim.adam(), -0.1)
    with pytest.raises(ValueError, match="scale_lr: factor must be finite"):
        optim.scale_lr(optim.adam(), NAN)


# ---------------------------------------------------------------- states that are not this optimizer's

@pytest.mark.parametrize("make, who", [(optim.adam, "adam"), (optim.adamax, "adamax"),
                                       (lambda: optim.adamw(weight_decay=0.1), "adamw")])
@pytest.mark.parametrize("count", [-1, -10 ** 6, 2.5])
def test_a_state_with_a_bad_count_is_refused(make, who, count):
    """On 76c14af a negative count raised a raw 'math domain error' (sqrt of 1 - b2 ** t < 0)."""
    opt = make()
    state = opt.init(P)
    first = state[0] if isinstance(state, tuple) and not hasattr(state, "_fields") else state
    bad = first._replace(count=np.asarray(count))
    bad = (bad,) + tuple(state[1:]) if first is not state else bad
    with pytest.raises(ValueError, match=rf"{who}: the optimizer state's count must be a whole "
                                         rf"number >= 0 \(the updates done so far\), got "):
        opt.update(P, ZERO, bad, 0.1)


def test_accumulate_refuses_a_negative_count():
    opt = optim.accumulate(optim.sgd(), 3)
    state = opt.init(P)._replace(count=np.asarray(-2))
    with pytest.raises(ValueError, match="accumulate: the optimizer state's count must be"):
        opt.update(P, ZERO, state, 0.1)


def _adam_and_adamax_train_states():
    model = fl.serial(fl.dense(3), fl.relu(), fl.dense(2))
    ts = {name: fl.TrainState.create(fl.random.key(0), model, opt, in_shape=(4,))
          for name, opt in (("adam", optim.adam()), ("adamax", optim.adamax()))}
    return model, ts


@pytest.mark.parametrize("saved, resumed", [("adam", "adamax"), ("adamax", "adam")])
def test_an_adam_checkpoint_does_not_resume_under_adamax(tmp_path, saved, resumed):
    """On 76c14af both states were AdamState: an Adam checkpoint resumed silently under adamax
    (whose nu is an infinity norm, not a mean of squares)."""
    model, ts = _adam_and_adamax_train_states()
    opt = {"adam": optim.adam(), "adamax": optim.adamax()}
    x = fl.random.normal(fl.random.key(1), (6, 4))
    y = np.arange(6) % 2
    step = fl.make_step(model, fl.losses.softmax_cross_entropy, opt[saved])
    trained, _ = step(ts[saved], (x, y), 0.01)
    fl.io.save(tmp_path / "ckpt.npz", trained)
    loaded = fl.io.load(tmp_path / "ckpt.npz")
    assert type(loaded.opt_state) is type(trained.opt_state)
    assert type(loaded.opt_state).__name__ == {"adam": "AdamState", "adamax": "AdamaxState"}[saved]
    assert tree.all_equal(loaded.opt_state, trained.opt_state)
    step(loaded, (x, y), 0.01)   # resumes under its own optimizer
    other = fl.make_step(model, fl.losses.softmax_cross_entropy, opt[resumed])
    names = {"adam": "AdamState", "adamax": "AdamaxState"}
    with pytest.raises(SpecError, match=rf"opt_state: expected an? {names[resumed]}, got an? "
                                        rf"{names[saved]}; is the train state from another "
                                        rf"optimizer than {resumed}\?"):
        other(loaded, (x, y), 0.01)   # the step's check of a train state it did not make
    with pytest.raises(SpecError, match=rf"{resumed}: the optimizer state is a {names[saved]}"):
        opt[resumed].update(loaded.params, loaded.params, loaded.opt_state, 0.01)


# ---------------------------------------------------------------- schedules

ALL_SCHEDULES = {
    "constant": schedules.constant(0.1),
    "piecewise_constant": schedules.piecewise_constant([10], [1.0, 0.1]),
    "exponential_decay": schedules.exponential_decay(1.0, 0.5, 100),
    "exponential_decay_staircase": schedules.exponential_decay(1.0, 0.5, 100, staircase=True),
    "cosine_decay": schedules.cosine_decay(1.0, 100),
    "warmup_cosine": schedules.warmup_cosine(1.0, 0, 100),
    "join_schedules": schedules.join_schedules([schedules.constant(1.0), schedules.constant(0.5)], [5]),
}


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
@pytest.mark.parametrize("step, error", [(-1, ValueError), (-2000, ValueError), (NAN, ValueError),
                                         ("3", TypeError), (None, TypeError), (True, TypeError)])
def test_a_schedule_says_the_step_must_be_at_least_zero(name, step, error):
    """On 76c14af exponential_decay(...)(-2000) raised a raw OverflowError; warmup_cosine
    with no warm-up divided by zero; cosine_decay clamped a negative step to 0 silently."""
    who = name.replace("_staircase", "")
    with pytest.raises(error, match=rf"{who}: the step must be (a number )?>= 0"):
        ALL_SCHEDULES[name](step)


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
def test_a_schedule_at_huge_steps_gives_its_limit(name):
    s = ALL_SCHEDULES[name]
    limit = s(10 ** 9)
    for step in (10 ** 12, 10 ** 400, np.int64(2 ** 62), np.asarray(2 ** 62), float("inf")):
        assert s(step) == limit and isinstance(s(step), float), step
    assert s(np.int64(7)) == s(7) and s(np.asarray(7)) == s(7)


def test_exponential_decay_huge_steps_and_growth():
    s = schedules.exponential_decay(2.0, 0.5, 10)
    assert s(10 ** 400) == 0.0 and s(10 ** 6) == 0.0 and s(30) == 0.25
    grow = schedules.exponential_decay(1.0, 2.0, 10)
    assert grow(100) == 1024.0
    with pytest.raises(ValueError, match=r"exponential_decay: 1.0 \* 2.0 \*\* \(100000 / 10\) "
                                         r"overflows at step 100000"):
        grow(100000)
    assert schedules.exponential_decay(0.0, 2.0, 10)(10 ** 400) == 0.0
    assert schedules.exponential_decay(3.0, 1.0, 10)(10 ** 400) == 3.0


@pytest.mark.parametrize("make, message", [
    (lambda: schedules.constant(NAN), "constant: value must be finite"),
    (lambda: schedules.exponential_decay(1.0, -0.5, 10), "exponential_decay: decay_rate must be >= 0"),
    (lambda: schedules.exponential_decay(1.0, 0.5, 0), "exponential_decay: decay_steps must be > 0"),
    (lambda: schedules.exponential_decay(1.0, 0.5, None), "exponential_decay: decay_steps must be a real"),
    (lambda: schedules.exponential_decay(INF, 0.5, 10), "exponential_decay: init must be finite"),
    (lambda: schedules.cosine_decay(1.0, -5), "cosine_decay: decay_steps must be > 0"),
    (lambda: schedules.cosine_decay(1.0, 10, alpha=NAN), "cosine_decay: alpha must be finite"),
    (lambda: schedules.warmup_cosine(1.0, -1, 10), "warmup_cosine: warmup_steps must be >= 0"),
    (lambda: schedules.warmup_cosine(NAN, 1, 10), "warmup_cosine: peak must be finite"),
    (lambda: schedules.piecewise_constant([10.5], [1.0, 0.1]),
     r"piecewise_constant: boundaries must be whole numbers \(steps\), got 10.5"),
    (lambda: schedules.piecewise_constant([10], [1.0, NAN]), "piecewise_constant: a value must be finite"),
    (lambda: schedules.join_schedules([schedules.constant(1.0), 0.5], [5]),
     r"join_schedules: schedules\[1\] is a float, not a schedule"),
    (lambda: schedules.join_schedules([schedules.constant(1.0)] * 2, [2.5]),
     "join_schedules: boundaries must be whole numbers"),
])
def test_bad_schedule_arguments(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_a_schedule_with_a_step_from_a_checkpoint():
    """A TrainState.step loaded from a file is a 0-d int64 array: the same values as an int."""
    s = schedules.warmup_cosine(1.0, 10, 110, end=0.1)
    for t in (0, 5, 10, 35, 110, 500):
        assert s(np.asarray(t, np.int64)) == s(t) and s(np.int64(t)) == s(t)
    assert math.isclose(s(35), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), abs_tol=1e-15)
