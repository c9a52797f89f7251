"""A reader of the IDX format of MNIST and Fashion-MNIST (plain or gzipped).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian ``uint32`` per dimension, then the values in C order, big-endian.

References:
  LeCun, Cortes, Burges, "The MNIST database of handwritten digits" (the format's definition,
  yann.lecun.com/exdb/mnist).
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str) -> np.ndarray:
    """The array stored in the IDX file at ``path`` (gzipped or not, told by its first bytes).

    Raises:
      ValueError: the file is not IDX (wrong magic number, unknown type code), or it is
        truncated or longer than its header says.

    Examples:
      >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
      >>> images.shape, images.dtype  # doctest: +SKIP
      ((10000, 28, 28), dtype('uint8'))
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"idx: {path} is a truncated or corrupt gzip file ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _TYPES:
        raise ValueError(
            f"idx: {path} is not an IDX file: magic number {raw[:4].hex() or '(empty)'}, expected "
            f"0000 then a type code in {', '.join(f'{t:02x}' for t in _TYPES)} and the number of dimensions"
        )
    dtype, ndim = np.dtype(_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"idx: {path} is truncated: its header needs {header} bytes, the file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise ValueError(
            f"idx: {path} is {what}: shape {shape} of {dtype.name} needs {expected} bytes of data, found {found}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
