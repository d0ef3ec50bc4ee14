"""``load_dataset``: one call from a data set's name to train/val/test tensors."""

from __future__ import annotations

import os

from .cifar import cifar_source
from .errors import DataError
from .generic import csv_source, npz_source
from .image_folder import image_folder_source
from .preprocess import Preprocess
from .sources import digits_source, idx_source
from .splits import DataSplits, RawData, build_splits, check_seed, check_val_fraction

KNOWN_DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "npz", "csv", "image_folder")
_OWN_SPLIT_FILES = ("csv",)  # sources that take val_path / test_path


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    if key not in KNOWN_DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    return key


def load_dataset(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = True,
    normalize: bool = True,
    label_column: str | int = -1,
    val_path: str | os.PathLike[str] | None = None,
    test_path: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    stats: Preprocess | None = None,
) -> DataSplits:
    """Load a whole data set into memory as train/val/test tensors.

    ``name``: "digits" (embedded, no file), "fashion_mnist"/"mnist" (IDX files: ``path``, else
    ``$KDLAB_DATA/<name>``, ``~/.cache/kdlab/<name>``, the Debian package's directory; downloaded and verified when
    missing and ``download``), "cifar10"/"cifar100" (python-pickle directory at ``path``), "npz" or "csv" (file at
    ``path``; ``label_column`` picks the CSV's label column; ``val_path``/``test_path``: the CSV's own validation
    and test files), "image_folder" (``path/<class>/*.png`` or ``path/train|val|test/<class>/``; ``image_size``
    resizes). When the source has no validation split,
    ``val_fraction`` of train is carved off, stratified, by ``seed``; sources without a test split (digits, CSV)
    hold out a fixed 20 % that does not depend on ``seed``. Normalisation (``normalize``) statistics come from
    train only — or from ``stats``, a run's saved preprocessing, so that evaluation sees what training saw.
    Every user-facing problem raises :class:`DataError` with one line naming the file and the problem.
    """
    key = _canonical(name)
    val_fraction = check_val_fraction(val_fraction)
    seed = check_seed(seed)
    if (val_path is not None or test_path is not None) and key not in _OWN_SPLIT_FILES:
        raise DataError(f"{key}: val_path/test_path are for {', '.join(_OWN_SPLIT_FILES)} files")
    if image_size is not None and key != "image_folder":
        raise DataError(f"{key}: image_size is for image_folder")
    raw: RawData
    if key == "digits":
        if path is not None:
            raise DataError("digits ships inside scikit-learn and takes no path (use name='npz' or 'csv' for files)")
        raw = digits_source()
    elif key in ("fashion_mnist", "mnist"):
        raw = idx_source(key, path, download)
    elif key in ("cifar10", "cifar100"):
        raw = cifar_source(key, path)
    elif key == "npz":
        raw = npz_source(path)
    elif key == "image_folder":
        raw = image_folder_source(path, image_size)
    else:
        raw = csv_source(path, label_column, val_path=val_path, test_path=test_path)
    return build_splits(raw, name=key, val_fraction=val_fraction, seed=seed, normalize=normalize, stats=stats)
