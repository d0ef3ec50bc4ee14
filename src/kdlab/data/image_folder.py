"""An image folder: ``root/<class name>/*.png|jpg|…`` read with Pillow, the layout torchvision's ImageFolder uses.

``root`` holds either the class folders themselves (then the fixed 20 % test split of ``carve_test`` is held
out) or ``train/``, and optionally ``val/`` and ``test/``, each with the same class folders. Class names are the
folder names, sorted; every image becomes 8-bit channels-first (grey when every image is grey, else RGB) of one
size (``image_size`` resizes; without it, differing sizes are an error naming the file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DataError
from .sources import carve_test
from .splits import RawData

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_SPLITS = ("train", "val", "test")


def _class_files(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {c.name: sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}


def _read(files: list[Path], image_size: int | None) -> tuple[np.ndarray, bool]:
    """``(N, H, W, C)`` uint8 and whether every image was grey; one size for all (or ``image_size``)."""
    from PIL import Image, UnidentifiedImageError
    from rich.progress import track

    images, grey, size = [], True, None
    steps = track(files, description="reading images", transient=True) if len(files) > 2000 else files
    for file in steps:
        try:
            with Image.open(file) as image:
                image.load()
                mode = "L" if image.mode in ("L", "1", "I;16", "I") else "RGB"
                picture = image.convert(mode)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DataError(f"{file}: unreadable image ({err})") from None
        if image_size is not None:
            picture = picture.resize((image_size, image_size), Image.Resampling.BILINEAR)
        if size is None:
            size = picture.size
        elif picture.size != size:
            raise DataError(
                f"{file}: image is {picture.size[0]}x{picture.size[1]}, the others {size[0]}x{size[1]}; "
                "set data.image_size to resize every image"
            )
        grey = grey and mode == "L"
        images.append(picture)
    mode = "L" if grey else "RGB"
    arrays = [np.asarray(p if p.mode == mode else p.convert(mode), dtype=np.uint8) for p in images]
    stacked = np.stack(arrays)
    return (stacked[..., None] if grey else stacked), grey


def image_folder_source(path: str | os.PathLike[str] | None, image_size: int | None = None) -> RawData:
    """The images under ``path`` as a ``RawData`` of uint8 ``(N, C, H, W)`` (scaled to [0, 1], statistics per
    channel)."""
    if path is None:
        raise DataError("image_folder: pass path=DIR holding one folder per class (or train/, val/, test/)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
        raise DataError(f"image_folder: image_size must be a positive integer, got {image_size!r}")
    split_dirs = {s: root / s for s in _SPLITS if (root / s).is_dir()}
    if "train" not in split_dirs and ("val" in split_dirs or "test" in split_dirs):
        raise DataError(f"{root}: has val/ or test/ but no train/ folder")
    layout = {s: _class_files(d) for s, d in split_dirs.items()} if split_dirs else {"train": _class_files(root)}
    class_names = tuple(layout["train"])
    if not class_names:
        raise DataError(f"{root}: no class folders (expected {root}/<class name>/<image files>)")
    for split, classes in layout.items():
        unknown = sorted(set(classes) - set(class_names))
        if unknown:
            raise DataError(f"{root / split}: class folder {unknown[0]!r} is not among train's classes")
    files: list[Path] = []
    labels: list[int] = []
    bounds: dict[str, tuple[int, int]] = {}
    for split, classes in layout.items():
        start = len(files)
        for name, found in classes.items():
            files.extend(found)
            labels.extend([class_names.index(name)] * len(found))
        bounds[split] = (start, len(files))
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    pixels, _ = _read(files, image_size)
    x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
    y = np.asarray(labels, dtype=np.int64)
    part = {split: (x[a:b], y[a:b]) for split, (a, b) in bounds.items()}
    if "test" in part:
        x_train, y_train = part["train"]
        x_test, y_test = part["test"]
    else:
        x_train, y_train, x_test, y_test = carve_test(*part["train"], str(root))
    x_val, y_val = part.get("val", (None, None))
    return RawData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        x_val=x_val,
        y_val=y_val,
        num_classes=len(class_names),
        class_names=class_names,
        source=str(root),
        scale=1.0 / 255.0,
        per_channel=True,
    )
