"""End to end on digits: train a teacher, distil students, run directories, cache, errors, NaN guard."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdlab.api import cache_logits, distill, evaluate, train
from kdlab.config import ConfigError
from kdlab.engine import CacheError, TrainingError
from kdlab.methods import Method, MethodParams, register

FAST = {"progress": False, "batch_size": 64, "optimizer": {"lr": 0.05}}


def teacher_cfg(out: Path, epochs: int = 6) -> dict:
    return {
        "name": "t",
        "out": str(out),
        "data": {"name": "digits"},
        "model": {"name": "mlp", "kwargs": {"hidden": [64]}},
        "train": {**FAST, "epochs": epochs},
    }


def student_cfg(out: Path, teacher: Path, method: dict, epochs: int = 3) -> dict:
    return {
        "name": "s",
        "out": str(out),
        "data": {"name": "digits"},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "teacher": {"run": str(teacher)},
        "method": method,
        "train": {**FAST, "epochs": epochs},
    }


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    train(teacher_cfg(out))
    return out


def test_teacher_run_directory_is_complete_and_accurate(teacher_run):
    summary = json.loads((teacher_run / "summary.json").read_text())
    assert summary["complete"] and summary["test_accuracy"] >= 0.93
    for key in ("test", "val", "epochs", "wall_seconds", "samples_per_second", "parameters", "versions", "seed"):
        assert key in summary
    assert summary["parameters"] == 64 * 64 + 64 + 64 * 10 + 10
    lines = [json.loads(x) for x in (teacher_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if "val/accuracy" in x]
    assert [x["epoch"] for x in epochs] == list(range(1, 7))
    weights = load_file(str(teacher_run / "model.safetensors"))
    assert set(weights) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"} or len(weights) == 4
    assert (teacher_run / "config.yaml").is_file() and (teacher_run / "checkpoints" / "latest").is_file()


@pytest.mark.parametrize(
    "method",
    [
        {"name": "kd"},
        {"name": "ptloss", "epsilon": [0.1, -0.1]},
        {"name": "dkd", "warmup_epochs": 1},
        {"name": "poly1"},
        {"name": "focal"},
        {"name": "label_smoothing"},
    ],
)
def test_every_method_distils(tmp_path, teacher_run, method):
    summary = distill(student_cfg(tmp_path / "s", teacher_run, method))
    assert summary["test_accuracy"] > 0.6  # 3 epochs of a 16-unit MLP; chance is 0.1
    assert 0.6 < summary["test"]["agreement"] <= 1.0 and summary["test"]["kl_teacher"] >= 0
    assert "teacher" in summary and summary["teacher"].startswith("mlp")


def test_kd_student_does_not_contain_the_teacher(tmp_path, teacher_run):
    distill(student_cfg(tmp_path / "s", teacher_run, {"name": "kd"}, epochs=1))
    weights = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert weights["net.0.weight"].shape[0] == 16 if "net.0.weight" in weights else True
    total = sum(v.numel() for v in weights.values())
    assert total == 64 * 16 + 16 + 16 * 10 + 10


def test_run_directory_rules(tmp_path, teacher_run):
    cfg = student_cfg(tmp_path / "s", teacher_run, {"name": "kd"}, epochs=1)
    distill(cfg)
    with pytest.raises(ConfigError, match="already holds a finished run"):
        distill(cfg)
    distill(cfg, overwrite=True)
    with pytest.raises(ConfigError, match="needs a 'teacher' section"):
        distill({k: v for k, v in cfg.items() if k != "teacher"}, overwrite=True)
    with pytest.raises(ConfigError, match="train uses plain cross-entropy"):
        train(cfg, overwrite=True)
    missing = dict(cfg, teacher={"run": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="not a kdlab run directory"):
        distill(missing, overwrite=True)


def test_logit_cache_is_used_and_stale_ones_are_refused(tmp_path, teacher_run):
    cfg = student_cfg(tmp_path / "s", teacher_run, {"name": "kd"}, epochs=2)
    cfg["cache"] = {"path": str(tmp_path / "cache.safetensors")}
    live = distill(dict(cfg, cache={"use": "never"}))
    path = cache_logits(cfg)
    assert path == tmp_path / "cache.safetensors"
    cached = distill(cfg, overwrite=True)
    assert cached["teacher"].startswith("cached logits")
    assert abs(cached["test_accuracy"] - live["test_accuracy"]) <= 0.02  # float16 logits vs float32
    stale = dict(cfg, seed=1)  # another seed carves another validation split: other data fingerprint
    with pytest.raises(CacheError, match="stale logit cache"):
        distill(stale, overwrite=True)
    with pytest.raises(ConfigError, match="augmentation"):
        distill(
            dict(cfg, cache={"use": "require", "path": str(path)}, data={"name": "digits", "augment": {"hflip": True}}),
            overwrite=True,
        )


def test_the_classifier_cache_honours_cache_topk(tmp_path, teacher_run):
    """A top-3 cache is its own file; a run asking for top-3 reads it, one asking for dense logits never does, and
    a cache of another k named by cache.path is refused with one line."""
    cfg = student_cfg(tmp_path / "s", teacher_run, {"name": "kd"}, epochs=1)
    top3 = cache_logits(dict(cfg, cache={"topk": 3}))
    assert top3.name.endswith("-top3.safetensors") and top3.parent == teacher_run
    assert distill(dict(cfg, cache={"topk": 3}))["teacher"] == f"cached logits {top3}"
    dense = distill(dict(cfg, out=str(tmp_path / "dense")))  # no dense cache exists: the live teacher
    assert not dense["teacher"].startswith("cached logits")
    with pytest.raises(CacheError) as err:
        distill(dict(cfg, out=str(tmp_path / "wrong"), cache={"path": str(top3), "use": "require"}))
    assert str(err.value) == (
        f"logit cache {top3} holds top-3 logits, the config asks for dense logits (cache.topk); "
        "re-run `kdlab cache-logits CONFIG` or set cache.use=never"
    )


def test_topk_cache_keeps_the_top_probabilities(tmp_path, teacher_run):
    from kdlab.teacher.logit_cache import decode, encode

    logits = torch.randn(5, 10) * 3
    dense = decode(encode(logits, topk=3), 10)
    p, q = torch.softmax(logits, -1), torch.softmax(dense, -1)
    top = p.topk(3, -1).indices
    torch.testing.assert_close(q.gather(1, top), p.gather(1, top))
    torch.testing.assert_close(q.sum(-1), torch.ones(5))


@register("nan_test")
class _NaNMethod(Method):
    Params = MethodParams
    needs_teacher = False

    def compute(self, batch, student, teacher, state):
        bad = student.logits.sum() * (float("nan") if state.step == 2 else 0.0)
        return {"ce": torch.nn.functional.cross_entropy(student.logits, batch["y"]), "boom": bad}


def test_nan_guard_names_the_term_and_step(tmp_path):
    cfg = student_cfg(tmp_path / "s", tmp_path, {"name": "nan_test"}, epochs=1)
    cfg.pop("teacher")
    with pytest.raises(TrainingError, match="'boom' is not finite at epoch 1, step 3"):
        distill(dict(cfg, teacher={"model": {"name": "mlp"}, "weights": str(tmp_path / "w.safetensors")}))
    assert not (tmp_path / "s" / "summary.json").exists()


def test_evaluate_recomputes_the_summary_metrics(tmp_path, teacher_run):
    summary = distill(student_cfg(tmp_path / "s", teacher_run, {"name": "kd"}, epochs=1))
    result = evaluate(tmp_path / "s")
    assert abs(result["test"]["accuracy"] - summary["test"]["accuracy"]) < 1e-9
    assert abs(result["test"]["agreement"] - summary["test"]["agreement"]) < 1e-9
    assert (tmp_path / "s" / "evaluation.json").is_file()


def test_a_student_on_another_split_than_its_teacher_is_warned_and_split_seed_shares_it(tmp_path, teacher_run):
    from kdlab.config import load_config
    from kdlab.tasks.classify import load_data

    cfg = {**student_cfg(tmp_path / "s", teacher_run, {"name": "kd"}, epochs=1), "seed": 1}
    with pytest.warns(UserWarning, match=r"split of seed 0, this run uses seed 1.*data.split_seed: 0"):
        distill(cfg)
    shared = {**cfg, "out": str(tmp_path / "shared"), "data": {"name": "digits", "split_seed": 0}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        distill(shared)
    teacher_split = load_data(load_config(teacher_cfg(tmp_path / "t")))
    for seed, same in ((1, False), (0, True)):
        student_split = load_data(load_config({**shared, "seed": 1, "data": {"name": "digits", "split_seed": seed}}))
        assert torch.equal(student_split.x_val, teacher_split.x_val) is same
