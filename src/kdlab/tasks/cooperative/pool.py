"""The data side of cooperative distillation: the pooled data set, each learner's rows and columns, the map
between two learners' feature spaces, and the deficiency sets R(i→j).

Every learner's rows are kept in the pooled feature space (``x_full``); a learner sees its own columns of it.
A learner with its own file has only its columns: the others are filled with the pooled training mean, so
that it, too, can be mapped into any peer's space. The map i → j copies the columns both see and fills the
student's other columns (``fill``): with the pooled instance's own values ("original", what the evaluation pool
knows), the student's training mean, or zero (the authors' notebook zero-fills).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdlab.config_cooperative import PoolConfig
from kdlab.data.errors import DataError
from kdlab.data.generic import csv_source, npz_source
from kdlab.data.sources import digits_source
from kdlab.data.splits import stratified_split
from kdlab.errors import ConfigError


@dataclass
class Pool:
    """The pooled data: training rows (shared out to learners), the evaluation pool, the test set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def _flat(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1) * 1.0


def load_pool(cfg: PoolConfig, seed: int) -> Pool:
    """The source's train (+ val) split, of which ``eval_fraction`` (stratified, by ``seed``) is the evaluation
    pool; the source's test split (a fixed 20 % for digits and CSV) measures every learner."""
    try:
        if cfg.name == "digits":
            raw = digits_source()
        elif cfg.name == "npz":
            raw = npz_source(cfg.path)
        else:
            raw = csv_source(cfg.path, cfg.label_column)
    except DataError as err:
        raise ConfigError(f"data: {err}") from None
    x, y = _flat(raw.x_train) * raw.scale, np.asarray(raw.y_train, dtype=np.int64)
    if raw.x_val is not None and raw.y_val is not None:
        x, y = np.concatenate([x, _flat(raw.x_val) * raw.scale]), np.concatenate([y, raw.y_val.astype(np.int64)])
    keep, held = stratified_split(y, cfg.eval_fraction, seed, what="evaluation pool", source=cfg.name)
    return Pool(
        x[keep], y[keep], x[held], y[held], _flat(raw.x_test) * raw.scale, np.asarray(raw.y_test, dtype=np.int64),
        raw.num_classes, tuple(raw.class_names),
    )  # fmt: skip


def share_rows(y: np.ndarray, weights: list[dict[int, float]], num_classes: int, seed: int) -> list[np.ndarray]:
    """Split the rows of every class disjointly among the learners in proportion to their weight for that class
    (default 1): ``{0: 1, 1: 0.05}`` gives a learner a full share of class 0 and a sliver of class 1."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in weights]
    for c in range(num_classes):
        rows = rng.permutation(np.flatnonzero(y == c))
        w = np.array([float(wl.get(c, 1.0)) for wl in weights])
        if w.sum() <= 0:
            continue
        exact = len(rows) * w / w.sum()
        counts = np.floor(exact).astype(int)
        for k in np.argsort(-(exact - counts), kind="stable")[: len(rows) - counts.sum()]:
            counts[k] += 1
        for k, chunk in enumerate(np.split(rows, np.cumsum(counts)[:-1])):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=int) for p in parts]


def fill_missing(x_own: np.ndarray, columns: np.ndarray, n_features: int, fill_row: np.ndarray) -> np.ndarray:
    """A learner's own rows (its columns only) placed in the pooled space, the other columns from ``fill_row``."""
    full = np.tile(fill_row, (len(x_own), 1))
    full[:, columns] = x_own
    return full


def map_features(x_from: np.ndarray, from_cols: np.ndarray, to_cols: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """φ(from → to): the columns both spaces share are copied; the others come from ``fill`` — an array of the
    target's shape (per-row values: "original") or a row broadcast over all rows (its mean, or zeros)."""
    out = np.array(np.broadcast_to(fill, (len(x_from), len(to_cols))), dtype=np.float64)
    where = {int(c): k for k, c in enumerate(from_cols)}
    for k, c in enumerate(to_cols):
        if int(c) in where:
            out[:, k] = x_from[:, where[int(c)]]
    return out


def deficiency_sets(correct: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """R(i→j) = {x : j wrong and i right} = S_j minus S_i, for every ordered pair i ≠ j; ``correct`` is (L, N)."""
    n = len(correct)
    return {(i, j): np.flatnonzero(correct[i] & ~correct[j]) for i in range(n) for j in range(n) if i != j}
