"""fit, evaluate and predict on data sources: keyed augmentation, resume mid-epoch, memmaps with
flat memory, several files interleaved."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fundl as fl
from fundl import io, random, tree
from fundl.data import from_arrays, interleave, map_batches
from fundl.testing import read_only

ROOT = Path(__file__).resolve().parents[1]
SCE = fl.losses.softmax_cross_entropy


def _signals(n=96, width=24, classes=3, seed=0):
    """Class-dependent bumps at random places: a shift keeps the class."""
    k1, k2, k3 = random.split(random.key(seed), 3)
    y = random.randint(k1, (n,), 0, classes).astype(np.int64)
    where = random.randint(k2, (n,), 4, width - 4)
    grid = np.arange(width)[None, :]
    x = np.exp(-0.5 * ((grid - where[:, None]) / (1.0 + y[:, None])) ** 2)
    x = x + 0.05 * random.normal(k3, (n, width), np.float64)
    return read_only(x.astype(np.float32)), read_only(y)


def shift(key, batch):
    """A random circular shift of every example by -3..3 steps: one gather, no loop."""
    x, y = batch
    s = random.randint(key, (x.shape[0],), -3, 4)
    cols = (np.arange(x.shape[1])[None, :] - s[:, None]) % x.shape[1]
    return np.take_along_axis(x, cols, axis=1), y


def _model():
    return fl.serial(fl.dense(16), fl.relu(), fl.dense(3))


def _run(source, **kw):
    args = dict(key=random.key(3), lr=0.05, progress=False)
    args.update(kw)
    return fl.fit(_model(), SCE, fl.optim.adam(), source, **args)


def test_map_batches_is_keyed_deterministic_and_starts_mid_epoch():
    x, y = _signals()
    src = map_batches(from_arrays((x, y), 16), shift)
    assert len(src) == 6
    k = random.key(1)
    a, b = list(src(k)), list(src(k))
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(a, b))           # same key, same
    other = list(src(random.key(2)))
    assert not np.array_equal(a[0][0], other[0][0])                         # another epoch
    tail = list(src(k, start=4))
    assert len(tail) == 2 and all(np.array_equal(p[0], q[0]) for p, q in zip(a[4:], tail))
    plain = list(from_arrays((x, y), 16)(random.split(k)[0]))
    assert not np.array_equal(a[0][0], plain[0][0]) and np.array_equal(a[0][1], plain[0][1])
    assert x.flags.writeable is False                                       # nothing written


@pytest.mark.parametrize("kind", ["fl.data source", "function of the key"])
def test_augmented_training_resumes_mid_epoch_bit_identically(tmp_path, kind):
    x, y = _signals()
    src = map_batches(from_arrays((x, y), 16), shift)
    if kind == "function of the key":
        source, extra = (lambda key: iter(src(key))), dict(steps_per_epoch=6)
    else:
        source, extra = src, {}
    straight, hist = _run(source, steps=20, **extra)
    ckpt = tmp_path / "ckpt.npz"
    part, _ = _run(source, steps=11, checkpoint_path=ckpt, checkpoint_every=3, **extra)
    assert io.load(ckpt).step == 11                      # 6 steps an epoch: stopped in the 2nd
    resumed, hist2 = _run(source, steps=20, train_state=io.load(ckpt), checkpoint_path=ckpt,
                          **extra)
    assert tree.all_equal(straight, resumed)
    assert hist2["epoch"] == [2, 3, 4] and hist2["loss"][1:] == hist["loss"][2:]
    # the same source trained without augmentation differs: the shifts did something
    plain, _ = _run(from_arrays((x, y), 16), steps=20)
    assert not tree.all_equal(plain.params, straight.params)


def test_from_arrays_source_gives_the_batches_fit_draws_from_arrays():
    x, y = _signals()
    a, ha = _run((x, y), epochs=2, batch_size=16, val_data=(x, y), metrics=["accuracy"],
                 val_batch_size=32)
    b, hb = _run(from_arrays((x, y), 16), epochs=2, val_data=from_arrays((x, y), 32,
                                                                         shuffle=False),
                 metrics=["accuracy"])
    assert tree.all_equal(a, b) and ha == hb


def test_a_list_of_batches_and_source_errors():
    x, y = _signals(48)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
    ts, hist = _run(batches, epochs=2)
    assert ts.step == 6 and len(hist["loss"]) == 2
    with pytest.raises(TypeError, match="a generator or iterator runs only once"):
        _run(iter(batches), epochs=1)
    with pytest.raises(ValueError, match="no len\\(\\)\\); pass steps_per_epoch="):
        _run(lambda key: iter(batches), epochs=1)
    with pytest.raises(ValueError, match="yielded 3 batches in this epoch, fewer than the 5"):
        _run(lambda key: iter(batches), epochs=1, steps_per_epoch=5)
    with pytest.raises(ValueError, match="steps_per_epoch applies to data sources"):
        _run((x, y), epochs=1, steps_per_epoch=2)
    with pytest.raises(ValueError, match="a source must yield \\(x, y\\) batches, got ndarray"):
        _run([x[:16], x[16:32], x[32:]], epochs=1)
    with pytest.raises(ValueError, match="fit: the loss softmax_cross_entropy does not fit.*"
                                         "its first batch"):
        _run([(x[:16], y[:16] + 5)], epochs=1)
    # evaluate and predict take the same sources
    model = _model()
    params, state, _ = model.init(random.key(0), (24,))
    whole = fl.evaluate(model, params, state, (x, y), ["accuracy"], loss=SCE)
    assert fl.evaluate(model, params, state, batches, ["accuracy"], loss=SCE) == \
        pytest.approx(whole, rel=1e-6)
    got = fl.predict(model, params, state, batches)
    np.testing.assert_allclose(got, model.apply(params, state, x), rtol=1e-6, atol=1e-6)


def test_interleave_reads_every_example_once_from_several_files(tmp_path):
    x, y = _signals(100)
    parts = []
    for i, (lo, hi) in enumerate([(0, 37), (37, 100)]):
        np.save(tmp_path / f"x{i}.npy", x[lo:hi])
        np.save(tmp_path / f"y{i}.npy", y[lo:hi])
        parts.append((str(tmp_path / f"x{i}.npy"), str(tmp_path / f"y{i}.npy")))
    src = interleave(parts, 16, chunk_size=10, cache_chunks=3)
    assert len(src) == 7
    k = random.key(4)
    got = list(src(k))
    assert [len(b[1]) for b in got] == [16] * 6 + [4]
    xs = np.concatenate([b[0] for b in got])
    rows = {tuple(r) for r in xs.round(6)}
    assert len(rows) == 100 and rows == {tuple(r) for r in x.round(6)}       # each once
    index = {tuple(r): i for i, r in enumerate(x.round(6))}
    ys = np.concatenate([b[1] for b in got])
    assert all(y[index[tuple(r)]] == v for r, v in zip(xs.round(6), ys))     # pairs kept
    again = list(src(k))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got, again))
    tail = list(src(k, start=3))                                              # skips chunks
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got[3:], tail)) and len(tail) == 4
    assert not np.array_equal(got[0][0], list(src(random.key(5)))[0][0])
    ordered = np.concatenate([b[0] for b in interleave(parts, 16, shuffle=False)(None)])
    np.testing.assert_array_equal(ordered, x)
    ts, hist = _run(src, epochs=2)
    assert ts.step == 14
    with pytest.raises(ValueError, match=r"parts\[1\] has per-example shapes"):
        interleave([(x, y), (x[:, :5], y)], 16)


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import fundl as fl

    path, mode = sys.argv[1], sys.argv[2]
    x = np.load(path + "/x.npy", mmap_mode="r")
    y = np.load(path + "/y.npy", mmap_mode="r")

    def peak():   # VmHWM, the peak resident size since the last reset (kB)
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))

    def reset():  # ru_maxrss would include the parent's size from before exec
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    model = fl.serial(fl.dense(4), fl.relu(), fl.dense(2))
    if mode == "touch":        # read the whole file through the mapping, nothing released
        reset()
        base = peak()
        total = float(np.asarray(x).sum(dtype=np.float64))
    else:
        source = ((x, y) if mode == "fit" else
                  fl.data.interleave([(x, y)], 512, chunk_size=1024, cache_chunks=1))
        fl.fit(model, fl.losses.softmax_cross_entropy, fl.optim.sgd(), source,
               key=fl.random.key(0), steps=1, batch_size=512, progress=False)
        reset()
        base = peak()          # everything imported, a step's arrays allocated once
        fl.fit(model, fl.losses.softmax_cross_entropy, fl.optim.sgd(), source,
               key=fl.random.key(0), epochs=1, batch_size=512, progress=False)
    print(json.dumps({"growth": peak() - base, "size": x.nbytes}))
""")


