"""Data sets from the user's files: CIFAR python-pickle directories, .npz archives and CSV tables."""

import os
import pickle

import numpy as np
import pytest
import torch

from kdlab.data import DataError, load_dataset


def _one_line(err: pytest.ExceptionInfo, *parts: object) -> str:
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, (part, message)
    return message


# --------------------------------------------------------------------------------------------------- CIFAR


def _dump(path, obj, *, legacy_numpy_names: bool = False) -> None:
    data = pickle.dumps(obj, protocol=2)
    if legacy_numpy_names:  # how the official (numpy 1.x era) files name the array reconstructor
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def make_cifar(root, *, kind: str = "cifar10", n: int = 20, legacy: bool = False, seed: int = 0):
    """A miniature CIFAR directory in the official layout: dicts with bytes keys, (N, 3072) uint8 rows."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    k = 10 if kind == "cifar10" else 100
    label_key = b"labels" if kind == "cifar10" else b"fine_labels"
    names = ["train"] if kind == "cifar100" else [f"data_batch_{i}" for i in range(1, 6)]
    batches = {}
    for i, name in enumerate([*names, "test_batch" if kind == "cifar10" else "test"]):
        m = n * 5 if kind == "cifar100" and name == "train" else n
        data = rng.integers(0, 256, (m, 3072), dtype=np.uint8)
        labels = [(j + i) % k for j in range(m)]
        batch = {b"batch_label": b"batch", b"data": data, label_key: labels}
        if kind == "cifar100":
            batch[b"coarse_labels"] = [label // 5 for label in labels]
        _dump(root / name, batch, legacy_numpy_names=legacy)
        batches[name] = (data, labels)
    if kind == "cifar10":
        meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": n}
        _dump(root / "batches.meta", meta)
    else:
        _dump(root / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)]})
    return batches


def test_cifar10(tmp_path):
    batches = make_cifar(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", path=tmp_path / "cifar-10-batches-py", normalize=False)
    assert splits.in_shape == (3, 32, 32) and splits.num_classes == 10
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (90, 10, 20)
    assert splits.class_names == tuple(f"class{i}" for i in range(10))
    data, labels = batches["test_batch"]
    assert torch.equal(splits.y_test, torch.tensor(labels))
    first = splits.x_test[0]
    assert torch.allclose(first[0].reshape(-1), torch.from_numpy(data[0, :1024]).float() / 255)  # red plane first
    assert torch.allclose(first[2].reshape(-1), torch.from_numpy(data[0, 2048:]).float() / 255)
    normalised = load_dataset("cifar10", path=tmp_path / "cifar-10-batches-py")
    assert normalised.mean.shape == (3,) and normalised.std.shape == (3,)
    assert torch.allclose(normalised.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_cifar_parent_directory_and_legacy_pickles(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py", legacy=True)
    assert len(load_dataset("cifar10", path=tmp_path).y_test) == 20


def test_cifar100_uses_fine_labels(tmp_path):
    make_cifar(tmp_path / "cifar-100-python", kind="cifar100", n=200)
    splits = load_dataset("cifar100", path=tmp_path / "cifar-100-python")
    assert splits.num_classes == 100 and splits.class_names[99] == "fine99"
    assert len(splits.y_test) == 200 and int(splits.y_test.max()) == 99


def test_cifar_needs_a_path():
    with pytest.raises(DataError, match="pass path=DIR") as err:
        load_dataset("cifar10")
    _one_line(err, "cifar-10-batches-py")


def test_cifar_missing_batch(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", path=tmp_path)
    _one_line(err, tmp_path, "data_batch_3")


def test_cifar_truncated_pickle(tmp_path):
    make_cifar(tmp_path)
    batch = tmp_path / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match="corrupt or not a CIFAR pickle") as err:
        load_dataset("cifar10", path=tmp_path)
    _one_line(err, batch)


def test_cifar_label_out_of_range(tmp_path):
    make_cifar(tmp_path)
    data = np.zeros((4, 3072), np.uint8)
    _dump(tmp_path / "test_batch", {b"data": data, b"labels": [0, 1, 10, 2]})
    with pytest.raises(DataError, match=r"label out of range \(10 not in 0..9\)") as err:
        load_dataset("cifar10", path=tmp_path)
    _one_line(err, tmp_path / "test_batch")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(DataError, match="refusing global") as err:
        load_dataset("cifar10", path=tmp_path)
    _one_line(err, tmp_path / "data_batch_1")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------- npz


def test_npz_with_validation(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(40, 6)).astype(np.float32),
        "y_train": np.arange(40) % 4,
        "x_val": rng.normal(size=(7, 6)).astype(np.float32),
        "y_val": np.arange(7) % 4,
        "x_test": rng.normal(size=(9, 6)).astype(np.float32),
        "y_test": (np.arange(9) % 4).astype(np.float64),  # whole-number floats are fine
    }
    np.savez(tmp_path / "d.npz", **arrays)
    splits = load_dataset("npz", path=tmp_path / "d.npz", val_fraction=0.5)  # ignored: the file has a val split
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (40, 7, 9)
    assert splits.in_shape == (6,) and splits.num_classes == 4 and splits.mean.shape == (6,)
    assert torch.allclose(splits.x_train.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(splits.x_train.std(0, correction=0), torch.ones(6), atol=1e-4)
    expected_val = (torch.from_numpy(arrays["x_val"]) - splits.mean) / splits.std
    assert torch.allclose(splits.x_val, expected_val, atol=1e-6)
    assert splits.y_test.dtype == torch.int64


def test_npz_without_validation_and_image_features(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "img.npz",
        x_train=rng.integers(0, 256, (50, 3, 4, 4), dtype=np.uint8),
        y_train=np.arange(50) % 5,
        x_test=rng.integers(0, 256, (10, 3, 4, 4), dtype=np.uint8),
        y_test=np.arange(10) % 5,
        class_names=np.array(["a", "b", "c", "d", "e"]),
    )
    splits = load_dataset("npz", path=tmp_path / "img.npz", val_fraction=0.2, normalize=False)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (40, 10, 10)
    assert splits.in_shape == (3, 4, 4) and splits.mean.shape == (3,)  # per channel
    assert splits.class_names == ("a", "b", "c", "d", "e")
    assert float(splits.x_train.max()) <= 1.0  # uint8 pixels scaled to [0, 1]
    assert torch.equal(torch.bincount(splits.y_val), torch.full((5,), 2))  # stratified


def test_npz_any_feature_shape(tmp_path):
    np.savez(
        tmp_path / "seq.npz",
        x_train=np.random.default_rng(0).normal(size=(30, 5, 2)),
        y_train=np.arange(30) % 3,
        x_test=np.zeros((6, 5, 2)),
        y_test=np.arange(6) % 3,
    )
    splits = load_dataset("npz", path=tmp_path / "seq.npz")
    assert splits.in_shape == (5, 2) and splits.mean.shape == (5, 2) and splits.x_train.dtype == torch.float32


def _npz_error(tmp_path, match: str, **arrays) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as err:
        load_dataset("npz", path=path)
    _one_line(err, path)


def test_npz_errors(tmp_path):
    x, y = np.zeros((10, 2), np.float32), np.arange(10) % 2
    _npz_error(tmp_path, r"missing key\(s\) x_test, y_test \(has: x_train, y_train\)", x_train=x, y_train=y)
    _npz_error(tmp_path, "only one of x_val and y_val", x_train=x, y_train=y, x_test=x, y_test=y, x_val=x)
    _npz_error(tmp_path, r"label out of range \(-1", x_train=x, y_train=y - 1, x_test=x, y_test=y)
    names = np.array(["only"])
    _npz_error(
        tmp_path, r"label out of range \(1 not in 0..0\)", x_train=x, y_train=y, x_test=x, y_test=y, class_names=names
    )
    _npz_error(tmp_path, "NaN or infinity", x_train=x + np.nan, y_train=y, x_test=x, y_test=y)
    _npz_error(tmp_path, "integer class indices", x_train=x, y_train=y + 0.5, x_test=x, y_test=y)
    _npz_error(tmp_path, "10 samples but 9 labels", x_train=x, y_train=y[:9], x_test=x, y_test=y)
    _npz_error(tmp_path, "at least one feature axis", x_train=y, y_train=y, x_test=y, y_test=y)


def test_npz_unreadable(tmp_path):
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match=r"unreadable \.npz") as err:
        load_dataset("npz", path=bad)
    _one_line(err, bad)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"not an \.npz archive"):
        load_dataset("npz", path=tmp_path / "single.npy")
    with pytest.raises(DataError, match="file not found"):
        load_dataset("npz", path=tmp_path / "absent.npz")
    with pytest.raises(DataError, match="pass path=FILE"):
        load_dataset("npz")


def test_npz_never_unpickles(tmp_path):
    objects = np.array([{"a": 1}] * 10, dtype=object)
    path = tmp_path / "objects.npz"
    np.savez(path, x_train=objects, y_train=np.zeros(10), x_test=objects, y_test=np.zeros(10))
    with pytest.raises(DataError, match=r"unreadable \.npz member") as err:
        load_dataset("npz", path=path)
    _one_line(err, path)


# ----------------------------------------------------------------------------------------------------- CSV

SPECIES = ("setosa", "versicolor", "virginica")


def _iris_like(path, n: int = 30) -> None:
    rows = ["sepal,species,petal"]
    for i in range(n):
        rows.append(f"{i * 0.1:.2f},{SPECIES[i % 3]},{(i % 3) + 0.5}")
    path.write_text("\n".join(rows) + "\n")


def test_csv_with_string_labels(tmp_path):
    _iris_like(tmp_path / "iris.csv")
    splits = load_dataset("csv", path=tmp_path / "iris.csv", label_column="species", val_fraction=0.25)
    assert splits.class_names == SPECIES and splits.num_classes == 3 and splits.in_shape == (2,)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (18, 6, 6)
    assert torch.equal(torch.bincount(splits.y_test), torch.full((3,), 2))  # stratified 20 % test
    assert torch.equal(torch.bincount(splits.y_val), torch.full((3,), 2))
    raw = load_dataset("csv", path=tmp_path / "iris.csv", label_column=1, normalize=False)
    assert torch.all(raw.x_test[:, 1] - 0.5 == raw.y_test.float())  # petal = label + 0.5: rows stay aligned


def test_csv_default_label_column_is_last_and_integer_labels_sort_numerically(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{(2, 10)[i % 2]}\n" for i in range(20)))
    splits = load_dataset("csv", path=path)
    assert splits.class_names == ("2", "10") and splits.num_classes == 2


def _csv_error(tmp_path, text: str, match: str, **kwargs) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as err:
        load_dataset("csv", path=path, **kwargs)
    _one_line(err, path)


def test_csv_errors(tmp_path):
    good = "x,y,label\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(10))
    _csv_error(tmp_path, good.replace("3,3,1", "3,abc,1"), r"data row 4, column 'y': 'abc' is not a finite number")
    _csv_error(tmp_path, good.replace("3,3,1", "3,,1"), r"data row 4, column 'y'")
    _csv_error(tmp_path, good.replace("3,3,1", "3,nan,1"), "not a finite number")
    _csv_error(tmp_path, good.replace("3,3,1", "3,1"), "data row 4 has 2 fields, the header has 3")
    _csv_error(tmp_path, good, r"no column 'kind' for the labels \(columns: x, y, label\)", label_column="kind")
    _csv_error(tmp_path, good, "label_column 5 out of range", label_column=5)
    _csv_error(tmp_path, "", "empty CSV")
    _csv_error(tmp_path, "x,label\n", "no data rows")
    _csv_error(tmp_path, "label\n1\n2\n", "at least two columns")
    path = tmp_path / "latin1.csv"
    path.write_bytes("x,label\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset("csv", path=path)
