"""The user's own data: an .npz of ready arrays, or a CSV table with a header and a label column."""

from __future__ import annotations

import contextlib
import csv
import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .sources import carve_test
from .splits import RawData

_NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _require_path(kind: str, path: str | os.PathLike[str] | None, what: str) -> Path:
    if path is None:
        raise DataError(f"{kind}: pass path=FILE, {what}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{file}: file not found")
    return file


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """Integer class indices; float labels are accepted only when they hold whole numbers."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D class indices, got shape {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    raise DataError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")


def _features(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim < 2:
        raise DataError(f"{where}: features must have shape (N, ...) with at least one feature axis, got {x.shape}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: features must be numeric, got dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{where}: features contain NaN or infinity")
    return x


def npz_source(path: str | os.PathLike[str] | None) -> RawData:
    """An .npz with ``x_train, y_train, x_test, y_test`` and optionally ``x_val, y_val`` and ``class_names``.

    Features may have any per-sample shape. 4-D features are taken as channel-first images ``(N, C, H, W)``
    (statistics per channel); anything else is normalised per element. ``uint8`` features are taken as 8-bit
    intensities and scaled to [0, 1]. Loaded with ``allow_pickle=False``: an .npz never executes code.
    """
    file = _require_path("npz", path, f"an .npz holding {', '.join(_NPZ_REQUIRED)} (optionally x_val, y_val)")
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{file}: unreadable .npz ({err})") from None
    if not hasattr(archive, "files"):
        raise DataError(f"{file}: not an .npz archive (a single .npy array?); save with np.savez(x_train=..., ...)")
    with archive:
        keys = set(archive.files)
        missing = [k for k in _NPZ_REQUIRED if k not in keys]
        if missing:
            raise DataError(f"{file}: missing key(s) {', '.join(missing)} (has: {', '.join(sorted(keys)) or 'none'})")
        if ("x_val" in keys) != ("y_val" in keys):
            raise DataError(f"{file}: has only one of x_val and y_val; give both or neither")
        wanted = [k for k in (*_NPZ_REQUIRED, "x_val", "y_val", "class_names") if k in keys]
        try:
            arrays = {k: archive[k] for k in wanted}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{file}: unreadable .npz member ({err})") from None
    x = {k: _features(arrays[k], f"{file}[{k}]") for k in ("x_train", "x_val", "x_test") if k in arrays}
    y = {k: _labels(arrays[k], f"{file}[{k}]") for k in ("y_train", "y_val", "y_test") if k in arrays}
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{file}[class_names]: must be a 1-D array of strings, got {names.dtype} {names.shape}")
        class_names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist())
    else:
        top = max((int(v.max()) for v in y.values() if v.size), default=-1)
        class_names = tuple(str(i) for i in range(top + 1))
    if not class_names:
        raise DataError(f"{file}: no labels")
    uint8 = all(v.dtype == np.uint8 for v in x.values())
    return RawData(
        x_train=x["x_train"],
        y_train=y["y_train"],
        x_val=x.get("x_val"),
        y_val=y.get("y_val"),
        x_test=x["x_test"],
        y_test=y["y_test"],
        num_classes=len(class_names),
        class_names=class_names,
        source=str(file),
        scale=1.0 / 255.0 if uint8 else 1.0,
        per_channel=x["x_train"].ndim == 4,
    )


def _label_index(header: list[str], label_column: str | int, file: Path) -> int:
    if isinstance(label_column, bool) or not isinstance(label_column, str | int):
        raise DataError(f"{file}: label_column must be a column name or index, got {label_column!r}")
    if isinstance(label_column, str):
        names = [h.strip() for h in header]
        if label_column not in names:
            raise DataError(f"{file}: no column {label_column!r} for the labels (columns: {', '.join(names)})")
        return names.index(label_column)
    if not -len(header) <= label_column < len(header):
        raise DataError(f"{file}: label_column {label_column} out of range for {len(header)} columns")
    return label_column % len(header)


def _parse_features(rows: list[list[str]], columns: list[str], file: Path) -> np.ndarray:
    """Fast path: numpy converts the whole table; on failure, find the first bad cell for the message."""
    try:
        table = np.asarray(rows, dtype=str).astype(np.float64)
        if np.all(np.isfinite(table)):
            return table
    except ValueError:
        pass
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            try:
                value = float(cell)
            except ValueError:
                value = None
            if value is None or not np.isfinite(value):
                raise DataError(
                    f"{file}: data row {i + 1}, column {columns[j]!r}: {cell!r} is not a finite number"
                ) from None
    raise DataError(f"{file}: features could not be parsed as numbers")  # pragma: no cover - loop above finds it


def _encode_labels(raw: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Sorted unique labels → 0..K-1; integer-like labels sort numerically ("2" before "10")."""
    unique = sorted(set(raw))
    with contextlib.suppress(ValueError):
        unique = sorted(unique, key=int)
    index = {label: i for i, label in enumerate(unique)}
    return np.array([index[v] for v in raw], dtype=np.int64), tuple(unique)


