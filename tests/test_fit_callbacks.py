"""fit's callbacks: the protocol, what a return value means, the learning rate they steer and
its resume, the files they write, lr_find and the progress display."""

import csv
import io as std_io
import os
import sys
import types

import numpy as np
import pytest

import fundl as fl
from fundl import io, random, tree
from fundl.datasets import spirals
from fundl.fit import (Callback, Control, CSVLogger, ModelCheckpoint, ReduceLROnPlateau,
                       loop_path, lr_find)
from fundl.fit import progress as progress_module
from fundl.testing import read_only

SCE = fl.losses.softmax_cross_entropy


def _data(n=40, seed=11):
    x, y = spirals(random.key(seed), n, classes=3, noise=0.1)
    return read_only(x), read_only(y)


def _fit(**kw):
    args = dict(key=random.key(5), batch_size=16, lr=0.1, progress=False, val_data=_data(10, 2))
    args.update(kw)
    model = fl.serial(fl.dense(16), fl.relu(), fl.dense(3))
    return fl.fit(model, SCE, fl.optim.adam(), _data(), **args)


def _plateau():
    # min_delta 10: no epoch after the first improves, so the rate falls on schedule
    return ReduceLROnPlateau("val_loss", factor=0.5, patience=2, cooldown=1, min_delta=10.0)


def test_reduce_lr_on_plateau_lowers_the_rate_and_history_records_it():
    ts, hist = _fit(epochs=8, lr=0.01, callbacks=[_plateau()])
    r = 0.01
    assert hist["lr"] == [r, r, r, r / 2, r / 2, r / 4, r / 4, r / 8]
    same, _ = _fit(epochs=8, lr=lambda s: 0.01, callbacks=[_plateau()])   # a schedule too
    assert tree.all_equal(ts, same)
    floor, hist2 = _fit(epochs=8, lr=0.01, callbacks=[
        ReduceLROnPlateau("val_loss", factor=0.1, patience=1, min_delta=10.0, min_lr=0.0005)])
    assert hist2["lr"][:2] == [0.01, 0.01] and hist2["lr"][2] == pytest.approx(0.001)
    assert hist2["lr"][3] == pytest.approx(0.0005) and hist2["lr"][-1] == pytest.approx(0.0005)


@pytest.mark.parametrize("stop", [dict(epochs=5), dict(steps=5 * 8 + 3)])
def test_a_lowered_rate_resumes_bit_identically(tmp_path, stop):
    straight, hist = _fit(epochs=8, lr=0.01, callbacks=[_plateau()])
    ckpt = tmp_path / "run.npz"
    _fit(lr=0.01, callbacks=[_plateau()], checkpoint_path=ckpt, checkpoint_every=3, **stop)
    assert os.path.exists(loop_path(ckpt)) and loop_path(ckpt).endswith("run.loop.npz")
    part = io.load(ckpt)
    resumed, hist2 = _fit(epochs=8, lr=0.01, callbacks=[_plateau()], checkpoint_path=ckpt,
                          train_state=part)
    assert tree.all_equal(straight, resumed)
    assert hist2["lr"] == hist["lr"][5:] and hist2["loss"] == hist["loss"][5:]
    assert hist2["val_loss"] == hist["val_loss"][5:]
    # without the loop state the rate would start afresh: the run is not the same
    os.remove(loop_path(ckpt))
    fresh, hist3 = _fit(epochs=8, lr=0.01, callbacks=[_plateau()], checkpoint_path=ckpt,
                        train_state=part)
    assert hist3["lr"][0] == 0.01 and not tree.all_equal(fresh.params, straight.params)


def test_early_stopping_state_resumes(tmp_path):
    es = lambda: fl.EarlyStopping("val_loss", patience=2)   # noqa: E731
    straight, hist = _fit(epochs=30, lr=0.5, callbacks=[es()])
    stopped = len(hist["loss"])
    assert stopped < 30
    ckpt = tmp_path / "c.npz"
    _fit(epochs=stopped - 1, lr=0.5, callbacks=[es()], checkpoint_path=ckpt)
    resumed, hist2 = _fit(epochs=30, lr=0.5, callbacks=[es()], checkpoint_path=ckpt,
                          train_state=io.load(ckpt))
    assert len(hist2["loss"]) == 1 and tree.all_equal(resumed, straight)   # stops, restores


class _Says(Callback):
    def __init__(self, value, when="epoch"):
        self.value, self.when = value, when

    def on_epoch_end(self, ts, logs):
        return self.value if self.when == "epoch" else None

    def on_batch_end(self, ts, logs):
        return self.value if self.when == "batch" else None


def test_what_a_callback_returns_is_never_ignored():
    for value in ("STOP", True, 1, "Stop"):
        with pytest.raises(TypeError, match=r"callbacks\[0\] \(_Says\).on_epoch_end returned "
                                            + repr(value).replace("(", r"\(")
                           + r"; a callback returns None \(go on\), 'stop' or fl.Control"):
            _fit(epochs=3, callbacks=[_Says(value)])
    with pytest.raises(TypeError, match=r"callbacks\[0\] \(my_cb\).on_epoch_end returned True"):
        def my_cb(ts, logs):
            return True
        _fit(epochs=3, callbacks=[my_cb])
    with pytest.raises(ValueError, match="lr_factor must be a finite number > 0"):
        _fit(epochs=3, callbacks=[_Says(Control(lr_factor=-1.0))])
    ts, hist = _fit(epochs=5, callbacks=[_Says(Control(stop=True))])
    assert len(hist["loss"]) == 1
    ts, hist = _fit(epochs=5, callbacks=[_Says("stop", when="batch")])
    assert ts.step == 1 and hist["step"] == [1]
    ts, hist = _fit(epochs=2, lr=0.1, callbacks=[_Says(Control(lr_factor=0.5), when="batch")])
    assert hist["lr"] == [0.1 * 0.5 ** 7, 0.1 * 0.5 ** 15]   # halved after every step


