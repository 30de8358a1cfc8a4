"""Read and write IDX files, the format of MNIST and Fashion-MNIST (plain or gzip-compressed).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian
``uint32`` dimension sizes, then the values in C order (big-endian for multi-byte types)::

    images = read_idx("train-images-idx3-ubyte.gz")     # uint8 array of shape (60000, 28, 28)
    write_idx("labels-idx1-ubyte.gz", labels)           # gzip when the name ends in .gz
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import Dict, Union

import numpy as np

__all__ = ["read_idx", "write_idx"]

_DTYPES: Dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder(">") if dtype.itemsize > 1 else dtype: code for code, dtype in _DTYPES.items()}

PathLike = Union[str, "os.PathLike[str]"]


def _open(path: PathLike, mode: str):
    return gzip.open(path, mode) if str(path).endswith(".gz") else open(path, mode)


def read_idx(path: PathLike) -> np.ndarray:
    """The array stored in the IDX file ``path`` (``.gz`` is decompressed), in native byte order.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not an IDX file, or its size does not match its header; the
            message names the path.

    Example:
        >>> import numpy as np, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
        >>> write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
        >>> read_idx(path)
        array([3, 1, 4], dtype=uint8)
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {os.fspath(path)!r}")
    try:
        with _open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:  # e.g. gzip.BadGzipFile, truncated archive
        raise ValueError(f"cannot read IDX file {os.fspath(path)!r}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{os.fspath(path)!r} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{os.fspath(path)!r}: IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{os.fspath(path)!r}: IDX header declares shape {tuple(shape)} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Example:
        >>> import numpy as np, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "images-idx3-ubyte")
        >>> write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8))
        >>> os.path.getsize(path)  # a 16-byte header (magic and three sizes), then the bytes
        1584
    """
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big not in _CODES:
        raise TypeError(
            f"IDX cannot store dtype {array.dtype}; valid dtypes: uint8, int8, int16, int32, float32, float64"
        )
    header = bytes([0, 0, _CODES[big], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with _open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=big).tobytes())
