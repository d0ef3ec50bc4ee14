"""Train, validation and test never share a row: by row index and by content, for every loader.

A loader returns tensors, not indices, so each test recovers where a row came from: the generic loaders get files
whose first feature is the row's id (rows are found by index), and for every loader the rows of all splits together
must be exactly the rows of the raw data, as a multiset of (features, label) — a row copied from one split into
another (sizes unchanged) adds one copy of it and removes another row. Two splits may hold identical rows only when
the raw data itself holds that row more than once (the npz case below has such duplicates on purpose).
"""

from __future__ import annotations

import csv
import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from kdlab.data import load_dataset
from kdlab.data.splits import stratified_split

SPLITS = ("train", "val", "test")


def _keys(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    """One content fingerprint per row: its integer feature values and its label."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1).astype(np.int64))
    return [row.tobytes() + int(label).to_bytes(8, "little") for row, label in zip(flat, y, strict=True)]


def _split_keys(splits, factor: float) -> dict[str, list[bytes]]:
    """Fingerprints of each split's rows, the features brought back to the raw integers (x · factor)."""
    out = {}
    for name in SPLITS:
        x = getattr(splits, f"x_{name}").numpy().astype(np.float64) * factor
        assert np.abs(x - np.rint(x)).max(initial=0.0) < 1e-4  # an unnormalised load gives the raw values back
        out[name] = _keys(np.rint(x), getattr(splits, f"y_{name}").numpy())
    return out


def assert_no_leak(split_keys: dict[str, list[bytes]], raw_keys: list[bytes]) -> None:
    raw = Counter(raw_keys)
    counts = {name: Counter(keys) for name, keys in split_keys.items()}
    for a, b in itertools.combinations(split_keys, 2):
        for key in counts[a].keys() & counts[b].keys():
            assert raw[key] >= counts[a][key] + counts[b][key], f"a row of {a} is also in {b}"
    together = sum(counts.values(), Counter())
    assert together == raw, "the splits together are not the raw rows (a row duplicated into a split, or lost)"


def _ids(splits, name: str) -> list[int]:
    """The row ids stored in the first feature (files written by these tests)."""
    return [int(v) for v in getattr(splits, f"x_{name}")[:, 0].round().tolist()]


def assert_ids_partition(splits, train_and_val: range, test: range | None = None) -> None:
    ids = {name: _ids(splits, name) for name in SPLITS}
    for name, values in ids.items():
        assert len(set(values)) == len(values), f"{name} holds a row index twice"
    for a, b in itertools.combinations(SPLITS, 2):
        assert not set(ids[a]) & set(ids[b]), f"row indices in both {a} and {b}: {sorted(set(ids[a]) & set(ids[b]))}"
    if test is None:  # the test split is carved from the same rows
        assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(train_and_val)
    else:
        assert sorted(ids["train"] + ids["val"]) == list(train_and_val) and sorted(ids["test"]) == list(test)


@pytest.mark.parametrize(("n", "fraction", "seed"), [(50, 0.1, 0), (50, 0.3, 4), (7, 0.5, 1)])
def test_stratified_split_indices_partition_the_rows(n, fraction, seed):
    y = np.arange(n) % 3
    keep, held = stratified_split(y, fraction, seed)
    assert not set(keep.tolist()) & set(held.tolist())
    assert sorted([*keep.tolist(), *held.tolist()]) == list(range(n))
    assert len(held) == int(np.ceil(fraction * n))


@pytest.mark.parametrize(("seed", "val_fraction"), [(0, 0.1), (3, 0.25)])
def test_digits_splits_are_disjoint_and_hold_every_row_once(seed, val_fraction):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw_keys = _keys(bunch.images.astype(np.int64), bunch.target)
    assert len(set(raw_keys)) == len(raw_keys) == 1797  # digits has no duplicated image: content is an index
    splits = load_dataset("digits", seed=seed, val_fraction=val_fraction, normalize=False)
    keys = _split_keys(splits, 16.0)  # pixels 0..16 scaled by 1/16
    assert_no_leak(keys, raw_keys)
    where = {key: i for i, key in enumerate(raw_keys)}
    rows = {name: {where[k] for k in ks} for name, ks in keys.items()}  # the raw row index of each split row
    assert sum(map(len, rows.values())) == 1797 and not (rows["train"] & rows["val"] or rows["test"] & rows["val"])


def _write_npz(path, *, with_val: bool) -> dict[str, np.ndarray]:
    """Train rows 0..39 (feature 0 = id), test rows 100..109; train rows 40 and 41 duplicate rows 38 and 39
    exactly (id included), so identical rows may legitimately land in two splits."""
    rng = np.random.default_rng(5)

    def rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.column_stack([ids, rng.integers(-50, 50, (len(ids), 3))]).astype(np.float32)
        return x, (ids % 3).astype(np.int64)

    x_train, y_train = rows(np.arange(40))
    x_train, y_train = np.concatenate([x_train, x_train[-2:]]), np.concatenate([y_train, y_train[-2:]])
    x_test, y_test = rows(np.arange(100, 110))
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if with_val:
        arrays["x_val"], arrays["y_val"] = rows(np.arange(200, 206))
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("seed", [0, 2])
def test_npz_carved_validation_is_disjoint_from_train_and_test(tmp_path, seed):
    arrays = _write_npz(tmp_path / "d.npz", with_val=False)
    splits = load_dataset("npz", path=tmp_path / "d.npz", seed=seed, val_fraction=0.25, normalize=False)
    raw = _keys(arrays["x_train"], arrays["y_train"]) + _keys(arrays["x_test"], arrays["y_test"])
    assert_no_leak(_split_keys(splits, 1.0), raw)
    ids = {name: _ids(splits, name) for name in SPLITS}
    assert sorted(ids["train"] + ids["val"]) == sorted([*range(40), 38, 39])  # every raw row once, duplicates included
    assert sorted(ids["test"]) == list(range(100, 110))
    unique_train = set(ids["train"]) - {38, 39}
    assert not unique_train & set(ids["val"]), "a validation row index is also in train"


def test_npz_given_validation_stays_where_it_is(tmp_path):
    arrays = _write_npz(tmp_path / "d.npz", with_val=True)
    splits = load_dataset("npz", path=tmp_path / "d.npz", normalize=False)
    raw = [k for part in SPLITS for k in _keys(arrays[f"x_{part}"], arrays[f"y_{part}"])]
    assert_no_leak(_split_keys(splits, 1.0), raw)
    assert sorted(_ids(splits, "val")) == list(range(200, 206))


def test_csv_carved_test_and_validation_are_disjoint(tmp_path):
    rng = np.random.default_rng(9)
    path = tmp_path / "t.csv"
    table = [[i, *rng.integers(-20, 20, 2).tolist(), ("cat", "dog", "eel")[i % 3]] for i in range(60)]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "a", "b", "label"], *table])
    for seed in (0, 1):
        splits = load_dataset("csv", path=path, seed=seed, val_fraction=0.2, normalize=False)
        assert_ids_partition(splits, range(60))
        raw = _keys(np.array([row[:3] for row in table]), np.array([i % 3 for i in range(60)]))
        assert_no_leak(_split_keys(splits, 1.0), raw)


def test_cifar_and_idx_loaders_are_disjoint(tmp_path):
    from test_data_files import make_cifar  # tests/ is on sys.path (pytest's rootdir-relative import)
    from test_data_idx import make_idx_set

    batches = make_cifar(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", path=tmp_path / "cifar-10-batches-py", normalize=False)
    raw = [k for data, labels in batches.values() for k in _keys(data.reshape(-1, 3, 32, 32), np.array(labels))]
    assert len(set(raw)) == len(raw)
    assert_no_leak(_split_keys(splits, 255.0), raw)
    arrays = make_idx_set(tmp_path / "idx", n_train=100, n_test=12)
    splits = load_dataset("fashion_mnist", path=tmp_path / "idx", download=False, normalize=False)
    raw = _keys(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"])
    raw += _keys(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])
    assert len(set(raw)) == len(raw)
    assert_no_leak(_split_keys(splits, 255.0), raw)
    assert torch.equal(splits.y_test, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))
