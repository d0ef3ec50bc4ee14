"""Tests that kill mutants mutmut found alive in kdlab.data.splits (see benchmarks/results/mutation.md).

Statistics are checked against numpy in float64, the fingerprint against the recipe its docstring states, the
errors by the text a user reads.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

from kdlab.data import DataError
from kdlab.data.splits import RawData, build_splits, fingerprint


def _raw(x_train, y_train, x_test, y_test, **kw) -> RawData:
    return RawData(x_train, y_train, x_test, y_test, 5, tuple("abcde"), "src", **kw)


def _labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % 5)


@pytest.mark.parametrize("per_channel", [False, True])
def test_statistics_match_numpy_per_feature_and_per_channel(per_channel):
    rng = np.random.default_rng(0)
    shape = (3, 2, 4)  # C = 3 differs from H = 2 and W = 4
    x = rng.normal(size=(60, *shape)) * rng.uniform(0.5, 3, size=shape) + rng.normal(size=shape) * 5
    x = x.astype(np.float32)
    x_test = rng.normal(size=(10, *shape)).astype(np.float32)
    splits = build_splits(
        _raw(x, _labels(60, 1), x_test, _labels(10, 2), per_channel=per_channel),
        name="t",
        val_fraction=0.0,
        seed=0,
        normalize=True,
    )
    axes = (0, 2, 3) if per_channel else (0,)
    mean, std = x.astype(np.float64).mean(axis=axes), x.astype(np.float64).std(axis=axes)
    assert splits.mean.dtype == splits.std.dtype == torch.float32
    assert np.allclose(splits.mean.numpy(), mean, rtol=1e-6, atol=1e-6)
    assert np.allclose(splits.std.numpy(), std, rtol=1e-6, atol=0)
    view = (1, 3, 1, 1) if per_channel else (1, *shape)
    expected = (x_test.astype(np.float64) - mean.reshape(view)) / std.reshape(view)
    assert np.allclose(splits.x_test.numpy(), expected, atol=1e-5)


def test_statistics_accumulate_in_float64():
    """A large offset: a float32 sum moves the mean by ~1e-3, which shows in the std."""
    x = (1e4 + np.random.default_rng(0).random((5000, 1))).astype(np.float32)
    y = _labels(5000, 3)
    splits = build_splits(_raw(x, y, x[:5], y[:5]), name="t", val_fraction=0.0, seed=0, normalize=True)
    assert np.isclose(splits.std.item(), x.astype(np.float64).std(), rtol=1e-7, atol=0)


def test_constant_feature_is_centred_not_scaled():
    x = np.stack([np.full(20, 3.0), np.arange(20.0)], axis=1).astype(np.float32)
    y = _labels(20, 4)
    splits = build_splits(_raw(x, y, x[:4], y[:4]), name="t", val_fraction=0.0, seed=0, normalize=True)
    assert splits.std[0].item() == 1.0
    assert torch.equal(splits.x_train[:, 0], torch.zeros(20))


def test_source_arrays_are_left_alone_even_read_only_float32():
    x = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    x_test = x[:6].copy()
    before = x.copy()
    x.setflags(write=False)
    y = _labels(30, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warns on a read-only array
        build_splits(_raw(x, y, x_test, y[:6]), name="t", val_fraction=0.0, seed=0, normalize=True)
    writable = before.copy()
    build_splits(_raw(writable, y, x_test, y[:6]), name="t", val_fraction=0.0, seed=0, normalize=True)
    assert np.array_equal(x, before) and np.array_equal(writable, before)


def test_scale_multiplies_the_features():
    x = np.arange(12, dtype=np.uint8).reshape(6, 2)
    y = _labels(6, 6)
    splits = build_splits(_raw(x, y, x, y, scale=2.0), name="t", val_fraction=0.0, seed=0, normalize=False)
    assert torch.equal(splits.x_train, torch.from_numpy(x.astype(np.float32) * 2))


def test_a_validation_part_without_labels_is_carved_from_train_instead():
    x = np.random.default_rng(2).normal(size=(40, 3)).astype(np.float32)
    y = _labels(40, 7)
    raw = _raw(x, y, x[:5], y[:5], x_val=x[:3])  # y_val missing
    splits = build_splits(raw, name="t", val_fraction=0.25, seed=0, normalize=False)
    assert len(splits.y_val) == 10 and len(splits.y_train) == 30


@pytest.mark.parametrize(
    ("y_train", "y_test", "message"),
    [
        (np.arange(20) % 5, np.array([0, 1, 5]), r"src \(test\): label out of range \(5 not in 0..4\)"),
        (np.arange(20) % 5, np.array([0, -2, 4]), r"src \(test\): label out of range \(-2 not in 0..4\)"),
        (np.arange(20) % 5, np.array([0, 0, 7]), r"label out of range \(7 not in 0..4\)"),
        (np.arange(20) % 5 * 1.0, np.array([0, 1, 2]), "src: train labels must be integers"),
    ],
)
def test_label_errors_name_the_part_and_the_value(y_train, y_test, message):
    x = np.zeros((20, 2), dtype=np.float32)
    with pytest.raises(DataError, match=message):
        build_splits(_raw(x, y_train, x[:3], y_test), name="t", val_fraction=0.25, seed=0, normalize=False)


def test_labels_equal_to_the_class_count_are_out_of_range_and_the_largest_is_reported():
    x = np.zeros((20, 2), dtype=np.float32)
    with pytest.raises(DataError, match=r"\(5 not in 0..4\)"):
        build_splits(
            _raw(x, np.arange(20) % 5, x[:2], np.array([5, 0])), name="t", val_fraction=0.0, seed=0, normalize=False
        )
    with pytest.raises(DataError, match=r"\(9 not in 0..4\)"):  # only too large: the maximum is named
        build_splits(
            _raw(x, np.arange(20) % 5, x[:2], np.array([9, 1])), name="t", val_fraction=0.0, seed=0, normalize=False
        )


def test_fingerprint_follows_its_recipe():
    arrays = {
        "y": np.array([1, 2], dtype=np.int64),
        "x": np.arange(6, dtype=np.float32).reshape(2, 3),
        "e": np.zeros((0, 3), dtype=np.float32),
    }
    h = hashlib.sha256(b"kdlab.data/v1\0name\0")
    for key in ("e", "x", "y"):
        arr = arrays[key]
        h.update(f"{key}:{arr.dtype.str}:{arr.shape}\0".encode())
        h.update(arr.tobytes())
    h.update(b"seed=3;val_fraction=0.25;normalize=True;")
    assert fingerprint("name", arrays, seed=3, val_fraction=0.25, normalize=True) == h.hexdigest()


def test_repr_shows_twelve_characters_of_the_fingerprint():
    x = np.zeros((10, 2), dtype=np.float32)
    splits = build_splits(
        _raw(x, np.arange(10) % 5, x[:2], np.array([0, 1])), name="t", val_fraction=0.0, seed=0, normalize=False
    )
    assert repr(splits).endswith(f"fingerprint={splits.fingerprint[:12]}…)")


def test_unnormalised_statistics_have_the_feature_shape():
    x = np.ones((8, 2, 3, 4), dtype=np.float32)
    y = _labels(8, 8)
    splits = build_splits(_raw(x, y, x[:2], y[:2]), name="t", val_fraction=0.0, seed=0, normalize=False)
    assert splits.mean.shape == splits.std.shape == (2, 3, 4)
    per_channel = build_splits(
        _raw(x, y, x[:2], y[:2], per_channel=True), name="t", val_fraction=0.0, seed=0, normalize=False
    )
    assert per_channel.mean.shape == (2,)


def test_a_training_split_with_every_class_is_enough_and_less_is_an_error():
    x = np.zeros((5, 2), dtype=np.float32)
    y = np.arange(5)  # one row per class of _raw's five
    assert len(build_splits(_raw(x, y, x, y), name="t", val_fraction=0.0, seed=0, normalize=False).y_train) == 5
    with pytest.raises(DataError, match="single class"):
        build_splits(_raw(x[:1], y[:1], x, y), name="t", val_fraction=0.0, seed=0, normalize=False)
    with pytest.raises(DataError, match="training split is empty"):
        build_splits(_raw(x[:0], y[:0], x, y), name="t", val_fraction=0.0, seed=0, normalize=False)


def test_build_splits_fingerprints_the_parts_and_every_setting():
    rng = np.random.default_rng(9)
    x, x_test = rng.normal(size=(30, 2)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    y, y_test = _labels(30, 10), np.array([0, 1, 2, 3])
    raw = _raw(x, y, x_test, y_test, x_val=x[:5], y_val=y[:5], scale=0.5)
    splits = build_splits(raw, name="t", val_fraction=0.2, seed=4, normalize=True)
    arrays = {"x_train": x, "y_train": y, "x_val": x[:5], "y_val": y[:5], "x_test": x_test, "y_test": y_test}
    extra = "scale=0.5;classes=5;names=('a', 'b', 'c', 'd', 'e')"
    assert splits.fingerprint == fingerprint("t", arrays, seed=4, val_fraction=0.2, normalize=True, extra=extra)


def test_seeds_up_to_two_to_the_32_are_accepted():
    x = np.zeros((10, 2), dtype=np.float32)
    y = np.arange(10) % 5
    build_splits(_raw(x, y, x, y), name="t", val_fraction=0.0, seed=2**32 - 1, normalize=False)
    with pytest.raises(DataError, match="seed"):
        build_splits(_raw(x, y, x, y), name="t", val_fraction=0.0, seed=2**32, normalize=False)


def test_stratified_split_edges_and_its_reference():
    from sklearn.model_selection import train_test_split

    from kdlab.data.splits import stratified_split

    y = np.zeros(10, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stratifiable: no fallback warning
        keep, held = stratified_split(y, 0.1, 0)  # one row held out
        assert len(held) == 1 and len(keep) == 9
        keep, held = stratified_split(y, 0.9, 0)  # one row kept
        assert len(held) == 9 and len(keep) == 1
        y2 = np.arange(20) % 2
        keep, held = stratified_split(y2, 0.3, 5)
    ref_keep, ref_held = train_test_split(np.arange(20), test_size=6, random_state=5, shuffle=True, stratify=y2)
    assert held.tolist() == sorted(ref_held.tolist()) and keep.tolist() == sorted(ref_keep.tolist())
    with pytest.raises(DataError, match="data: cannot carve a split of fraction"):
        stratified_split(y, 0.99, 0)
    rare = np.array([0] * 9 + [1])  # a class with one row cannot be stratified
    with pytest.warns(UserWarning, match="not stratified"):
        keep, held = stratified_split(rare, 0.2, 3)
    ref_keep, ref_held = train_test_split(np.arange(10), test_size=2, random_state=3, shuffle=True)
    assert held.tolist() == sorted(ref_held.tolist())
