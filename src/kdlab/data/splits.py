"""From a source's raw arrays to train/val/test tensors: the validation carve, normalisation and fingerprint.

Statistics come from the training part only (after the validation carve), so nothing about validation or test
data leaks into the inputs the model sees.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .errors import DataError
from .preprocess import Preprocess

_FINGERPRINT_VERSION = b"kdlab.data/v1"
_MIN_STD = 1e-8  # a constant feature or channel is centred, not blown up
_STAT_CHUNK = 4096


@dataclass(frozen=True, eq=False)
class RawData:
    """Arrays as the source stores them (8-bit pixels stay uint8), before the validation carve and scaling.

    ``scale`` multiplies the features when they become float32 (1/255 for 8-bit pixels); ``per_channel`` says
    the features are images ``(N, C, H, W)`` whose statistics are taken per channel rather than per element.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    source: str
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    scale: float = 1.0
    per_channel: bool = False


@dataclass(frozen=True, eq=False)
class DataSplits:
    """A whole data set as in-memory tensors: features float32 (normalised), labels int64.

    ``mean``/``std`` are the statistics that were subtracted/divided (per channel for images, per feature
    otherwise; zeros/ones when ``normalize=False``). ``fingerprint`` changes whenever the raw arrays, the split
    seed, ``val_fraction`` or the normalisation flag change, so caches keyed on it (e.g. teacher logits) go stale.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    in_shape: tuple[int, ...]
    name: str
    mean: torch.Tensor
    std: torch.Tensor
    fingerprint: str
    class_names: tuple[str, ...]
    scale: float = 1.0
    per_channel: bool = False
    standardized: bool = True

    @property
    def preprocess(self) -> Preprocess:
        """What turned the source's raw values into these features (saved with a run as preprocess.json)."""
        return Preprocess(self.scale, self.mean, self.std, self.per_channel, self.standardized, self.fingerprint)

    def __repr__(self) -> str:
        return (
            f"DataSplits(name={self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, in_shape={self.in_shape}, num_classes={self.num_classes}, "
            f"fingerprint={self.fingerprint[:12]}…)"
        )


def check_val_fraction(val_fraction: float) -> float:
    """``0 <= val_fraction < 1``; 0 means no validation set (only when the source brings none)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise DataError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if not (math.isfinite(val_fraction) and 0.0 <= val_fraction < 1.0):
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    return float(val_fraction)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def stratified_split(
    y: np.ndarray, fraction: float, seed: int, *, what: str = "split", source: str = "data"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``, each sorted, with ``fraction`` of the rows held out, class proportions kept.

    Falls back to a plain random split (with a warning) when some class is too rare to stratify.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_held = math.ceil(fraction * n)
    if n_held < 1 or n - n_held < 1:
        raise DataError(
            f"{source}: cannot carve a {what} of fraction {fraction} from {n} samples (one side would be empty)"
        )
    index = np.arange(n)
    try:
        keep, held = train_test_split(index, test_size=n_held, random_state=seed, shuffle=True, stratify=y)
    except ValueError as err:
        warnings.warn(f"{source}: {what} not stratified ({err}); using a plain random split", stacklevel=4)
        keep, held = train_test_split(index, test_size=n_held, random_state=seed, shuffle=True)
    return np.sort(keep), np.sort(held)


def check_label_range(y: np.ndarray, num_classes: int, where: str) -> None:
    """Every label in ``0..num_classes-1``, else a DataError naming ``where`` and the first offending value."""
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min() if y.min() < 0 else y.max())
        raise DataError(f"{where}: label out of range ({bad} not in 0..{num_classes - 1})")


def check_classes(y_train: np.ndarray, class_names: tuple[str, ...], source: str) -> None:
    """A training split with one class, or a class with no training row (labels 1..K instead of 0..K−1 leave
    class 0 empty), trains a model that is silently wrong: one line instead."""
    counts = np.bincount(y_train, minlength=len(class_names))
    present = int((counts > 0).sum())
    if present < 2:
        raise DataError(f"{source}: the training split has a single class ({present} of {len(class_names)})")
    missing = [i for i, c in enumerate(counts) if c == 0]
    if missing:
        first = missing[0]
        hint = "; labels must be 0..K-1 — are they 1..K?" if first == 0 else ""
        raise DataError(
            f"{source}: class {first} ({class_names[first]!r}) has no training rows "
            f"({len(missing)} of {len(class_names)} classes missing){hint}"
        )


def _check_labels(y: np.ndarray, n: int, num_classes: int, part: str, source: str) -> None:
    if y.ndim != 1:
        raise DataError(f"{source}: {part} labels must be 1-D, got shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{source}: {part} has {n} samples but {len(y)} labels")
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: {part} labels must be integers, got dtype {y.dtype}")
    check_label_range(y, num_classes, f"{source} ({part})")


def fingerprint(
    name: str, arrays: dict[str, np.ndarray], *, seed: int, val_fraction: float, normalize: bool, extra: str = ""
) -> str:
    """SHA-256 over the raw split arrays (dtype, shape, bytes) and every setting that shapes the result."""
    h = hashlib.sha256(_FINGERPRINT_VERSION + b"\0" + name.encode() + b"\0")
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{arr.dtype.str}:{arr.shape}\0".encode())
        h.update(arr.reshape(-1).view(np.uint8) if arr.size else b"")
    h.update(f"seed={seed};val_fraction={val_fraction!r};normalize={bool(normalize)};{extra}".encode())
    return h.hexdigest()


def _to_float(x: np.ndarray, scale: float) -> torch.Tensor:
    """A fresh float32 tensor (always a copy: the in-place normalisation must not write into the source)."""
    source = torch.from_numpy(np.require(x, requirements=("C", "W")))  # copies only if read-only/strided
    t = source.to(torch.float32, copy=True)
    if scale != 1.0:
        t.mul_(scale)
    return t


def _statistics(x: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std in float64, two passes over row chunks (no float64 copy of the whole set)."""
    dims = (0, *range(2, x.ndim)) if per_channel else (0,)
    count = math.prod(x.shape[d] for d in dims)
    chunks = x.split(_STAT_CHUNK)
    mean = sum(c.to(torch.float64).sum(dim=dims) for c in chunks) / count
    view = (1, -1, *([1] * (x.ndim - 2))) if per_channel else (1, *x.shape[1:])
    sq = sum((c.to(torch.float64) - mean.view(view)).square_().sum(dim=dims) for c in chunks)
    std = (sq / count).sqrt()
    std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
    return mean.to(torch.float32), std.to(torch.float32)


