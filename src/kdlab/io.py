"""Atomic file writes: a crash never leaves a half-written result or checkpoint behind.

Everything a run writes gets one mode, the one ``open(path, "w")`` gives (0666 minus the umask; directories
0777 minus the umask): results and weights alike, so sharing a run directory is one ``umask`` decision. Temporary
files are named ``.<name>.<random>.tmp`` beside their target (``TEMP_SUFFIX``): a killed run leaves at most
those, and the next run on the directory removes them (``kdlab.engine.runguard``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    """0666 minus the process umask: the mode ``open(path, "w")`` would have given."""
    return 0o666 & ~_umask()


def set_default_mode(path: str | os.PathLike[str]) -> None:
    """Give a file (or directory) written by a library that picks its own mode (safetensors writes 0600,
    ``mkdtemp`` makes 0700) the mode a normal file (directory) would have."""
    full = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, full & ~_umask())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _default_mode())  # mkstemp makes 0600; results should read like any file
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
