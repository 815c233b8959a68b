"""fundl.layers.windows: the window geometry shared by conv and pool layers."""

import numpy as np
import pytest

from fundl import LayerError
from fundl.layers.windows import (check_spatial_in_shape, int_tuple, offset_view, offsets,
                                  output_sizes, pad_nhwc, parse_padding, resolve_padding,
                                  window_geometry)


def test_same_padding_gives_ceil_size_over_stride_outputs_with_the_odd_pad_at_the_end():
    assert resolve_padding("same", (7, 8), (3, 2), (2, 2)) == ((1, 1), (0, 0))
    assert resolve_padding("same", (6,), (4,), (1,)) == ((1, 2),)
    assert resolve_padding("valid", (6, 5), (3, 3), (1, 1)) == ((0, 0), (0, 0))
    for n, k, s in [(7, 3, 2), (8, 2, 2), (5, 5, 3), (1, 3, 1)]:
        pads = resolve_padding("same", (n,), (k,), (s,))
        assert output_sizes((n,), (k,), (s,), pads, "kernel") == (-(-n // s),)


def test_output_sizes_and_a_window_larger_than_the_padded_input():
    assert output_sizes((10, 9), (3, 3), (2, 1), ((1, 0), (0, 0)), "kernel") == (5, 7)
    with pytest.raises(LayerError, match=r"the window spans \(4,\) but the padded input is only "
                                         r"\(3,\)"):
        output_sizes((2,), (4,), (1,), ((0, 1),), "window")


def test_window_geometry_lifts_1d_to_a_unit_height():
    assert window_geometry("valid", (9,), (3,), (2,), "kernel") == (((0, 0), (0, 0)), (1, 4), (4,))
    assert window_geometry(((1, 1), (0, 2)), (4, 4), (3, 3), (1, 1), "kernel") == (
        ((1, 1), (0, 2)), (4, 4), (4, 4))


def test_parse_padding_and_int_tuple_reject_bad_specs_with_the_layer_name():
    assert parse_padding(2, 2, "conv2d") == ((2, 2), (2, 2))
    assert parse_padding((1, 3), 1, "conv1d") == ((1, 3),)
    assert parse_padding("SAME", 2, "conv2d") == "same"
    for bad in ("full", -1, [(1, 2)], [(1, -1), (0, 0)]):
        with pytest.raises(LayerError, match=r"layer 'conv2d': padding must be"):
            parse_padding(bad, 2, "conv2d")
    assert int_tuple(3, 2, "stride", "pool") == (3, 3)
    with pytest.raises(LayerError, match=r"layer 'pool': stride must be an int or 2 ints"):
        int_tuple((1, 0), 2, "stride", "pool")
    with pytest.raises(LayerError, match=r"expected a per-example input shape \(width, channels\)"):
        check_spatial_in_shape((4, 4, 1), 1)


def test_offset_views_and_padding_are_the_windows_of_a_naive_loop():
    x = np.arange(2 * 5 * 6 * 3, dtype=np.float32).reshape(2, 5, 6, 3)
    pads = ((1, 0), (2, 1))
    xp = pad_nhwc(x, pads, -1.0)
    assert xp.shape == (2, 6, 9, 3) and (xp[:, 0] == -1).all() and (xp[:, 1:, :2] == -1).all()
    np.testing.assert_array_equal(xp[:, 1:, 2:8], x)
    assert pad_nhwc(x, ((0, 0), (0, 0))) is x
    kernel, dilation, strides = (2, 3), (2, 1), (2, 3)
    out_hw = output_sizes((6, 9), (3, 3), strides, ((0, 0), (0, 0)), "kernel")
    assert out_hw == (2, 3)
    for k, di, dj in offsets(kernel, dilation):
        assert k == (di // 2) * 3 + dj
        view = offset_view(xp, di, dj, out_hw, strides)
        for i in range(out_hw[0]):
            for j in range(out_hw[1]):
                np.testing.assert_array_equal(view[:, i, j], xp[:, i * 2 + di, j * 3 + dj])
