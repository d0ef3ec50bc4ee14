"""Download of MNIST-style IDX files from the official mirrors, checksum-verified and written atomically.

A file reaches the cache only after its whole content matched the published checksum, so an interrupted or
tampered download never leaves a file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kdlab.io import atomic_write_bytes

from .errors import DataError
from .locate import IDX_FILES

# Fashion-MNIST: the S3 website endpoint named in zalandoresearch/fashion-mnist's README (it serves plain http;
# the checksums below are what makes the content trustworthy). MNIST: the ossci-datasets mirror torchvision uses.
MIRRORS: dict[str, str] = {
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}

# MD5 of the published .gz files: Fashion-MNIST from the table in zalandoresearch/fashion-mnist's README,
# MNIST from torchvision/datasets/mnist.py (MNIST.resources). A 64-hex-digit value is taken as SHA-256.
CHECKSUMS: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}

TIMEOUT_S = 30.0  # per blocking socket operation: a dead network fails fast instead of hanging a run
_CHUNK = 1 << 16


class DownloadError(DataError):
    """The network did not deliver a file (as opposed to delivering a wrong one)."""


def _hasher(checksum: str) -> Any:
    if len(checksum) == 32:
        return hashlib.md5(usedforsecurity=False)
    if len(checksum) == 64:
        return hashlib.sha256()
    raise ValueError(f"checksum {checksum!r} is neither an MD5 (32 hex digits) nor a SHA-256 (64 hex digits)")


def _progress(description: str, total: int | None, enabled: bool) -> tuple[Any, Any]:
    """A rich bar on stderr, shown only on a terminal (logs of batch jobs stay clean)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )
    return progress, progress.add_task(description, total=total)


def _reason(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


def download_file(
    url: str, dest: str | os.PathLike[str], checksum: str, *, timeout: float = TIMEOUT_S, progress: bool = True
) -> Path:
    """Fetch ``url`` into memory, verify ``checksum`` (MD5 or SHA-256 hex), then write ``dest`` atomically."""
    dest = Path(dest)
    hasher = _hasher(checksum)
    chunks: list[bytes] = []
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar, task = _progress(f"downloading {dest.name}", total, progress)
            with bar:
                while chunk := response.read(_CHUNK):
                    hasher.update(chunk)
                    chunks.append(chunk)
                    bar.advance(task, len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as err:
        raise DownloadError(f"{url}: download failed ({_reason(err)})") from None
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise DownloadError(f"{url}: download incomplete ({len(data)} of {total} bytes)")
    digest = hasher.hexdigest()
    if digest != checksum.lower():
        raise DataError(f"{url}: checksum mismatch (got {digest}, expected {checksum}); nothing was written to {dest}")
    return atomic_write_bytes(dest, data)


def download_idx(name: str, directory: str | os.PathLike[str], *, timeout: float = TIMEOUT_S) -> Path:
    """Download the four IDX files of ``name`` that ``directory`` lacks; return ``directory``."""
    if name not in MIRRORS:
        raise DataError(f"no download mirror for data set {name!r}")
    directory = Path(directory)
    base = MIRRORS[name]
    checksums = CHECKSUMS[name]
    for stem in IDX_FILES.values():
        if (directory / stem).is_file() or (directory / f"{stem}.gz").is_file():
            continue
        filename = f"{stem}.gz"
        download_file(base + filename, directory / filename, checksums[filename], timeout=timeout)
    return directory