def test_callbacks_argument_forms_and_errors(tmp_path):
    seen = []
    ts, _ = _fit(epochs=2, callbacks=lambda ts, logs: seen.append(logs["epoch"]))  # one function
    assert seen == [1, 2]
    with pytest.raises(TypeError, match=r"fit: callbacks\[0\] must be a function"):
        _fit(epochs=1, callbacks=["stop"])
    with pytest.raises(TypeError, match=r"callbacks\[0\] is the class ReduceLROnPlateau"):
        _fit(epochs=1, callbacks=[ReduceLROnPlateau])
    with pytest.raises(TypeError, match="callbacks must be a list"):
        _fit(epochs=1, callbacks=3)


def test_checkpoint_path_is_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="is a directory; name a file in it"):
        _fit(epochs=1, checkpoint_path=tmp_path)
    with pytest.raises(ValueError, match="the directory .*missing.* does not exist"):
        _fit(epochs=1, checkpoint_path=tmp_path / "missing" / "c.npz")
    with pytest.raises(TypeError, match="checkpoint_path must be a file path"):
        _fit(epochs=1, checkpoint_path=3)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="is not writable"):
            _fit(epochs=1, checkpoint_path=locked / "c.npz")
    assert os.listdir(tmp_path) == [] or os.listdir(tmp_path) == ["locked"]


def test_csv_logger_writes_every_epoch_and_keeps_rows_on_resume(tmp_path):
    path = tmp_path / "log.csv"
    ckpt = tmp_path / "c.npz"
    _, hist = _fit(epochs=4, metrics=["accuracy"], callbacks=[CSVLogger(path)])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(hist) and len(rows) == 5
    assert [float(v) for v in rows[-1]] == [float(hist[k][-1]) for k in hist]   # exact
    _fit(epochs=2, metrics=["accuracy"], callbacks=[CSVLogger(path)], checkpoint_path=ckpt)
    _fit(epochs=4, metrics=["accuracy"], callbacks=[CSVLogger(path)], checkpoint_path=ckpt,
         train_state=io.load(ckpt))
    with open(path, newline="") as f:
        again = list(csv.reader(f))
    assert again == rows                           # epochs 1-2 kept, 3-4 appended


def test_model_checkpoint_keeps_the_best_epoch(tmp_path):
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy")
    every = ModelCheckpoint(tmp_path / "e{epoch:02d}.npz", best_only=False, what="params")
    ts, hist = _fit(epochs=6, lr=0.5, metrics=["accuracy"], callbacks=[best, every])
    acc = hist["val_accuracy"]
    top = int(np.argmax(acc))
    saved = io.load(tmp_path / "best.npz")
    assert saved.step == hist["step"][top]
    assert sorted(os.listdir(tmp_path)) == ["best.npz"] + [f"e{e:02d}.npz" for e in range(1, 7)]
    assert tree.all_equal(io.load(tmp_path / "e06.npz"), ts.params)
    with pytest.raises(ValueError, match="ModelCheckpoint: path: the directory"):
        _fit(epochs=1, callbacks=[ModelCheckpoint(tmp_path / "no" / "x.npz")])


def test_lr_find_sweeps_and_stops_on_divergence():
    model = fl.serial(fl.dense(16), fl.relu(), fl.dense(3))
    out = lr_find(model, SCE, fl.optim.sgd(), _data(), key=random.key(0), min_lr=1e-4,
                  max_lr=1e3, steps=60, batch_size=16)
    n = len(out.losses)
    assert 5 < n < 60                                    # diverged before the largest rate
    np.testing.assert_allclose(out.lrs, 1e-4 * (1e7) ** (np.arange(n) / 59))
    assert 1e-4 <= out.suggestion <= out.lrs[int(np.argmin(out.smoothed))]
    again = lr_find(model, SCE, fl.optim.sgd(), _data(), key=random.key(0), min_lr=1e-4,
                    max_lr=1e3, steps=60, batch_size=16)
    assert np.array_equal(again.losses, out.losses)
    with pytest.raises(ValueError, match="min_lr .* must be below max_lr"):
        lr_find(model, SCE, fl.optim.sgd(), _data(), key=random.key(0), min_lr=1.0, max_lr=0.1)


def test_progress_is_on_in_a_notebook_and_shows_training_metrics(monkeypatch):
    class ZMQInteractiveShell:
        kernel = object()
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert progress_module.in_notebook()
    monkeypatch.setattr(progress_module, "_load_tqdm", lambda: None)
    err = std_io.StringIO()                             # not a terminal
    monkeypatch.setattr(progress_module.sys, "stderr", err)
    _fit(steps=4, progress="auto", metrics=["accuracy"], val_data=None)
    assert "step 4/4" in err.getvalue() and "accuracy" in err.getvalue()
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    assert not progress_module.in_notebook()
