"""CIFAR-10/100 from the official "python version" directories (pickled dicts of numpy arrays).

Security: pickle is the format these data sets are distributed in, and unpickling a file from an untrusted
source can execute arbitrary code. Only load CIFAR directories you obtained from the official site
(https://www.cs.toronto.edu/~kriz/cifar.html) or another source you trust. As a defence in depth the unpickler
below resolves only the handful of numpy globals that plain arrays need and refuses everything else; that
narrows the attack surface but is not a proof of safety.
"""

from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .splits import RawData, check_label_range


@dataclass(frozen=True)
class _Layout:
    folder: str  # the directory name inside the official archive
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    num_classes: int


_LAYOUTS = {
    "cifar10": _Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        10,
    ),
    "cifar100": _Layout("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names", 100),
}

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
}


def _numpy_core(submodule: str) -> Any:
    """``numpy._core.<submodule>`` (numpy >= 2, also aliased by 1.26) or the older ``numpy.core.<submodule>``."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # pragma: no cover - numpy < 1.26
        return importlib.import_module(f"numpy.core.{submodule}")


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals that pickled numpy arrays use; any other global is an error."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} (not part of a CIFAR batch)")
        if module.startswith(("numpy.core.", "numpy._core.")):
            return getattr(_numpy_core(module.rsplit(".", 1)[1]), name)
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys (the files are Python 2 pickles: keys and names are bytes)."""
    try:
        with path.open("rb") as handle:
            obj = _ArrayUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, KeyError, TypeError) as err:
        raise DataError(f"{path}: corrupt or not a CIFAR pickle ({type(err).__name__}: {err})") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read CIFAR pickle ({err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR pickle (expected a dict, got {type(obj).__name__})")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)} (has: {', '.join(sorted(batch))})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: {label_key} must be a list of integers, got {labels.dtype} {labels.shape}")
    if len(labels) != len(data):
        raise DataError(f"{path}: labels/images count mismatch ({len(labels)} labels, {len(data)} images)")
    check_label_range(labels, num_classes, str(path))
    # Rows are channel-major (1024 red, 1024 green, 1024 blue values), i.e. already (C, H, W) once reshaped.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _directory(name: str, path: str | os.PathLike[str] | None) -> tuple[Path, _Layout]:
    layout = _LAYOUTS[name]
    if path is None:
        raise DataError(
            f"{name}: pass path=DIR, the extracted '{layout.folder}' directory of the python version from "
            "https://www.cs.toronto.edu/~kriz/cifar.html (kdlab does not download CIFAR)"
        )
    root = Path(path).expanduser()
    if (root / layout.folder).is_dir() and not (root / layout.test).exists():
        root = root / layout.folder  # the parent of the extracted folder is accepted too
    if not root.is_dir():
        raise DataError(f"{name}: {root} is not a directory (expected the extracted '{layout.folder}' folder)")
    missing = [f for f in (*layout.train, layout.test) if not (root / f).is_file()]
    if missing:
        raise DataError(f"{name}: {root} lacks {', '.join(missing)} (expected the extracted '{layout.folder}' folder)")
    return root, layout


def cifar_source(name: str, path: str | os.PathLike[str] | None) -> RawData:
    """CIFAR-10 (5 training batches + test batch) or CIFAR-100 (fine labels), 3×32×32 8-bit images.

    Uses pickle (the data set's own format): see the module docstring for the security caveat.
    """
    root, layout = _directory(name, path)
    parts = [_batch(root / f, layout.label_key, layout.num_classes) for f in layout.train]
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    x_test, y_test = _batch(root / layout.test, layout.label_key, layout.num_classes)
    class_names = tuple(str(i) for i in range(layout.num_classes))
    meta_path = root / layout.meta
    if meta_path.is_file():
        names = _unpickle(meta_path).get(layout.names_key)
        if isinstance(names, list) and len(names) == layout.num_classes:
            class_names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    return RawData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=layout.num_classes,
        class_names=class_names,
        source=str(root),
        scale=1.0 / 255.0,
        per_channel=True,
    )