def _read_csv(file: Path, label_column: str | int) -> tuple[list[str], np.ndarray, list[str]]:
    """``(header, features float32, labels as written)`` of one CSV file."""
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            lines = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (OSError, csv.Error) as err:
        raise DataError(f"{file}: unreadable CSV ({err})") from None
    if not lines:
        raise DataError(f"{file}: empty CSV (a header row and data rows are expected)")
    header, body = lines[0], lines[1:]
    if len(header) < 2:
        raise DataError(f"{file}: needs at least two columns (features and a label), header has {len(header)}")
    if not body:
        raise DataError(f"{file}: no data rows below the header")
    label_at = _label_index(header, label_column, file)
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{file}: data row {i + 1} has {len(row)} fields, the header has {len(header)}")
    feature_cols = [j for j in range(len(header)) if j != label_at]
    x = _parse_features(
        [[row[j] for j in feature_cols] for row in body], [header[j].strip() for j in feature_cols], file
    )
    labels = [row[label_at].strip() for row in body]
    if any(not v for v in labels):
        raise DataError(f"{file}: empty label in column {header[label_at].strip()!r}")
    return [h.strip() for h in header], x.astype(np.float32), labels


def csv_source(
    path: str | os.PathLike[str] | None,
    label_column: str | int = -1,
    *,
    val_path: str | os.PathLike[str] | None = None,
    test_path: str | os.PathLike[str] | None = None,
) -> RawData:
    """A CSV with a header row; one label column (name or index, default last), every other column numeric.

    Labels may be strings: the sorted unique values (of every file) become classes 0..K-1 and ``class_names``.
    ``val_path``/``test_path``: the user's own validation / test files with the same columns. Without a test
    file, a fixed 20 % (stratified, independent of ``seed``) of the main file is held out as test.
    """
    file = _require_path("csv", path, "a CSV with a header row and a label column")
    header, x, labels = _read_csv(file, label_column)
    parts = {"train": (x, labels)}
    for part, extra in (("val", val_path), ("test", test_path)):
        if extra is not None:
            other = _require_path("csv", extra, f"the {part} CSV")
            other_header, other_x, other_labels = _read_csv(other, label_column)
            if other_header != header:
                raise DataError(
                    f"{other}: columns differ from {file} ({', '.join(other_header)} vs {', '.join(header)})"
                )
            parts[part] = (other_x, other_labels)
    everything = [v for _, found in parts.values() for v in found]
    encoded, class_names = _encode_labels(everything)
    ys, at = {}, 0
    for part, (_, found) in parts.items():
        ys[part], at = encoded[at : at + len(found)], at + len(found)
    if "test" in parts:
        x_train, y_train, x_test, y_test = x, ys["train"], parts["test"][0], ys["test"]
    else:
        x_train, y_train, x_test, y_test = carve_test(x, ys["train"], str(file))
    return RawData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        x_val=parts["val"][0] if "val" in parts else None,
        y_val=ys.get("val"),
        num_classes=len(class_names),
        class_names=class_names,
        source=str(file),
    )
