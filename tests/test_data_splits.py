"""kdlab.data on the embedded digits: shapes, train-only normalisation, stratification, seeds, fingerprint, errors."""

import math

import numpy as np
import pytest
import torch

from kdlab.data import KNOWN_DATASETS, DataError, DataSplits, load_dataset
from kdlab.data.splits import RawData, build_splits

N_DIGITS = 1797


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_raw() -> DataSplits:
    return load_dataset("digits", normalize=False)


def test_digits_shapes_dtypes_and_sizes(digits):
    assert digits.name == "digits"
    assert digits.in_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert digits.class_names == tuple(str(i) for i in range(10))
    n_test = math.ceil(0.2 * N_DIGITS)
    n_val = math.ceil(0.1 * (N_DIGITS - n_test))
    assert len(digits.x_test) == len(digits.y_test) == n_test
    assert len(digits.x_val) == len(digits.y_val) == n_val
    assert len(digits.x_train) == len(digits.y_train) == N_DIGITS - n_test - n_val
    for x in (digits.x_train, digits.x_val, digits.x_test):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
    for y in (digits.y_train, digits.y_val, digits.y_test):
        assert y.dtype == torch.int64 and y.ndim == 1
        assert int(y.min()) >= 0 and int(y.max()) < 10
    assert digits.mean.shape == digits.std.shape == (1,)  # per channel
    assert "digits" in repr(digits) and "train=" in repr(digits)


def test_unnormalised_pixels_are_scaled_to_unit_interval(digits_raw):
    assert float(digits_raw.x_train.min()) == 0.0 and float(digits_raw.x_train.max()) == 1.0
    assert torch.equal(digits_raw.mean, torch.zeros(1)) and torch.equal(digits_raw.std, torch.ones(1))
    values = torch.unique(digits_raw.x_train * 16)
    assert torch.allclose(values, values.round())  # 0..16 grey levels, exactly


def test_normalisation_uses_the_training_part_only(digits, digits_raw):
    raw_train = digits_raw.x_train.double()
    assert torch.allclose(digits.mean.double(), raw_train.mean().reshape(1), atol=1e-6)
    assert torch.allclose(digits.std.double(), raw_train.std(correction=0).reshape(1), atol=1e-6)
    everything = torch.cat([digits_raw.x_train, digits_raw.x_val, digits_raw.x_test]).double()
    assert abs(float(everything.mean()) - float(digits.mean)) > 1e-5  # not the statistics of all the data
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert abs(float(digits.x_train.std(correction=0)) - 1.0) < 1e-4
    assert abs(float(digits.x_test.mean())) > 1e-4  # held-out parts are not re-centred on their own
    for norm, raw in ((digits.x_val, digits_raw.x_val), (digits.x_test, digits_raw.x_test)):
        assert torch.allclose(norm, (raw - digits.mean) / digits.std, atol=1e-5)


def test_splits_are_stratified(digits):
    total = torch.bincount(torch.cat([digits.y_train, digits.y_val, digits.y_test]), minlength=10).double()
    test = torch.bincount(digits.y_test, minlength=10).double()
    assert torch.all((test - 0.2 * total).abs() <= 1.0)
    val = torch.bincount(digits.y_val, minlength=10).double()
    train_and_val = torch.bincount(torch.cat([digits.y_train, digits.y_val]), minlength=10).double()
    assert torch.all((val - 0.1 * train_and_val).abs() <= 1.0)


def test_same_seed_same_splits(digits):
    again = load_dataset("digits", seed=0)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "std"):
        assert torch.equal(getattr(digits, field), getattr(again, field)), field
    assert again.fingerprint == digits.fingerprint


def test_seed_moves_validation_not_test(digits, digits_raw):
    other = load_dataset("digits", seed=1, normalize=False)
    assert not torch.equal(other.x_val, digits_raw.x_val)
    # The test split is fixed, so a teacher trained under one seed never saw another seed's test set.
    assert torch.equal(other.x_test, digits_raw.x_test) and torch.equal(other.y_test, digits_raw.y_test)
    assert other.fingerprint != digits_raw.fingerprint
    assert load_dataset("digits", seed=1).fingerprint != digits.fingerprint


def test_fingerprint_tracks_every_setting(digits, digits_raw):
    assert len(digits.fingerprint) == 64 and int(digits.fingerprint, 16) >= 0
    assert digits_raw.fingerprint != digits.fingerprint  # normalize flag
    assert load_dataset("digits", val_fraction=0.2).fingerprint != digits.fingerprint


def test_fingerprint_tracks_raw_bytes():
    def raw(value: int) -> RawData:
        x = np.zeros((20, 3), np.float32)
        x[0, 0] = value
        y = np.arange(20) % 2
        return RawData(x, y, x[:4], y[:4], num_classes=2, class_names=("0", "1"), source="mem")

    a = build_splits(raw(0), name="npz", val_fraction=0.2, seed=0, normalize=True)
    b = build_splits(raw(1), name="npz", val_fraction=0.2, seed=0, normalize=True)
    assert a.fingerprint != b.fingerprint


def test_zero_val_fraction_gives_an_empty_validation_set():
    splits = load_dataset("digits", val_fraction=0.0)
    assert splits.x_val.shape == (0, 1, 8, 8) and splits.y_val.shape == (0,)
    assert len(splits.x_train) == N_DIGITS - math.ceil(0.2 * N_DIGITS)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "0.1", True])
def test_bad_val_fraction(bad):
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", val_fraction=bad)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5])
def test_bad_seed(bad):
    with pytest.raises(DataError, match="seed"):
        load_dataset("digits", seed=bad)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'") as err:
        load_dataset("imagenet")
    for name in KNOWN_DATASETS:
        assert name in str(err.value)


def test_names_are_forgiving_about_case_and_dashes():
    assert load_dataset("Digits").name == "digits"
    with pytest.raises(DataError, match="IDX files not found"):
        load_dataset("Fashion-MNIST", path="/nonexistent/kdlab-test", download=False)


def test_digits_takes_no_path():
    with pytest.raises(DataError, match="takes no path"):
        load_dataset("digits", path="/tmp")


def test_val_carve_that_leaves_nothing_is_an_error():
    x = np.zeros((1, 2), np.float32)
    y = np.zeros(1, np.int64)
    raw = RawData(x, y, x, y, num_classes=1, class_names=("0",), source="tiny.npz")
    with pytest.raises(DataError, match=r"tiny\.npz: cannot carve a validation split"):
        build_splits(raw, name="npz", val_fraction=0.5, seed=0, normalize=True)


def test_rare_classes_fall_back_to_an_unstratified_split():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.array([0] * 9 + [1])
    raw = RawData(x, y, x, y, num_classes=2, class_names=("0", "1"), source="rare.npz")
    with pytest.warns(UserWarning, match="not stratified"):
        splits = build_splits(raw, name="npz", val_fraction=0.2, seed=0, normalize=False)
    assert len(splits.x_val) == 2 and len(splits.x_train) == 8
