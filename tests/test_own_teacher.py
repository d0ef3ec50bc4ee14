"""Bring your own teacher: a model trained outside kdlab on a raw CSV, distilled, evaluated and exported.

The teacher here is a linear classifier fitted by scikit-learn on raw features with a large offset and scale
(``100 · pixel + 5000``), folded into an ``nn.Linear`` that takes those raw values: fed kdlab's standardised
inputs instead, its logits are dominated by the intercept and it scores near chance — the silent failure this
file guards. Declared with ``teacher.standardize: false`` it must score inside kdlab exactly what it scores
outside; undeclared, the teacher check must say so.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

import kdlab
from kdlab.data import load_dataset
from kdlab.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHER_MODULE = '''
from torch import nn


def build(num_classes, in_shape):
    """A linear classifier on raw feature rows (in_shape = (features,))."""
    return nn.Linear(in_shape[0], num_classes)
'''


def _write_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    x = digits.data * 100.0 + 5000.0  # raw values far from kdlab's standardised ones
    y = digits.target
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"f{i}" for i in range(x.shape[1])] + ["label"])
        for row, label in zip(x, y, strict=True):
            writer.writerow([f"{v:g}" for v in row] + [f"digit-{label}"])
    return x, y


def _train_outside(project: Path) -> Path:
    """Fit the teacher with scikit-learn on kdlab's training rows (raw values) and save it as safetensors."""
    data = load_dataset("csv", path=project / "digits.csv", normalize=False, seed=0)
    x, y = data.x_train.double().numpy(), data.y_train.numpy()
    mean, std = x.mean(0), x.std(0) + 1e-12
    fitted = LogisticRegression(max_iter=2000).fit((x - mean) / std, y)
    weight = fitted.coef_ / std  # the same function of the raw values
    bias = fitted.intercept_ - weight @ mean
    state = {
        "weight": torch.tensor(np.ascontiguousarray(weight), dtype=torch.float32),
        "bias": torch.tensor(bias, dtype=torch.float32),
    }
    save_file(state, str(project / "teacher.safetensors"))
    return project / "teacher.safetensors"


def _outside_accuracy(project: Path, split: str) -> float:
    """The teacher's accuracy computed without kdlab's pipeline: raw features straight into the module."""
    data = load_dataset("csv", path=project / "digits.csv", normalize=False, seed=0)
    from safetensors.torch import load_file

    model = nn.Linear(64, 10)
    model.load_state_dict(load_file(str(project / "teacher.safetensors")))
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own_teacher")
    _write_csv(root / "digits.csv")
    (root / "my_teacher.py").write_text(TEACHER_MODULE)
    _train_outside(root)
    return root


def _config(project: Path, out: str, standardize: bool | None, student_standardize: bool = True) -> dict:
    teacher = {"model": {"name": "my_teacher:build"}, "weights": "teacher.safetensors"}
    if standardize is not None:
        teacher["standardize"] = standardize
    return {
        "out": out,
        "data": {"name": "csv", "path": "digits.csv", "standardize": student_standardize},
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "teacher": teacher,
        "method": {"name": "kd", "temperature": 2.0},
        "train": {"epochs": 1, "batch_size": 64, "progress": False, "train_eval_size": 0, "cpu": True},
    }


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)  # my_teacher.py is found in the current directory, no PYTHONPATH
    return project


def test_a_declared_raw_teacher_scores_inside_what_it_scores_outside(in_project):
    outside = _outside_accuracy(in_project, "val")
    assert outside > 0.9
    # the student on raw values too: the teacher sees the very same floats as outside
    raw = kdlab.distill(_config(in_project, "runs/raw", standardize=False, student_standardize=False))
    assert raw["teacher_check"]["accuracy"] == outside
    assert raw["teacher_check"]["status"] == "ok"
    # a standardised student: the adapter gives the teacher its raw values back (float rounding only)
    adapted = kdlab.distill(_config(in_project, "runs/adapted", standardize=False))
    assert abs(adapted["teacher_check"]["accuracy"] - outside) <= 1 / adapted["data"]["val"]
    assert adapted["warnings"] == []


def test_an_undeclared_raw_teacher_is_reported(in_project):
    with pytest.warns(UserWarning, match="is its input preprocessed as it was trained"):
        summary = kdlab.distill(_config(in_project, "runs/wrong", standardize=None))
    check = summary["teacher_check"]
    assert check["status"] == "warning" and check["accuracy"] < 0.3
    assert summary["warnings"] and "teacher scores" in summary["warnings"][0]
    with pytest.raises(ConfigError, match="is its input preprocessed"):
        kdlab.distill(
            _config(in_project, "runs/wrong-error", standardize=None), ["teacher.check=error"], overwrite=True
        )
    assert not Path("runs/wrong-error").exists()  # refused before the run directory is made


def test_the_exported_onnx_takes_raw_values(in_project):
    pytest.importorskip("onnxruntime")
    from kdlab.compress.export import export_run, onnx_predict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kdlab.distill(_config(in_project, "runs/export", standardize=False), overwrite=True)
    report = export_run("runs/export", latency=False)
    assert report["agreement"] == 1.0
    data = load_dataset("csv", path="digits.csv", normalize=False, seed=0)  # raw values, as a user has them
    got = onnx_predict(report["path"], data.x_test.numpy())
    model = kdlab.load_model("runs/export")
    with torch.no_grad():
        expected = model(data.x_test).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    summary = json.loads(Path("runs/export/summary.json").read_text())
    accuracy = float((expected.argmax(1) == data.y_test.numpy()).mean())
    assert accuracy == summary["test_accuracy"]


def test_evaluate_from_another_directory_reproduces_the_summary(in_project, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = kdlab.distill(_config(in_project, "runs/elsewhere", standardize=False), overwrite=True)
    run = (in_project / "runs/elsewhere").resolve()
    saved = (run / "config.yaml").read_text()
    assert f"path: {in_project.resolve() / 'digits.csv'}" in saved or str(in_project / "digits.csv") in saved
    os.chdir(tmp_path)  # the monkeypatch fixture restores the directory
    result = kdlab.evaluate(run, ("test",), latency=False)  # rebuilds the teacher from my_teacher.py, found where
    assert result["test"]["accuracy"] == summary["test_accuracy"]  # the run recorded it (import_roots.json)
    assert result["teacher"] is True
    names = summary["data"]["class_names"]
    assert names == [f"digit-{i}" for i in range(10)]
