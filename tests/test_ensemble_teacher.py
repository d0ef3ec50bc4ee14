"""An ensemble of teachers is one teacher: softmax of its logits is the members' mean probability, and it is
distilled from (live or cached) like a single teacher."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from kdlab import models
from kdlab.api import cache_logits, distill
from kdlab.config import load_config
from kdlab.errors import ConfigError
from kdlab.teacher.ensemble import EnsembleTeacher
from kdlab.teacher.source import load_teacher, resolve_teacher

TRAIN = {"progress": False, "batch_size": 64, "epochs": 2, "train_eval_size": 0}


def test_softmax_of_the_ensemble_logits_is_the_mean_of_the_members_probabilities():
    torch.manual_seed(0)
    members = [torch.nn.Linear(5, 4).double() for _ in range(3)]
    with torch.no_grad():
        members[1].weight.mul_(8.0)  # one confident member: a plain mean of logits would differ a lot
    x = torch.randn(7, 5, dtype=torch.float64)
    logits = EnsembleTeacher(members)(x)
    mean_probs = sum(torch.softmax(m(x), -1) for m in members) / 3
    torch.testing.assert_close(torch.softmax(logits, -1), mean_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-6)
    mean_logits = sum(m(x) for m in members) / 3
    assert (torch.softmax(mean_logits, -1) - mean_probs).abs().max() > 1e-2  # what a wrong ensemble would give


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three digits MLPs of different widths, saved as model definition + safetensors."""
    root = tmp_path_factory.mktemp("ensemble")
    specs = []
    for i, width in enumerate((16, 24, 32)):
        torch.manual_seed(i)
        model = models.create("mlp", 10, (1, 8, 8), hidden=[width])
        path = root / f"m{i}.safetensors"
        save_file(model.state_dict(), str(path))
        specs.append({"model": {"name": "mlp", "kwargs": {"hidden": [width]}}, "weights": str(path)})
    return root, specs


def test_the_ensemble_teacher_loads_from_the_config_and_averages_probabilities(members):
    _, specs = members
    cfg = load_config({"teacher": {"ensemble": specs}, "method": {"name": "kd"}})
    source = resolve_teacher(cfg.teacher)
    teacher = load_teacher(source, 10, (1, 8, 8))
    singles = [load_teacher(resolve_teacher(load_config({"teacher": s}).teacher), 10, (1, 8, 8)) for s in specs]
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = sum(torch.softmax(m(x), -1) for m in singles) / 3
        torch.testing.assert_close(torch.softmax(teacher(x), -1), expected, rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert source.describe().startswith("ensemble of 3: mlp from ")
    other = resolve_teacher(load_config({"teacher": {"ensemble": specs[:2]}}).teacher)
    assert other.fingerprint() != source.fingerprint() and len(source.fingerprint()) == 64


def test_distilling_from_an_ensemble_live_and_from_its_cache(members, tmp_path):
    root, specs = members
    student = {
        "out": str(tmp_path / "live"),
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
        "teacher": {"ensemble": specs},
        "method": {"name": "kd"},
        "train": TRAIN,
    }
    live = distill(student)
    assert live["teacher"].startswith("ensemble of 3") and 0 <= live["test"]["agreement"] <= 1
    path = cache_logits({**student, "out": str(tmp_path / "unused")})
    assert path.parent == root and "-ensemble3-" in path.name
    cached = distill({**student, "out": str(tmp_path / "cached")})
    assert cached["teacher"] == f"cached logits {path}"
    # the same teacher outputs (float16 in the cache): the same student, up to that rounding
    assert cached["test"]["agreement"] == pytest.approx(live["test"]["agreement"], abs=0.02)
    summary = json.loads((tmp_path / "cached" / "summary.json").read_text())
    assert summary["test"]["kl_teacher"] == pytest.approx(live["test"]["kl_teacher"], rel=0.05)


def test_ensemble_config_errors_are_one_line():
    for teacher, fragment in [
        ({"ensemble": [{"run": "a"}]}, "at least 2"),
        ({"ensemble": [{"run": "a"}, {"run": "b"}], "run": "c"}, "teacher.ensemble lists its members"),
    ]:
        with pytest.raises(ConfigError, match=fragment) as err:
            load_config({"teacher": teacher})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"teacher\.ensemble is for task: classify"):
        load_config({"task": "causal_lm", "teacher": {"ensemble": [{"run": "a"}, {"run": "b"}]}})
