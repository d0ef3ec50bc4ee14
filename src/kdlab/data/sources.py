"""Built-in image sources: scikit-learn's digits (embedded) and MNIST-style IDX sets (found locally or downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .download import MIRRORS, DownloadError, download_idx
from .errors import DataError
from .idx import read_idx_pair
from .locate import IDX_FILES, cache_dir, find_idx_files, search_dirs
from .splits import RawData, check_label_range, stratified_split

# Sources without a test split get a fixed one: the same 20 % (stratified) whatever the `seed`, so a model
# trained with one seed never sees the test set of another seed (e.g. a teacher and its students).
TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_DIGIT_NAMES = tuple(str(i) for i in range(10))


def carve_test(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` with the fixed stratified test split described above."""
    keep, held = stratified_split(y, TEST_FRACTION, TEST_SPLIT_SEED, what="test split", source=source)
    return x[keep], y[keep], x[held], y[held]


def digits_source() -> RawData:
    """scikit-learn's 8×8 digits (1,797 images, pixel values 0..16, shipped with scikit-learn: no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None, :, :]  # the 0..16 values are exact integers
    y = bunch.target.astype(np.int64)
    x_train, y_train, x_test, y_test = carve_test(x, y, "sklearn digits")
    return RawData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        class_names=_DIGIT_NAMES,
        source="sklearn digits",
        scale=1.0 / 16.0,
        per_channel=True,
    )


def _how_to_provide(name: str) -> str:
    files = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    return f"put {files} in $KDLAB_DATA/{name}/ or {cache_dir(name)}, or pass path=DIR"


def locate_idx(name: str, path: str | os.PathLike[str] | None, download: bool) -> dict[str, Path]:
    """The four files of ``name``: the first complete set in the search order, else a verified download
    into ``~/.cache/kdlab/<name>`` (only when no explicit ``path`` was given)."""
    dirs = search_dirs(name, path)
    for directory in dirs:
        files = find_idx_files(directory)
        if files is not None:
            return files
    looked = ", ".join(str(d) for d in dirs)
    if path is not None:
        raise DataError(f"{name}: IDX files not found in {looked}; {_how_to_provide(name)}")
    if not download or name not in MIRRORS:
        hint = _how_to_provide(name)
        raise DataError(f"{name}: IDX files not found (looked in {looked}) and download is off; {hint}")
    target = cache_dir(name)
    try:
        download_idx(name, target)
    except DownloadError as err:
        hint = _how_to_provide(name)
        raise DataError(f"{name}: IDX files not found (looked in {looked}) and {err}; {hint}") from None
    files = find_idx_files(target)
    if files is None:  # pragma: no cover - download_idx either fetched all four or raised
        raise DataError(f"{name}: download into {target} did not produce the four IDX files")
    return files


def idx_source(name: str, path: str | os.PathLike[str] | None, download: bool) -> RawData:
    """MNIST / Fashion-MNIST: 28×28 8-bit grey images, 10 classes, official 60k/10k train/test split."""
    files = locate_idx(name, path, download)
    x_train, y_train = read_idx_pair(files["train_images"], files["train_labels"])
    x_test, y_test = read_idx_pair(files["test_images"], files["test_labels"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{files['test_images']}: image size {x_test.shape[1:]} differs from train's {x_train.shape[1:]}"
        )
    check_label_range(y_train, 10, str(files["train_labels"]))
    check_label_range(y_test, 10, str(files["test_labels"]))
    scale = 1.0 / 255.0 if x_train.dtype == np.uint8 else 1.0
    return RawData(
        x_train=x_train[:, None],
        y_train=y_train.astype(np.int64),
        x_test=x_test[:, None],
        y_test=y_test.astype(np.int64),
        num_classes=10,
        class_names=FASHION_MNIST_CLASSES if name == "fashion_mnist" else _DIGIT_NAMES,
        source=str(files["train_labels"].parent),
        scale=scale,
        per_channel=True,
    )