def train_statistics(data: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardisation statistics of ``data``'s training split as loaded (undoing its own preprocessing)."""
    return _statistics(data.preprocess.invert(data.x_train), data.per_channel)


def build_splits(
    raw: RawData, *, name: str, val_fraction: float, seed: int, normalize: bool, stats: Preprocess | None = None
) -> DataSplits:
    """Carve validation (if the source has none), check labels, fingerprint, convert and normalise — with the
    training split's statistics, or with ``stats`` (a run's saved preprocessing: evaluation reproduces it)."""
    val_fraction = check_val_fraction(val_fraction)
    seed = check_seed(seed)
    normalize = normalize if stats is None else stats.standardize
    x_train, y_train = raw.x_train, raw.y_train
    if raw.x_val is not None and raw.y_val is not None:
        x_val, y_val = raw.x_val, raw.y_val
    elif val_fraction == 0.0:
        x_val, y_val = x_train[:0], y_train[:0]
    else:
        _check_labels(y_train, len(x_train), raw.num_classes, "train", raw.source)
        keep, held = stratified_split(y_train, val_fraction, seed, what="validation split", source=raw.source)
        x_val, y_val = x_train[held], y_train[held]
        x_train, y_train = x_train[keep], y_train[keep]

    parts = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (raw.x_test, raw.y_test)}
    in_shape = tuple(int(d) for d in x_train.shape[1:])
    for part, (x, y) in parts.items():
        if tuple(x.shape[1:]) != in_shape:
            raise DataError(f"{raw.source}: {part} features have shape {x.shape[1:]}, train has {in_shape}")
        _check_labels(y, len(x), raw.num_classes, part, raw.source)
    if len(x_train) == 0:
        raise DataError(f"{raw.source}: the training split is empty")
    check_classes(y_train, raw.class_names, raw.source)
    if raw.per_channel and len(in_shape) != 3:
        raise DataError(f"{raw.source}: images must be (N, C, H, W), got per-sample shape {in_shape}")

    arrays = {f"{k}_{part}": a for part, (x, y) in parts.items() for k, a in (("x", x), ("y", y))}
    digest = fingerprint(
        name,
        arrays,
        seed=seed,
        val_fraction=val_fraction,
        normalize=normalize,
        extra=f"scale={raw.scale!r};classes={raw.num_classes};names={raw.class_names!r}",
    )

    xs = {part: _to_float(x, raw.scale) for part, (x, _) in parts.items()}
    stat_shape = (in_shape[0],) if raw.per_channel else in_shape
    if stats is not None:
        if tuple(stats.mean.shape) != stat_shape or stats.per_channel != raw.per_channel or stats.scale != raw.scale:
            raise DataError(
                f"{raw.source}: the saved preprocessing (statistics of shape {tuple(stats.mean.shape)}, scale "
                f"{stats.scale}) does not fit this data (shape {stat_shape}, scale {raw.scale})"
            )
        mean, std = stats.mean, stats.std
    elif normalize:
        mean, std = _statistics(xs["train"], raw.per_channel)
    else:
        mean, std = torch.zeros(stat_shape), torch.ones(stat_shape)
    if normalize:
        view = (1, in_shape[0], *([1] * (len(in_shape) - 1))) if raw.per_channel else (1, *in_shape)
        for x in xs.values():
            x.sub_(mean.view(view)).div_(std.view(view))
    ys = {part: torch.from_numpy(np.ascontiguousarray(y).astype(np.int64)) for part, (_, y) in parts.items()}
    return DataSplits(
        x_train=xs["train"],
        y_train=ys["train"],
        x_val=xs["val"],
        y_val=ys["val"],
        x_test=xs["test"],
        y_test=ys["test"],
        num_classes=raw.num_classes,
        in_shape=in_shape,
        name=name,
        mean=mean,
        std=std,
        fingerprint=digest,
        class_names=raw.class_names,
        scale=raw.scale,
        per_channel=raw.per_channel,
        standardized=normalize,
    )
