"""Where IDX data sets are looked for, in a fixed order, so a run never depends on which copy happens to exist."""

from __future__ import annotations

import os
from pathlib import Path

# The four files of an MNIST-style data set, without the optional ".gz".
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Read-only system copies: Debian's `dataset-fashion-mnist` package (`dpkg -L dataset-fashion-mnist`)
# installs the four .gz files flat in this directory. Debian ships no MNIST package.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "mnist": (),
}

# How deep below a search directory the files may sit (e.g. torchvision's ``FashionMNIST/raw/``).
_MAX_DEPTH = 2


def cache_dir(name: str) -> Path:
    """``~/.cache/kdlab/<name>``: where downloads go (``~`` follows ``$HOME``)."""
    return Path.home() / ".cache" / "kdlab" / name


def search_dirs(name: str, path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The directories searched, first match wins: ``path`` alone if given, else ``$KDLAB_DATA/<name>``,
    ``~/.cache/kdlab/<name>`` and the system directories."""
    if path is not None:
        return [Path(path).expanduser()]
    dirs: list[Path] = []
    env = os.environ.get("KDLAB_DATA")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs.append(cache_dir(name))
    dirs.extend(SYSTEM_DIRS.get(name, ()))
    return dirs


def _file_in(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _complete_set(directory: Path) -> dict[str, Path] | None:
    found = {key: _file_in(directory, stem) for key, stem in IDX_FILES.items()}
    if all(found.values()):
        return found  # type: ignore[return-value]
    return None


def find_idx_files(directory: Path) -> dict[str, Path] | None:
    """The four files in ``directory`` or in a subfolder up to two levels down (sorted, so the choice is stable);
    ``None`` when no folder holds all four."""
    level = [directory]
    for _ in range(_MAX_DEPTH + 1):
        next_level: list[Path] = []
        for folder in level:
            if not folder.is_dir():
                continue
            found = _complete_set(folder)
            if found is not None:
                return found
            try:
                next_level.extend(sorted(p for p in folder.iterdir() if p.is_dir()))
            except OSError:
                continue
        level = next_level
    return None


def missing_files(directory: Path) -> list[str]:
    """File stems not present (plain or .gz) directly in ``directory``."""
    return [stem for stem in IDX_FILES.values() if _file_in(directory, stem) is None]
