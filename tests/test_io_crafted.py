"""Crafted checkpoint and safetensors files: every one loads as exactly what it holds or raises
CheckpointError, quickly -- never a hang, a huge allocation or a raw error.

On 76c14af a 565-byte .npz whose member is dtype |V0 of shape (10**13,) spun for hours in
``value.copy(order="K")`` and |S0 raised a raw 9 TiB MemoryError.
"""

import faulthandler
import io as pyio
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fundl as fl
from fundl.io import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- crafting

def npy_bytes(descr, shape, data=b"", fortran=False):
    """An .npy member with exactly this header (whatever it claims) and these data bytes."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("utf-8")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def crafted_npz(path, member_bytes):
    """A fundl checkpoint whose structure record is one array leaf, stored in ``x.npy``."""
    record = json.dumps({"format": "fundl.io", "version": 2,
                         "tree": {"t": "array", "member": "x.npy"}}).encode()
    buf = pyio.BytesIO()
    np.save(buf, np.frombuffer(record, np.uint8))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", member_bytes)
        z.writestr("__fundl_structure__.npy", buf.getvalue())
    return path


HOSTILE = {   # descr, shape: each one hung, allocated terabytes or raised a raw error
    "V0": ("|V0", (10 ** 13,)),
    "S0": ("|S0", (10 ** 13,)),
    "U0": ("<U0", (10 ** 13,)),
    "structured_V0": ([("a", "|V0")], (10 ** 13,)),
    "structured_empty": ([], (10 ** 13,)),
    "structured_zero_subarray": ([("a", "<f4", (0,))], (10 ** 13,)),
    "subarray": (("<f4", (10 ** 6,)), (0,)),
    "V0_scalar": ("|V0", ()),
    "huge_empty": ("<f4", (0, 2 ** 62)),
    "huge_empty_dims": ("<f8", (2 ** 40, 0, 2 ** 40)),
}


def test_the_crafted_files_raise_checkpoint_error_in_a_subprocess_within_seconds(tmp_path):
    """Run in a child process with a timeout, so that a regression fails instead of hanging the
    suite; each file must raise CheckpointError in under 5 s (it takes about 1 ms)."""
    files = {name: str(crafted_npz(tmp_path / f"{name}.npz", npy_bytes(*spec)))
             for name, spec in HOSTILE.items()}
    assert os.path.getsize(files["V0"]) < 600
    child = textwrap.dedent("""
        import json, sys, time
        import fundl as fl
        out = {}
        for name, path in json.loads(sys.argv[1]).items():
            t = time.perf_counter()
            try:
                fl.io.load(path)
                out[name] = ["loaded", 0.0, ""]
            except Exception as err:
                out[name] = [type(err).__name__, time.perf_counter() - t, str(err)]
        print(json.dumps(out))
    """)
    run = subprocess.run([sys.executable, "-c", child, json.dumps(files)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    for name, (kind, seconds, message) in out.items():
        assert kind == "CheckpointError", (name, kind, message)
        assert seconds < 5.0, (name, seconds)
        assert files[name] in message and "x.npy" in message, message
    assert "its dtype |V0 is a structured, void or subarray dtype" in out["V0"][2]
    assert "its dtype |S0 has elements of 0 bytes" in out["S0"][2]
    assert "has a shape (0, 4611686018427387904) too large for any array" in out["huge_empty"][2]


# ----------------------------------------------------------------------------- save refuses what load would

def test_a_masked_array_is_refused_not_saved_without_its_mask(tmp_path):
    """On 76c14af the mask was dropped silently: it loaded as the plain data."""
    x = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    with pytest.raises(CheckpointError, match=r"cannot save 'a/x': a numpy.ma.MaskedArray is not a "
                                              r"plain numpy array and its mask would be lost; save "
                                              r"np.ma.getdata\(x\) and np.ma.getmaskarray\(x\)"):
        fl.io.save(tmp_path / "m.npz", {"a": {"x": x}})
    assert not (tmp_path / "m.npz").exists()
    fl.io.save(tmp_path / "m.npz", {"data": np.ma.getdata(x), "mask": np.ma.getmaskarray(x)})
    back = fl.io.load(tmp_path / "m.npz")
    restored = np.ma.masked_array(back["data"], mask=back["mask"])
    assert restored.mask.tolist() == [False, True, False] and restored.sum() == 4.0


def test_other_array_classes_and_dtypes_a_checkpoint_does_not_hold(tmp_path):
    with pytest.warns(PendingDeprecationWarning):
        matrix = np.matrix([[1.0, 2.0]])
    with pytest.raises(CheckpointError, match=r"'m': a numpy.matrix is not a plain numpy array"):
        fl.io.save(tmp_path / "x.npz", {"m": matrix})
    with pytest.raises(CheckpointError, match=r"'v': its dtype \|V0 is a structured, void or "
                                              r"subarray dtype"):
        fl.io.save(tmp_path / "x.npz", {"v": np.zeros(3, "V0")})
    with pytest.raises(CheckpointError, match=r"'r': its dtype \[\('a', '<f4'\), \('b', '<i8'\)\] is "
                                              r"a structured"):
        fl.io.save(tmp_path / "x.npz", {"r": np.zeros(2, [("a", "<f4"), ("b", "<i8")])})
    # a memmap is a plain array on disk: its data is stored and loads as an ndarray
    mm = np.memmap(tmp_path / "mm.bin", np.float32, "w+", shape=(3,))
    mm[:] = [1, 2, 3]
    fl.io.save(tmp_path / "x.npz", {"mm": mm})
    back = fl.io.load(tmp_path / "x.npz")["mm"]
    assert type(back) is np.ndarray and back.tolist() == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------- fuzzed .npy headers

def _valid_descrs():
    return st.one_of(
        hnp.boolean_dtypes(), hnp.integer_dtypes(endianness="?"),
        hnp.unsigned_integer_dtypes(endianness="?"), hnp.floating_dtypes(endianness="?"),
        hnp.complex_number_dtypes(endianness="?"), hnp.datetime64_dtypes(),
        hnp.timedelta64_dtypes(), hnp.byte_string_dtypes(max_len=3),
        hnp.unicode_string_dtypes(max_len=3)).map(lambda d: d.str)


_hostile_descrs = st.one_of(
    st.sampled_from(["|V0", "|S0", "<U0", "|V8", "|V1", "|O", "<f4", "|b1", "<M8[s]", "nope",
                     "<f3", ">V0", "|u1"]),
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                       st.sampled_from(["<f4", "|V0", "|u1", "<U0", "|S0"])),
             max_size=2, unique_by=lambda f: f[0]),
    st.tuples(st.sampled_from(["<f4", "|u1", "|V0"]),
              st.tuples(st.sampled_from([0, 1, 3, 10 ** 6, 10 ** 13]))),
    st.text(max_size=6),
)
_dims = st.one_of(st.integers(0, 4), st.sampled_from([2 ** 31, 2 ** 40, 10 ** 13, 2 ** 62, 2 ** 63,
                                                      2 ** 64]))


def _expected(descr, shape, data, fortran):
    """The one right outcome: the array the bytes hold, or None for CheckpointError."""
    try:
        dtype = np.lib.format.descr_to_dtype(descr)
    except Exception:
        return None
    if (dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None
            or dtype.kind not in "biufcmMSU" or dtype.itemsize == 0):
        return None
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count * dtype.itemsize != len(data):
        return None
    nonzero = 1
    for d in shape:
        nonzero *= d or 1
    if nonzero * dtype.itemsize > np.iinfo(np.intp).max:
        return None
    flat = np.frombuffer(data, dtype, count=count)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


@pytest.fixture()
def watchdog():
    """Kill the test process (with a traceback) if a case hangs in C code, where no Python-level
    timeout can interrupt it: the suite fails instead of hanging."""
    faulthandler.dump_traceback_later(300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@settings(max_examples=300, deadline=2000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(descr=st.one_of(_valid_descrs(), _hostile_descrs),
       shape=st.lists(_dims, max_size=4).map(tuple), fortran=st.booleans(),
       size=st.one_of(st.just(-1), st.integers(0, 64)), seed=st.integers(0, 2 ** 32 - 1))
def test_fuzzed_npy_headers_load_exactly_or_raise_checkpoint_error(
        tmp_path, watchdog, descr, shape, fortran, size, seed):
    """``size=-1``: as many data bytes as the header claims (when that is small)."""
    try:
        claimed = int(np.prod(shape, dtype=object)) * np.lib.format.descr_to_dtype(descr).itemsize
    except Exception:
        claimed = 0
    n = claimed if size == -1 and 0 <= claimed <= 4096 else max(size, 0)
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    path = crafted_npz(tmp_path / "fuzz.npz", npy_bytes(descr, shape, data, fortran))
    want = _expected(descr, shape, data, fortran)
    start = time.perf_counter()
    try:
        got = fl.io.load(path)
    except CheckpointError:
        assert want is None, (descr, shape, fortran, len(data))
        event("CheckpointError")
        return
    finally:
        assert time.perf_counter() - start < 2.0
    assert want is not None, ("loaded what should be refused", descr, shape)
    event(f"loaded {want.dtype.kind} {'empty' if want.size == 0 else 'data'}")
    assert got.dtype.str == want.dtype.str and got.shape == want.shape
    assert got.tobytes(order="A") == want.tobytes(order="A") and got.flags.writeable


# ----------------------------------------------------------------------------- safetensors

st_numpy = pytest.importorskip("safetensors.numpy")

_ST_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4,
              "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8, "F8_E4M3": 1,
              "F8_E5M2": 1}
_NUMPY = {"BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "F16": "<f2",
          "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8",
          "C64": "<c8"}


def safetensors_bytes(header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def test_a_valid_bf16_file_names_the_dtype_and_the_tensor(tmp_path):
    """On 76c14af: 'not a readable safetensors file (KeyError: 'BF16')'."""
    header = {"b": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
              "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [12, 24]}}
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(12) + b"\x80?" * 6))
    with pytest.raises(CheckpointError, match=r"tensor 'w' has dtype BF16, which fundl cannot "
                                              r"load: numpy has no bfloat16; convert it before "
                                              r"saving \(in PyTorch: tensor.float\(\)\)"):
        fl.io.load_safetensors(path)
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    save_file({"w": torch.ones(2, 3, dtype=torch.bfloat16)}, str(tmp_path / "torch.safetensors"))
    with pytest.raises(CheckpointError, match="tensor 'w' has dtype BF16"):
        fl.io.load_safetensors(tmp_path / "torch.safetensors")
    save_file({"w": torch.ones(2, 3, dtype=torch.bfloat16).float()}, str(tmp_path / "ok.safetensors"))
    assert fl.io.load_safetensors(tmp_path / "ok.safetensors")["w"].dtype == np.float32


_st_entry = st.fixed_dictionaries({
    "dtype": st.one_of(*[st.sampled_from(sorted(_NUMPY))] * 3, st.sampled_from(sorted(_ST_DTYPES)),
                       st.text(max_size=4)),
    "shape": st.lists(st.one_of(*[st.integers(0, 4)] * 6, st.sampled_from([2 ** 40, 2 ** 62, 2 ** 64])),
                      max_size=3),
    "offsets": st.one_of(*[st.just("exact")] * 3, st.tuples(st.integers(0, 80), st.integers(0, 80))),
})


@settings(max_examples=300, deadline=2000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(st.sampled_from(["a", "b/c", "d", "__metadata__"]), _st_entry,
                               min_size=1, max_size=3),
       extra=st.integers(0, 16), seed=st.integers(0, 2 ** 32 - 1),
       truncate=st.one_of(*[st.none()] * 4, st.integers(0, 200)))
def test_fuzzed_safetensors_load_exactly_or_raise_checkpoint_error(
        tmp_path, watchdog, entries, extra, seed, truncate):
    """A loaded tensor holds exactly the bytes its offsets name; a dtype numpy lacks is a
    CheckpointError naming the tensor; anything else malformed is a CheckpointError."""
    header, at = {}, 0
    for name, e in entries.items():
        if name == "__metadata__":
            header[name] = {"fundl.paths": json.dumps(["d", "a"])}
            continue
        size = int(np.prod(e["shape"], dtype=object)) * _ST_DTYPES.get(e["dtype"], 1)
        lo, hi = (at, at + size) if e["offsets"] == "exact" and size <= 64 else \
            (e["offsets"] if e["offsets"] != "exact" else (at, at + 1))
        at = max(at, hi)
        header[name] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [lo, hi]}
    extra = 1 if extra == 0 else 0   # one byte beyond the tensors, sometimes
    data = np.random.default_rng(seed).integers(0, 256, at + extra, dtype=np.uint8).tobytes()
    blob = safetensors_bytes(header, data)
    if truncate is not None:
        blob = blob[:truncate]
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    start = time.perf_counter()
    try:
        got = fl.io.load_safetensors(path)
    except CheckpointError as err:
        odd = [n for n, e in header.items() if n != "__metadata__" and e["dtype"] not in _NUMPY]
        if odd and truncate is None and str(err).find("which fundl cannot load") >= 0:
            assert any(f"tensor '{n}' has dtype {header[n]['dtype']}" in str(err) for n in odd)
            event("dtype numpy lacks")
        event("CheckpointError")
        return
    finally:
        assert time.perf_counter() - start < 2.0
    assert truncate is None or truncate >= len(safetensors_bytes(header, data))
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            else:
                flat[prefix + k] = v
    walk(got, "")
    tensors = {n: e for n, e in header.items() if n != "__metadata__"}
    assert set(flat) == set(tensors)
    event(f"loaded {len(tensors)} tensors")
    offset = 8 + len(blob) - len(data) - 8
    for name, e in tensors.items():
        lo, hi = e["data_offsets"]
        want = np.frombuffer(blob[offset + lo:offset + hi], _NUMPY[e["dtype"]]).reshape(e["shape"])
        assert flat[name].dtype == want.dtype and flat[name].shape == want.shape
        assert flat[name].tobytes() == want.tobytes()