@pytest.mark.parametrize("mode", ["fit", "interleave"])
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_memmap_larger_than_the_cache_trains_with_flat_memory(tmp_path, mode):
    n, width = 64_000, 640                       # 164 MB of float32 on disk
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (n, width))
    for lo in range(0, n, 8000):
        x[lo:lo + 8000] = np.random.default_rng(lo).standard_normal((8000, width))
    x.flush()
    del x
    np.save(tmp_path / "y.npy", (np.arange(n) % 2).astype(np.int64))
    script = tmp_path / "rss.py"
    script.write_text(_RSS_SCRIPT)
    env = {"PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}

    def run(m):
        out = subprocess.run([sys.executable, str(script), str(tmp_path), m], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)
    touched = run("touch")
    assert touched["growth"] > 0.8 * touched["size"]       # the measure sees mapped pages
    trained = run(mode)
    assert trained["growth"] < 0.25 * trained["size"], trained   # an epoch over all of it


def test_fit_draws_a_sources_first_batch_once_before_training():
    """The shapes and the pre-flight both use one first batch: a callable source is called
    once for it and once per epoch (an augmentation or a file read is not done twice)."""
    x, y = _signals()
    batches = from_arrays((x, y), 16)
    keys = []

    def source(key):
        keys.append(key)
        return batches(key)

    _, history = _run(source, epochs=2, steps_per_epoch=6)
    assert len(history["loss"]) == 2
    assert len(keys) == 3                                   # the first batch, then 2 epochs
    assert np.array_equal(keys[0], keys[1])                 # epoch 0's key: the same batches
