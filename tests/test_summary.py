"""fundl.summary: the model table and its totals."""


import fundl as fl
from fundl import random, tree
from fundl.summary import summary, summary_rows


def _model():
    return fl.serial(fl.dense(32), fl.relu(), fl.serial(fl.dense(16), fl.tanh()), fl.dense(3))


def test_hand_written_combinator_lists_top_level_entries_with_exact_totals():
    inner = _model()
    # A Layer without children (as a user might write a combinator by hand).
    model = fl.Layer(inner.init, inner.apply, inner.vjp, "custom")
    text = summary(model, (2,))
    params, _, _ = model.init(random.key(0), (2,))
    assert tree.size(params) == 2 * 32 + 32 + 32 * 16 + 16 + 16 * 3 + 3 == 675
    assert "Total params: 675" in text
    assert "Output shape: (3,)" in text and "Input shape: (2,)" in text
    rows, *_ = summary_rows(model, (2,))
    assert [r.path for r in rows] == ["dense_0", "relu_1", "serial_2", "dense_3"]
    assert [r.params for r in rows] == [96, 0, 528, 51]
    assert sum(r.params for r in rows) == tree.size(params)


def test_nested_rows_with_output_shapes():
    model = _model()
    rows, params, state, out = summary_rows(model, (2,))
    assert [(r.path, r.kind, r.out_shape, r.params) for r in rows] == [
        ("dense_0", "dense", (32,), 96),
        ("relu_1", "relu", (32,), 0),
        ("serial_2", "serial", (16,), 528),
        ("serial_2/dense_0", "dense", (16,), 528),
        ("serial_2/tanh_1", "tanh", (16,), 0),
        ("dense_3", "dense", (3,), 51),
    ]
    top = [r for r in rows if "/" not in r.path]
    assert sum(r.params for r in top) == tree.size(params) == 675
    text = summary(model, (2,))
    assert "  serial_2/dense_0 (dense)" in text and "(16,)" in text
    assert text.splitlines()[-2] == "Total params: 675"


def test_parallel_children_show_their_shapes():
    model = fl.serial(fl.fan_out(2), fl.parallel(fl.dense(4), fl.dense(5)))
    rows, params, _, out = summary_rows(model, (3,))
    assert out == ((4,), (5,))
    assert [(r.path, r.out_shape, r.params) for r in rows] == [
        ("fan_out_0", ((3,), (3,)), 0),
        ("parallel_1", ((4,), (5,)), 16 + 20),
        ("parallel_1/dense_0", (4,), 16),
        ("parallel_1/dense_1", (5,), 20),
    ]
    assert "Total params: 36" in summary(model, (3,))


def test_residual_rows():
    model = fl.serial(fl.dense(4), fl.residual(fl.serial(fl.dense(4), fl.relu())))
    rows, params, _, _ = summary_rows(model, (3,))
    assert [(r.path, r.out_shape, r.params) for r in rows] == [
        ("dense_0", (4,), 16), ("residual_1", (4,), 20), ("residual_1/serial_0", (4,), 20),
        ("residual_1/serial_0/dense_0", (4,), 20), ("residual_1/serial_0/relu_1", (4,), 0)]


def test_print_out(capsys):
    text = summary(fl.dense(4), (3,), print_out=True)
    assert capsys.readouterr().out.strip() == text.strip()
    assert "Total params: 16" in text and "Non-trainable state: 0" in text
