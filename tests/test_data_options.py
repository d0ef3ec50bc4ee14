"""The data options a user with their own data needs, each checked by value: partial batches, no validation
carve, own validation/test files, an image folder, label checks, NaN in a config, the saved preprocessing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import kdlab
from kdlab.config import TrainConfig, load_config
from kdlab.data import load_dataset, load_preprocess
from kdlab.data.preprocess import Preprocess, input_adapter
from kdlab.engine import Splits, fit
from kdlab.engine.batches import batch_sizes
from kdlab.engine.supervised import ClassifyStep
from kdlab.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _splits(rows: int = 22, features: int = 5, classes: int = 3) -> Splits:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows + 12, features, generator=gen)
    y = torch.arange(rows + 12) % classes
    return Splits(x[:rows], y[:rows], x[rows : rows + 6], y[rows : rows + 6], x[rows + 6 :], y[rows + 6 :], classes)


@pytest.mark.parametrize(
    ("rows", "batch", "world", "drop_last", "expected"),
    [
        (22, 4, 1, False, [4, 4, 4, 4, 4, 2]),
        (22, 4, 1, True, [4, 4, 4, 4, 4]),
        (23, 8, 2, False, [8, 8, 7]),  # 7 rows left: 4 for one process, 3 for the other
        (23, 4, 2, False, [4, 4, 4, 4, 4]),  # 3 rows left: one process would train on a single row, skipped
        (21, 4, 1, False, [4, 4, 4, 4, 4]),  # 1 row left: batch norm cannot train on it, skipped
        (8, 4, 1, False, [4, 4]),
    ],
)
def test_batch_sizes(rows, batch, world, drop_last, expected):
    assert batch_sizes(rows, batch, world, drop_last=drop_last) == expected


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_training_row_is_seen_once_per_epoch(tmp_path, monkeypatch, drop_last):
    seen: list[int] = []
    original = ClassifyStep.batch

    def recording(self, index, epoch, step, window_rows):
        seen.extend(index.tolist())
        return original(self, index, epoch, step, window_rows)

    monkeypatch.setattr(ClassifyStep, "batch", recording)
    cfg = TrainConfig(epochs=2, batch_size=4, drop_last=drop_last, cpu=True, progress=False, train_eval_size=0)
    fit(torch.nn.Linear(5, 3), _splits(), "ce", cfg, out_dir=str(tmp_path / "run"))
    per_epoch = [seen[:22], seen[22:]] if not drop_last else [seen[:20], seen[20:]]
    for epoch_rows in per_epoch:
        if drop_last:
            assert len(epoch_rows) == 20 and len(set(epoch_rows)) == 20
        else:
            assert sorted(epoch_rows) == list(range(22))
    assert len(seen) == (40 if drop_last else 44)


def test_fit_takes_a_str_and_writes_the_run_directory(tmp_path):
    result = fit(
        torch.nn.Linear(5, 3),
        _splits(),
        "ce",
        TrainConfig(epochs=1, batch_size=4, cpu=True, progress=False, train_eval_size=0),
        out_dir=str(tmp_path / "run"),
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] == result.test["accuracy"]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="out_dir must be a str or Path"):
        fit(torch.nn.Linear(5, 3), _splits(), "ce", out_dir=3)  # type: ignore[arg-type]


def test_no_validation_carve(tmp_path):
    summary = kdlab.train(
        {
            "out": str(tmp_path / "run"),
            "data": {"val_fraction": 0},
            "train": {"epochs": 1, "progress": False, "cpu": True, "train_eval_size": 0},
        }
    )
    assert summary["data"]["val"] == 0 and summary["val"] == {}
    assert summary["data"]["train"] == 1437  # digits: 1,797 rows, 360 held out as test, none carved
    # a method that selects on validation says what it needs, in one line
    teacher = {"run": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="selects on the val split and this run has none"):
        kdlab.distill(
            {
                "out": str(tmp_path / "student"),
                "data": {"val_fraction": 0},
                "teacher": teacher,
                "method": {"name": "ptloss", "epsilon": "auto"},
                "train": {"epochs": 1, "progress": False, "cpu": True, "train_eval_size": 0},
            }
        )


def _write_csv(path, rows):
    path.write_text("a,b,label\n" + "".join(f"{a},{b},{label}\n" for a, b, label in rows))
    return path


def test_csv_with_its_own_validation_and_test_files(tmp_path):
    rng = np.random.default_rng(0)

    def rows(n):
        return [(float(rng.normal()), float(rng.normal()), ["cat", "dog"][i % 2]) for i in range(n)]

    train = _write_csv(tmp_path / "train.csv", rows(40))
    val = _write_csv(tmp_path / "val.csv", rows(10))
    test = _write_csv(tmp_path / "test.csv", rows(12))
    data = load_dataset("csv", path=train, val_path=val, test_path=test, val_fraction=0)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (40, 10, 12)
    assert data.class_names == ("cat", "dog")
    assert data.y_val.tolist() == [0, 1] * 5
    mean = np.array([[float(a), float(b)] for a, b, _ in [r.split(",") for r in train.read_text().split()[1:]]])
    np.testing.assert_allclose(data.mean.numpy(), mean.mean(0), rtol=1e-5)  # statistics from train.csv alone
    (tmp_path / "other.csv").write_text("a,c,label\n1,2,cat\n")
    with pytest.raises(DataError, match="columns differ"):
        load_dataset("csv", path=train, val_path=tmp_path / "other.csv")
    with pytest.raises(DataError, match="val_path/test_path are for csv"):
        load_dataset("digits", val_path=val)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for name, level in (("bright", 200), ("dark", 30)):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(level, 10, size=(5, 4, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    data = load_dataset("image_folder", path=tmp_path / "images", val_fraction=0.25, normalize=False)
    assert data.class_names == ("bright", "dark")
    assert data.in_shape == (3, 5, 4)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (9, 3, 4)
    first = sorted((tmp_path / "images" / "test" / "bright").iterdir())[0]
    expected = torch.from_numpy(np.asarray(Image.open(first), dtype=np.float32)).permute(2, 0, 1) / 255
    torch.testing.assert_close(data.x_test[0], expected)  # test rows in folder order, channels first, [0, 1]
    Image.new("RGB", (7, 7)).save(tmp_path / "images" / "train" / "dark" / "odd.png")
    with pytest.raises(DataError, match=r"set data\.image_size"):
        load_dataset("image_folder", path=tmp_path / "images")
    resized = load_dataset("image_folder", path=tmp_path / "images", image_size=8, val_fraction=0.25)
    assert resized.in_shape == (3, 8, 8)


def _npz(tmp_path, y_train, y_test):
    x = np.random.default_rng(0).normal(size=(len(y_train), 3)).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.array(y_train), x_test=x[: len(y_test)], y_test=np.array(y_test))
    return path


@pytest.mark.parametrize(
    ("y_train", "message"),
    [
        ([1, 2, 3] * 10, r"class 0 \('0'\) has no training rows.*are they 1..K\?"),
        ([0] * 30, "single class"),
        ([0, 2] * 15, r"class 1 \('1'\) has no training rows"),
    ],
)
def test_label_checks(tmp_path, y_train, message):
    with pytest.raises(DataError, match=message):
        load_dataset("npz", path=_npz(tmp_path, y_train, y_train[:6]), val_fraction=0)


@pytest.mark.parametrize("override", ["method.alpha=.nan", "train.optimizer.lr=.inf", "method.epsilon=[0.1,.nan]"])
def test_nan_in_a_config_is_refused(override):
    with pytest.raises(ConfigError, match="must be a finite number"):
        load_config({}, [override])


def test_nan_as_a_string_is_refused_by_the_schema():
    with pytest.raises(ConfigError, match=r"train\.optimizer\.lr"):
        load_config({"train": {"optimizer": {"lr": "nan"}}})


def test_saved_preprocessing_round_trips_and_refuses_an_edit(tmp_path):
    data = load_dataset("digits")
    path = tmp_path / "preprocess.json"
    data.preprocess.save(path)
    loaded = load_preprocess(path)
    assert torch.equal(loaded.mean, data.mean) and torch.equal(loaded.std, data.std)
    again = load_dataset("digits", stats=loaded)
    assert torch.equal(again.x_test, data.x_test) and again.fingerprint == data.fingerprint
    payload = json.loads(path.read_text())
    payload["mean"][0] += 0.5
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="digest mismatch"):
        load_preprocess(path)


def test_input_adapter_against_the_formula():
    gen = torch.Generator().manual_seed(1)
    shape = (2, 3, 3)
    student = Preprocess(0.5, torch.tensor([0.1, 0.4]), torch.tensor([0.2, 0.5]), per_channel=True, standardize=True)
    teacher = Preprocess(0.5, torch.rand(shape, generator=gen), torch.rand(shape, generator=gen) + 0.5, False, True)
    raw = torch.rand(4, *shape, generator=gen) * 255
    adapter = input_adapter(student, teacher, shape)
    assert adapter is not None
    x_student = student.apply(raw).double()
    expected = (raw.double() * 0.5 - teacher.mean.double()) / teacher.std.double()  # what the teacher trained on
    torch.testing.assert_close(adapter(x_student.float()).double(), expected, rtol=1e-5, atol=1e-4)
    assert input_adapter(student, student, shape) is None
    assert math.isclose(float(adapter.weight[0, 0, 0]), 0.2 / float(teacher.std[0, 0, 0]), rel_tol=1e-6)


def test_train_threads_sets_and_records_torch_threads(tmp_path):
    summary = kdlab.train(
        {
            "out": str(tmp_path / "run"),
            "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
            "train": {"epochs": 1, "progress": False, "cpu": True, "train_eval_size": 0, "threads": 2},
        }
    )
    assert summary["threads"] == torch.get_num_threads() == 2  # the fixture restores the count afterwards


def test_train_statistics_undo_the_datas_own_preprocessing():
    from kdlab.data.splits import train_statistics

    raw = load_dataset("digits", normalize=False)
    standardized = load_dataset("digits")
    pixels = raw.x_train.double().numpy()  # (N, 1, 8, 8), statistics per channel
    for data in (raw, standardized):  # the same numbers whatever was done to the features
        mean, std = train_statistics(data)
        np.testing.assert_allclose(mean.numpy(), [pixels.mean()], rtol=1e-6)
        np.testing.assert_allclose(std.numpy(), [pixels.std()], rtol=1e-5)
    torch.testing.assert_close(train_statistics(standardized)[0], standardized.mean)
