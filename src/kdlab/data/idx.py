"""Reader for the IDX format of MNIST and Fashion-MNIST, strict enough that a truncated download is an error."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

# The third magic byte says the element type; every multi-byte type is big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Whole file, gunzipped when it is a gzip stream (detected by content, not by the name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(f"{path}: truncated gzip stream (the file is incomplete; download it again)") from None
    except (OSError, zlib.error) as err:
        raise DataError(f"{path}: corrupt gzip stream ({err})") from None


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (plain or gzip) into an array of its native type, checking the header against the data.

    ``ndim`` (1 for labels, 3 for images) rejects a labels file passed as images and vice versa.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, shorter than the 4-byte magic number)")
    zero1, zero2, type_code, rank = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or type_code not in _IDX_DTYPES or rank == 0:
        raise DataError(f"{path}: bad magic number 0x{data[:4].hex()} (not an IDX file)")
    if ndim is not None and rank != ndim:
        raise DataError(f"{path}: IDX file has {rank} dimensions, expected {ndim}")
    header_len = 4 + 4 * rank
    if len(data) < header_len:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, the header needs {header_len})")
    shape = struct.unpack(f">{rank}I", data[4:header_len])
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_len
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes"
        raise DataError(
            f"{path}: size does not match the header ({problem}: header {tuple(shape)} needs {expected} bytes "
            f"of data, found {found})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx_pair(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W)`` and labels ``(N,)`` of one split, checking that the counts agree."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{labels_path}: labels/images count mismatch ({labels.shape[0]} labels, "
            f"{images.shape[0]} images in {images_path})"
        )
    return images, labels
