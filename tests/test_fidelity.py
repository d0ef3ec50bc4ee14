"""Fidelity in the engine: augmented distillation inputs, train-subset fidelity per epoch, `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdlab.api import distill, evaluate, train
from kdlab.config import ConfigError
from kdlab.data import gaussian_noise, mixup
from kdlab.engine.supervised import train_eval_rows

FAST = {"progress": False, "batch_size": 64, "optimizer": {"lr": 0.05}}


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mixup_is_a_convex_mix_dominated_by_the_original_row():
    x = torch.eye(8, dtype=torch.float64)  # row i = e_i, so out[i] shows its mixing weights
    out = mixup(x, 1.0, _gen(0))
    assert torch.allclose(out.sum(1), torch.ones(8, dtype=torch.float64))  # convex: weights sum to 1
    assert bool((out >= 0).all())
    assert bool((out.diagonal() >= 0.5).all())  # lam folded to >= 0.5: the original row dominates
    assert int((out > 0).sum(1).max()) <= 2  # one partner per row
    assert not torch.equal(out, x)
    assert torch.equal(out, mixup(x, 1.0, _gen(0))) and not torch.equal(out, mixup(x, 1.0, _gen(1)))
    assert mixup(x, 0.0, _gen(0)) is x
    images = torch.randn(6, 1, 4, 4, generator=_gen(3))
    assert mixup(images, 0.4, _gen(0)).shape == images.shape
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, -1.0)


def test_gaussian_noise_has_the_asked_std():
    x = torch.zeros(200_000)
    out = gaussian_noise(x, 0.5, _gen(0))
    assert abs(float(out.mean())) < 0.005 and abs(float(out.std()) - 0.5) < 0.005
    assert torch.equal(out, gaussian_noise(x, 0.5, _gen(0)))
    assert gaussian_noise(x, 0.0, _gen(0)) is x


def test_train_eval_rows_are_a_fixed_sorted_sample():
    rows = train_eval_rows(100, 10, seed=3)
    assert len(rows) == 10 and len(set(rows.tolist())) == 10 and rows.tolist() == sorted(rows.tolist())
    assert torch.equal(rows, train_eval_rows(100, 10, seed=3))
    assert torch.equal(train_eval_rows(5, 10, seed=0), torch.arange(5))


def _student(out: Path, teacher: Path, **extra) -> dict:
    cfg = {
        "name": out.name,
        "out": str(out),
        "data": {"name": "digits"},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "teacher": {"run": str(teacher)},
        "method": {"name": "kd", "alpha": 0.0, "beta": 1.0, "temperature": 4.0},
        "train": {**FAST, "epochs": 2},
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fidelity") / "teacher"
    cfg = {
        "name": "teacher",
        "out": str(out),
        "data": {"name": "digits"},
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "train": {**FAST, "epochs": 3},
    }
    train(cfg)
    return out


def test_train_fidelity_is_logged_per_epoch_and_matches_evaluate(tmp_path, teacher_run):
    cfg = _student(tmp_path / "s", teacher_run, train={**FAST, "epochs": 2, "train_eval_size": 100_000})
    summary = distill(cfg)
    epochs = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if "val/accuracy" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 < r["train_eval/agreement"] <= 1 and r["train_eval/kl_teacher"] > 0 for r in epochs)
    assert summary["train_eval"]["agreement"] == epochs[-1]["train_eval/agreement"]
    result = evaluate(tmp_path / "s")
    # train_eval_size >= the training rows: the logged train fidelity is the whole training split's
    for key in ("accuracy", "nll", "ece", "agreement", "kl_teacher"):
        assert result["train"][key] == pytest.approx(summary["train_eval"][key], abs=1e-9)
        assert result["test"][key] == pytest.approx(summary["test"][key], abs=1e-9)
    assert sum(result["test"]["reliability"]["count"]) == summary["data"]["test"]
    assert sum(map(sum, result["test"]["confusion_teacher"])) == summary["data"]["test"]
    diagonal = sum(result["test"]["confusion_teacher"][k][k] for k in range(10)) / summary["data"]["test"]
    assert diagonal == pytest.approx(result["test"]["agreement"], abs=1e-12)
    written = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert written["evaluation"]["test"]["agreement"] == result["test"]["agreement"]
    assert written["test_accuracy"] == summary["test_accuracy"]  # the rest of the summary is kept


def test_train_eval_can_be_turned_off(tmp_path, teacher_run):
    summary = distill(_student(tmp_path / "s", teacher_run, train={**FAST, "epochs": 1, "train_eval_size": 0}))
    lines = (tmp_path / "s" / "metrics.jsonl").read_text()
    assert "train_eval/" not in lines and summary["train_eval"] == {}


def test_ptloss_run_reports_proxy_fidelity(tmp_path, teacher_run):
    # eps = 0 at T = 1: the proxy teacher is the teacher, so proxy fidelity = teacher fidelity exactly
    method = {"name": "ptloss", "alpha": 0.0, "beta": 1.0, "temperature": 1.0, "epsilon": [0.0]}
    distill(_student(tmp_path / "p", teacher_run, method=method, train={**FAST, "epochs": 1}))
    test = evaluate(tmp_path / "p")["test"]
    assert test["kl_proxy"] == pytest.approx(test["kl_teacher"], abs=1e-9)
    assert test["proxy_agreement"] == pytest.approx(test["agreement"], abs=1e-12)


def test_a_ptloss_run_without_a_proxy_teacher_still_evaluates(tmp_path, teacher_run):
    # eps_1 = -2 < -1/1: a legal loss, but outside the proxy teacher's range; evaluate must not fail on it
    method = {"name": "ptloss", "alpha": 0.0, "beta": 1.0, "epsilon": [-2.0]}
    distill(_student(tmp_path / "p", teacher_run, method=method, train={**FAST, "epochs": 1}))
    test = evaluate(tmp_path / "p")["test"]
    assert "kl_proxy" not in test and 0.0 <= test["agreement"] <= 1.0


def test_mixup_distillation_uses_the_live_teacher(tmp_path, teacher_run):
    """The first step's KD term is T² · KL(teacher ‖ student) on the *mixed* rows, both networks seeing the same mixed
    inputs: mixup(the epoch's first 64 training rows, α = 1, the batch's generator), recomputed here in float64 with
    the initial student and the teacher. The term on the un-mixed rows, or with a teacher that labels the un-mixed
    rows, is clearly another number."""
    import copy

    from kdlab import models
    from kdlab.api import fit_model
    from kdlab.config import load_config
    from kdlab.engine.batches import batch_generator, epoch_permutation
    from kdlab.tasks.classify import load_data

    cfg = _student(tmp_path / "b", teacher_run, data={"name": "digits", "augment": {"mixup_alpha": 1.0}})
    torch.manual_seed(2)
    student = models.create("mlp", 10, (1, 8, 8), hidden=[16])
    initial = copy.deepcopy(student).eval()
    first: list[dict[str, float]] = []
    mixed = fit_model(cfg, student, callbacks=[lambda info: first.append(info.terms) if info.global_step == 1 else 0])
    assert mixed["teacher"].startswith("mlp")  # not "cached logits": they cannot follow mixed inputs
    data = load_data(load_config(cfg))
    x = data.x_train[epoch_permutation(len(data.y_train), 0, 0)[:64]]
    x_mixed = mixup(x, 1.0, batch_generator(0, 0, 0, 0))  # seed 0, epoch 0, step 0, rank 0
    teacher = models.create("mlp", 10, (1, 8, 8), hidden=[32]).eval()
    teacher.load_state_dict(load_file(str(teacher_run / "model.safetensors")))

    def kd(student_inputs: torch.Tensor, teacher_inputs: torch.Tensor) -> float:
        with torch.no_grad():
            log_p = torch.log_softmax(initial(student_inputs).double() / 4, -1)
            log_q = torch.log_softmax(teacher(teacher_inputs).double() / 4, -1)
        return float(16 * (log_q.exp() * (log_q - log_p)).sum(-1).mean())  # alpha 0, beta 1, T 4

    assert first[0].keys() == {"kd"}
    assert first[0]["kd"] == pytest.approx(kd(x_mixed, x_mixed), rel=1e-5)
    for other in (kd(x, x), kd(x_mixed, x)):
        assert abs(other - kd(x_mixed, x_mixed)) > 0.05 * kd(x_mixed, x_mixed)
    assert mixed["test"]["agreement"] > 0.5


def test_mixup_is_for_distillation_only(tmp_path):
    cfg = {"out": str(tmp_path / "t"), "data": {"name": "digits", "augment": {"noise_std": 0.1}}}
    with pytest.raises(ConfigError, match="distillation inputs only"):
        train(cfg)
    assert not (tmp_path / "t").exists()
