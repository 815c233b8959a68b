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
