"""The fast teacher is guarded: with any speed switch on, a distillation first measures the fast teacher against the
exact fp32 one (top-1 agreement, KD loss between them) and refuses one below ``teacher.min_agreement``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlab import models
from kdlab.api import distill, train
from kdlab.engine.checkpoint import save_weights
from kdlab.engine.speed import check_faithful, faithfulness, fast_teacher
from kdlab.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 1, "batch_size": 64, "progress": False, "train_eval_size": 0}


def _sensitive_teacher() -> torch.nn.Module:
    """Classes 0 and 1 almost tie on every input (their rows differ by 1e-3): rounding flips the winner."""
    torch.manual_seed(0)
    teacher = models.create("mlp", 10, (64,), hidden=[32])
    with torch.no_grad():
        teacher.fc.weight[1] = teacher.fc.weight[0] + 1e-3 * torch.randn(32)
        teacher.fc.bias[:2] = 20.0
    return teacher


def _student_cfg(tmp_path: Path, teacher: dict, out: str = "student") -> dict:
    return {
        "out": str(tmp_path / out),
        "data": {"name": "digits"},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "teacher": {**teacher, "check": "off"},
        "method": {"name": "kd", "temperature": 4.0},
        "train": FAST,
    }


def test_faithfulness_measures_agreement_and_kd_gap():
    exact = torch.randn(200, 10)
    same = faithfulness(exact, exact.clone(), temperature=4.0)
    assert same["agreement"] == 1.0 and same["kd_loss_gap"] == pytest.approx(0.0, abs=1e-6)
    report = faithfulness(exact, exact + 3 * torch.randn(200, 10), temperature=4.0)
    assert report["agreement"] < 0.9 and report["kd_loss_gap"] > 0.01
    with pytest.raises(ConfigError, match=r"below teacher\.min_agreement=0\.99"):
        check_faithful({**report, "split": "val", "switches": ["fake"]}, 0.99)
    assert check_faithful({**report, "split": "val", "switches": ["fake"]}, 0.0)["status"] == "ok"


def test_int8_teacher_is_a_quantized_copy():
    teacher = models.create("mlp", 10, (64,), hidden=[32]).eval()
    fast = fast_teacher(teacher, quantize="int8_dynamic")
    assert fast is not teacher and type(fast.fc.weight).__name__ == "Int8Tensor"
    assert type(teacher.fc.weight) is torch.nn.Parameter  # the exact teacher is untouched
    x = torch.randn(16, 64)
    torch.testing.assert_close(fast(x), teacher(x), rtol=0.05, atol=0.05)


@pytest.mark.filterwarnings("ignore:validation accuracy")
def test_a_degraded_fast_teacher_is_refused_with_one_line(tmp_path):
    """int8 on a teacher engineered to be sensitive: below the threshold, the CLI says so in one line, exit 2."""
    weights = tmp_path / "sensitive.safetensors"
    save_weights(_sensitive_teacher(), weights)
    teacher = {
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "weights": str(weights),
        "quantize": "int8_dynamic",
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(_student_cfg(tmp_path, teacher)))
    done = subprocess.run(
        [sys.executable, "-m", "kdlab.cli", "distill", str(cfg)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-1500:]
    lines = [x for x in done.stderr.splitlines() if x.strip() and not x.startswith("warning: ")]
    assert len(lines) == 1 and "teacher.min_agreement=0.99" in lines[0] and "quantize=int8_dynamic" in lines[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "student").exists()  # nothing trained, no run dir
    relaxed = _student_cfg(tmp_path, {**teacher, "min_agreement": 0.5})
    summary = distill(relaxed)  # the same teacher passes a threshold it meets, and the numbers are recorded
    assert 0.5 <= summary["fast_teacher"]["agreement"] < 0.99


def test_a_fake_switch_that_perturbs_logits_is_refused(tmp_path, monkeypatch):
    """The guard judges what the switched teacher outputs, whatever the switch does."""
    from kdlab.tasks import classify_checks

    class Noisy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return out + 5 * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))

    real = classify_checks.fast_teacher
    monkeypatch.setattr(classify_checks, "fast_teacher", lambda t, **kw: Noisy(real(t, **kw)))
    weights = tmp_path / "t.safetensors"
    save_weights(models.create("mlp", 10, (64,), hidden=[32]), weights)
    teacher = {"model": {"name": "mlp", "kwargs": {"hidden": [32]}}, "weights": str(weights), "precision": "bf16"}
    with pytest.raises(ConfigError, match=r"precision=bf16\) agrees .* below teacher\.min_agreement"):
        distill(_student_cfg(tmp_path, teacher))


def test_a_faithful_fast_teacher_passes_and_its_numbers_reach_the_summary(tmp_path):
    teacher_run = tmp_path / "teacher"
    train(
        {
            "out": str(teacher_run),
            "data": {"name": "digits"},
            "model": {"name": "mlp", "kwargs": {"hidden": [64]}},
            "train": {**FAST, "epochs": 4},
        }
    )
    summary = distill(_student_cfg(tmp_path, {"run": str(teacher_run), "quantize": "int8_dynamic"}))
    report = summary["fast_teacher"]
    assert report["status"] == "ok" and report["switches"] == ["quantize=int8_dynamic"]
    assert report["agreement"] >= 0.99 and 0 <= report["kd_loss_gap"] < 0.05
    assert report["split"] == "val" and report["rows"] > 0 and report["temperature"] == 4.0
    on_disk = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert on_disk["fast_teacher"] == report
    plain = distill(_student_cfg(tmp_path, {"run": str(teacher_run)}, out="plain"))
    assert plain["fast_teacher"] is None  # no switch: no check, no second teacher pass


def test_the_teacher_runs_over_the_validation_split_once(tmp_path, monkeypatch):
    """The teacher check's pass over the whole validation split is the one the step needs for its per-epoch
    agreement: kept, not made twice; the run's metrics still see the teacher's validation logits."""
    from kdlab.engine import predict as predict_module
    from kdlab.engine import supervised
    from kdlab.tasks import classify

    weights = tmp_path / "t.safetensors"
    save_weights(models.create("mlp", 10, (64,), hidden=[32]), weights)
    teacher = {"model": {"name": "mlp", "kwargs": {"hidden": [32]}}, "weights": str(weights)}
    cfg = _student_cfg(tmp_path, teacher)
    cfg["teacher"]["check"] = "warn"
    rows: list[int] = []

    def counted(model, x, *args, **kwargs):
        if model is not None and not any(p.requires_grad for p in model.parameters()):  # the frozen teacher
            rows.append(len(x))
        return predict_module.predict(model, x, *args, **kwargs)

    monkeypatch.setattr(classify, "predict", counted)
    monkeypatch.setattr(supervised, "predict", counted)
    with pytest.warns(UserWarning):  # an untrained teacher: the check warns, the run goes on
        summary = distill(cfg)
    val_rows = summary["data"]["val"]
    assert rows.count(val_rows) == 1, f"teacher passes (rows each): {rows}; validation has {val_rows}"
    history = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/agreement" in r for r in history)
