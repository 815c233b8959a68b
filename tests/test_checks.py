"""fundl.checks: LayerError and the input checks shared by layers."""

import pytest

import numpy as np

import fundl as fl
from fundl.checks import (LayerError, check_input_tuple, check_sequence_in_shape,
                          check_trailing_shape)


def test_check_trailing_shape_messages():
    check_trailing_shape(np.zeros((2, 3, 4)), (3, None))
    with pytest.raises(LayerError, match=r"expected input of shape \(batch, 3, \?\) \(rank 3\), "
                                         r"got shape \(2, 3\)"):
        check_trailing_shape(np.zeros((2, 3)), (3, None))
    with pytest.raises(LayerError, match=r"got shape \(2, 4, 1\)"):
        check_trailing_shape(np.zeros((2, 4, 1)), (3, None))


def test_check_sequence_in_shape_and_the_layers_that_use_it():
    assert check_sequence_in_shape([5, 3]) == (5, 3)
    for bad in [(5,), (5, 0), (2, 3, 4)]:
        with pytest.raises(LayerError, match=r"expected an input shape \(time, features\), "
                                             rf"got \({', '.join(map(str, bad))},?\)"):
            check_sequence_in_shape(bad)
    for layer, kind in ((fl.multi_head_attention(2), "multi_head_attention"), (fl.gru(3), "gru")):
        with pytest.raises(LayerError, match=rf"layer '{kind}_1' \({kind}\): expected an input "
                                             r"shape \(time, features\), got \(5, 0\)"):
            fl.serial(fl.identity(), layer).init(fl.random.key(0), (5, 0))


def test_check_input_tuple_says_what_it_got():
    x = np.zeros((2, 3))
    assert check_input_tuple((x, x), 2, "(x, mask)") == (x, x)
    with pytest.raises(LayerError, match=r"expected a tuple of 2 inputs \(x, mask\), got an array "
                                         r"of shape \(2, 3\)"):
        check_input_tuple(x, 2, "(x, mask)")
    with pytest.raises(LayerError, match=r"got list of length 3"):
        check_input_tuple([x, x, x], 2, "(x, mask)")


# --- integer arguments of the layer builders (issue 25, finding 10) -----------------------

def test_int_arg_accepts_python_and_numpy_ints_only():
    from fundl.checks import int_arg
    assert int_arg("dense", "features", 3) == 3
    assert int_arg("dense", "features", np.int64(3)) == 3 and type(
        int_arg("dense", "features", np.uint8(3))) is int
    assert int_arg("softmax", "axis", -2, minimum=None) == -2
    assert int_arg("conv2d", "padding", 0, minimum=0) == 0
    for bad in (2.7, 2.0, np.float32(3.0), True, np.bool_(True), "3", None, (3,)):
        with pytest.raises(TypeError, match=r"layer 'dense': features must be an int, got"):
            int_arg("dense", "features", bad)
    with pytest.raises(TypeError, match="does not round sizes"):
        int_arg("dense", "features", 2.0)
    with pytest.raises(LayerError, match=r"layer 'dense': features must be >= 1, got 0"):
        int_arg("dense", "features", 0)
    with pytest.raises(ValueError, match=r"layer 'conv2d': padding must be >= 0, got -1"):
        int_arg("conv2d", "padding", -1, minimum=0)


# (builder name, positional args, keyword args, the integer arguments: name -> smallest value)
INT_BUILDERS = [
    ("dense", (4,), {}, {"features": 1}),
    ("conv1d", (4, 3), {}, {"features": 1, "kernel_size": 1, "stride": 1, "dilation": 1,
                            "padding": 0, "groups": 1}),
    ("conv2d", (4, 3), {}, {"features": 1, "kernel_size": 1, "stride": 1, "dilation": 1,
                            "padding": 0, "groups": 1}),
    ("conv_transpose1d", (4, 3), {"stride": 2}, {
        "features": 1, "kernel_size": 1, "stride": 1, "dilation": 1, "padding": 0,
        "output_padding": 0}),
    ("conv_transpose2d", (4, 3), {"stride": 2}, {
        "features": 1, "kernel_size": 1, "stride": 1, "dilation": 1, "padding": 0,
        "output_padding": 0}),
    ("max_pool1d", (2,), {}, {"window": 1, "stride": 1, "padding": 0}),
    ("max_pool2d", (2,), {}, {"window": 1, "stride": 1, "padding": 0}),
    ("avg_pool1d", (2,), {}, {"window": 1, "stride": 1, "padding": 0}),
    ("avg_pool2d", (2,), {}, {"window": 1, "stride": 1, "padding": 0}),
    ("upsample2d", (2,), {}, {"scale": 1}),
    ("embedding", (10, 4), {}, {"vocab_size": 1, "features": 1}),
    ("positional_embedding", (8,), {}, {"max_len": 1}),
    ("rnn", (3,), {}, {"hidden": 1}),
    ("gru", (3,), {}, {"hidden": 1}),
    ("lstm", (3,), {}, {"hidden": 1}),
    ("group_norm", (2,), {}, {"num_groups": 1}),
    ("softmax", (), {}, {"axis": None}),
    ("log_softmax", (), {}, {"axis": None}),
]
_POSITIONAL = {"features": 0, "vocab_size": 0, "kernel_size": 1, "window": 0, "scale": 0,
               "max_len": 0, "hidden": 0, "num_groups": 0}


def _build(name, args, kwargs, arg, value):
    args, kwargs = list(args), dict(kwargs)
    where = _POSITIONAL.get(arg)
    if name == "embedding" and arg == "features":
        where = 1
    if where is not None and where < len(args):
        args[where] = value
    else:
        kwargs[arg] = value
    return getattr(fl, name)(*args, **kwargs)


@pytest.mark.parametrize("name,args,kwargs,ints", INT_BUILDERS, ids=[b[0] for b in INT_BUILDERS])
def test_every_builder_refuses_floats_bools_and_too_small_ints(name, args, kwargs, ints):
    # On 76c14af, 85 of these 217 cases were accepted: dense(2.7), embedding(2.7, 4),
    # rnn(2.7) and conv2d(2.7, 3) truncated to 2, dense(True) was one feature,
    # padding=True one cell, kernel_size=(1, 2.0) taken as (1, 2), softmax(axis=2.7) axis 2.
    getattr(fl, name)(*args, **kwargs)           # the good form builds
    for arg, smallest in ints.items():
        for bad in (2.7, 2.0, True):
            with pytest.raises(TypeError, match=rf"layer '{name}': {arg}[ (].*must be"):
                _build(name, args, kwargs, arg, bad)
        if arg in ("kernel_size", "stride", "dilation", "padding", "output_padding", "window",
                   "scale"):      # a per-axis spec: a float inside the tuple too
            with pytest.raises(TypeError, match=rf"layer '{name}': {arg}"):
                _build(name, args, kwargs, arg, (1, 2.0) if "1d" not in name else (2.0,))
        if smallest is not None:
            with pytest.raises(LayerError, match=rf"layer '{name}': {arg}[ (].*must be.*"
                                                 rf"{smallest - 1}"):
                _build(name, args, kwargs, arg, smallest - 1)


def test_reshape_refuses_float_and_bool_sizes():
    assert fl.reshape((np.int64(2), -1)).init(fl.random.key(0), (2, 3))[2] == (2, 3)
    for bad in ((2.5, 4), (2.0, 4), (True, 4), 2.0):
        with pytest.raises(TypeError, match="layer 'reshape': shape must be a sequence of ints"):
            fl.reshape(bad)
    with pytest.raises(ValueError, match="one -1"):
        fl.reshape((-2, 4))
