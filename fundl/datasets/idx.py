"""Reader for the IDX format of the MNIST files (plain or gzip-compressed).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <rank>``, then
``rank`` big-endian uint32 dimension sizes, then the data in big-endian C order.
"""

from __future__ import annotations

import gzip
import os
from typing import Union

import numpy as np

__all__ = ["load_idx", "IdxError"]

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxError(ValueError):
    """A file that is not a valid IDX file (bad magic number, truncated, too long)."""


def load_idx(path: Union[str, "os.PathLike[str]"]) -> np.ndarray:
    """Read an IDX file (``.gz`` or not, detected from the content) into an array.

    Returns an array of the stored shape in native byte order (uint8 for MNIST
    images ``(n, 28, 28)`` and labels ``(n,)``).  Raises :class:`IdxError`
    naming the path for a non-IDX, truncated or over-long file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise IdxError(f"{path}: corrupt or truncated gzip data ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxError(f"{path}: not an IDX file (the magic number must start with two zero "
                       f"bytes, got {raw[:4].hex() or 'an empty file'})")
    code, rank = raw[2], raw[3]
    if code not in _DTYPES:
        raise IdxError(f"{path}: unknown IDX data type code 0x{code:02x} "
                       f"(known: {', '.join(f'0x{c:02x}' for c in _DTYPES)})")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise IdxError(f"{path}: truncated header: rank {rank} needs {header} bytes, "
                       f"file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    dtype = _DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise IdxError(f"{path}: {problem}: shape {shape} of {dtype.str} needs {expected} bytes, "
                       f"file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)
