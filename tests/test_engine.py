"""End to end on digits: train a teacher, distil students, run directories, cache, errors, NaN guard."""

from __future__ import annotations

import copy
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
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    assert shapes == {"body.0.0.weight": (64, 64), "body.0.0.bias": (64,), "fc.weight": (10, 64), "fc.bias": (10,)}
    assert (teacher_run / "config.yaml").is_file() and (teacher_run / "checkpoints" / "latest").is_file()


@pytest.mark.parametrize(
    "method",
    [  # every weight and temperature given, α ≠ β: the reference below takes its numbers from here alone
        {"name": "kd", "alpha": 0.2, "beta": 0.8, "temperature": 4.0},
        {"name": "ptloss", "alpha": 0.2, "beta": 0.8, "temperature": 2.0, "epsilon": [0.1, -0.1]},
        {"name": "dkd", "ce_weight": 0.8, "alpha": 0.5, "beta": 4.0, "temperature": 4.0, "warmup_epochs": 1},
        {"name": "poly1", "alpha": 0.3, "beta": 0.6, "temperature": 2.0, "epsilon": -0.5},
        {"name": "focal", "alpha": 0.3, "beta": 0.6, "temperature": 2.0, "gamma": 2.0},
        {"name": "label_smoothing", "alpha": 0.2, "beta": 0.8, "temperature": 4.0, "smoothing": 0.1},
    ],
    ids=lambda m: m["name"],
)
def test_every_method_distils(tmp_path, teacher_run, method):
    """Each method trains a student end to end, and its first optimizer step's loss terms (as logged) are the
    float64 reference terms (tests/test_parameter_values.py) of the config's numbers, computed here on the epoch's
    first 64 training rows with the initial student and the teacher: α and β swapped, a temperature or ε that does
    not reach the method, or the wrong teacher rows would all show. (DKD's ramp is 0 at the first step.)"""
    from test_parameter_values import reference_terms  # tests/ is on sys.path (pytest's rootdir-relative import)

    from kdlab import models
    from kdlab.api import fit_model
    from kdlab.config import load_config
    from kdlab.engine.batches import epoch_permutation
    from kdlab.tasks.classify import load_data

    cfg = student_cfg(tmp_path / "s", teacher_run, method)
    torch.manual_seed(1)
    student = models.create("mlp", 10, (1, 8, 8), hidden=[16])
    initial = copy.deepcopy(student).eval()
    first: list[dict[str, float]] = []
    summary = fit_model(cfg, student, callbacks=[lambda info: first.append(info.terms) if info.global_step == 1 else 0])
    data = load_data(load_config(cfg))
    rows = epoch_permutation(len(data.y_train), 0, 0)[:64]  # batch_size 64, grad_accum 1: the first step's batch
    teacher = models.create("mlp", 10, (1, 8, 8), hidden=[64]).eval()
    teacher.load_state_dict(load_file(str(teacher_run / "model.safetensors")))
    with torch.no_grad():
        s, t = initial(data.x_train[rows]).double(), teacher(data.x_train[rows]).double()
    expected = reference_terms(method, s, t, data.y_train[rows], progress=0.0)
    assert len(first) == 1 and first[0].keys() == expected.keys()
    for key, value in expected.items():
        assert first[0][key] == pytest.approx(float(value), rel=1e-5, abs=1e-7), key
    # 3 epochs of a 16-unit MLP (chance is 0.1): measured 0.90-0.93 accuracy, 0.93-0.96 agreement for these six
    assert summary["test_accuracy"] > 0.85 and 0.85 < summary["test"]["agreement"] <= 1.0
    assert summary["test"]["kl_teacher"] > 0 and summary["teacher"].startswith("mlp")


def test_kd_student_does_not_contain_the_teacher(tmp_path, teacher_run):
    distill(student_cfg(tmp_path / "s", teacher_run, {"name": "kd"}, epochs=1))
    weights = load_file(str(tmp_path / "s" / "model.safetensors"))
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    assert shapes == {"body.0.0.weight": (16, 64), "body.0.0.bias": (16,), "fc.weight": (10, 16), "fc.bias": (10,)}


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
