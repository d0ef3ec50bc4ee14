"""Teacher checkpoints by epoch, `chain` (TAKD) and `sweep`: tiny digits runs, skip/resume, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdlab import models
from kdlab.api import cache_logits, distill, train
from kdlab.cli import main
from kdlab.config import ConfigError, load_config
from kdlab.tasks.classify import load_data
from kdlab.teacher.logit_cache import read_cache
from kdlab.teacher.source import resolve_teacher
from kdlab.workflow.chain import chain
from kdlab.workflow.sweep import parse_grid, split_values, sweep

FAST = {"progress": False, "batch_size": 128, "optimizer": {"lr": 0.1}}


def cfg(out: Path, hidden: int, epochs: int = 2, **extra) -> dict:
    return {
        "out": str(out),
        "data": {"name": "digits"},
        "model": {"name": "mlp", "kwargs": {"hidden": [hidden]}},
        "train": {**FAST, "epochs": epochs},
        **extra,
    }


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ck") / "teacher"
    run = cfg(out, 32, epochs=4)
    run["train"]["keep_checkpoints_every"] = 2
    train(run)
    return out


def test_kept_epochs_and_a_teacher_from_an_early_epoch(tmp_path, teacher):
    kept = sorted(p.name for p in (teacher / "checkpoints").glob("epoch-*"))
    assert kept == ["epoch-2.safetensors", "epoch-4.safetensors"]
    final, last = load_file(str(teacher / "model.safetensors")), load_file(str(teacher / "checkpoints" / kept[1]))
    early = load_file(str(teacher / "checkpoints" / kept[0]))
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert not all(torch.equal(final[k], early[k]) for k in final)
    # the cache of epoch 2 holds exactly what the epoch-2 weights predict, in its own file
    student = cfg(tmp_path / "s", 8, teacher={"run": str(teacher), "checkpoint_epoch": 2}, method={"name": "kd"})
    path = cache_logits(student)
    assert path.name.endswith("-epoch2.safetensors")
    loaded = load_config(student)
    data, source = load_data(loaded), resolve_teacher(loaded.teacher)
    assert source.weights == teacher / "checkpoints" / "epoch-2.safetensors"
    model = models.create("mlp", 10, tuple(data.in_shape), hidden=[32])
    model.load_state_dict(early)
    cached = read_cache(path, data.fingerprint, source.fingerprint())
    with torch.no_grad():
        torch.testing.assert_close(cached["test"].float(), model(data.x_test), atol=2e-2, rtol=1e-2)  # float16
    summary = distill(student)
    assert summary["teacher"] == f"cached logits {path}"


def test_a_missing_epoch_is_one_error_listing_the_kept_ones(tmp_path, teacher):
    student = cfg(tmp_path / "s", 8, teacher={"run": str(teacher), "checkpoint_epoch": 3}, method={"name": "kd"})
    with pytest.raises(ConfigError, match=r"checkpoint_epoch=3: .* did not keep that epoch \(kept: 2, 4;"):
        distill(student)
    assert not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match=r"checkpoint_epoch needs teacher\.run"):
        load_config(cfg(tmp_path / "s", 8, teacher={"model": {"name": "mlp"}, "weights": "w", "checkpoint_epoch": 1}))


def chain_file(out: Path) -> dict:
    return {
        "out": str(out),
        "base": {"data": {"name": "digits"}, "train": {**FAST, "epochs": 2}, "method": {"name": "kd", "alpha": 0.5}},
        "stages": [
            {"name": "teacher", "model": {"name": "mlp", "kwargs": {"hidden": [32]}}, "method": {"name": "ce"}},
            {"name": "assistant", "model": {"name": "mlp", "kwargs": {"hidden": [16]}}},
            {"name": "student", "model": {"name": "mlp", "kwargs": {"hidden": [8]}}, "train": {"epochs": 1}},
        ],
    }


def test_chain_distils_stage_by_stage_and_resumes(tmp_path):
    spec = chain_file(tmp_path / "takd")
    first = chain(spec)
    assert [s["chain_action"] for s in first] == ["fresh", "fresh", "fresh"]
    assert [s["method"].split("(")[0] for s in first] == ["ce", "kd", "kd"]
    student_cfg = load_config(tmp_path / "takd" / "student" / "config.yaml")
    assert student_cfg.teacher.run == str(tmp_path / "takd" / "assistant") and student_cfg.train.epochs == 1
    assert load_config(tmp_path / "takd" / "assistant" / "config.yaml").method.params() == {"alpha": 0.5}
    assert json.loads((tmp_path / "takd" / "chain.json").read_text())["stages"][2]["name"] == "student"
    # finished stages are skipped
    again = chain(spec)
    assert [s["chain_action"] for s in again] == ["skip", "skip", "skip"]
    assert [s["test_accuracy"] for s in again] == [s["test_accuracy"] for s in first]
    # an interrupted assistant resumes from its checkpoint; the student after it is trained again
    (tmp_path / "takd" / "assistant" / "summary.json").unlink()
    resumed = chain(spec)
    assert [s["chain_action"] for s in resumed] == ["skip", "resume", "overwrite"]
    assert resumed[1]["test_accuracy"] == first[1]["test_accuracy"]  # the same weights: the run had finished
    # another configuration in a stage's directory stops the chain before anything runs
    spec["stages"][1]["model"]["kwargs"]["hidden"] = [12]
    with pytest.raises(ConfigError, match="assistant holds a run of a different configuration"):
        chain(spec)


def test_chain_config_errors_name_the_stage(tmp_path):
    spec = chain_file(tmp_path / "bad")
    spec["stages"][1]["train"] = {"epohcs": 3}
    with pytest.raises(ConfigError, match=r"chain stage .assistant.: config: unknown key .train\.epohcs."):
        chain(spec)
    spec = chain_file(tmp_path / "bad")
    spec["stages"][2]["teacher"] = {"run": "elsewhere"}
    with pytest.raises(ConfigError, match=r"only teacher\.checkpoint_epoch"):
        chain(spec)
    assert not (tmp_path / "bad").exists()


def test_grid_parsing():
    assert split_values("[8, 16],{a: 1, b: 2}, 3,'x,y'") == ["[8, 16]", "{a: 1, b: 2}", "3", "'x,y'"]
    assert parse_grid(["model.kwargs.hidden=[8],[16, 16]", "seed=0,1"]) == {
        "model.kwargs.hidden": [[8], [16, 16]],
        "seed": [0, 1],
    }
    for bad in (["seed"], ["seed="], ["seed=0,,1"]):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid(bad)


def test_sweep_runs_the_grid_skips_finished_points_and_reports(tmp_path):
    base = cfg(tmp_path / "unused", 8, epochs=1)
    result = sweep(base, {"model.kwargs.hidden": [[4], [8]], "seed": [0, 1]}, root=tmp_path / "sw", progress=False)
    names = [p.name for p in result.points]
    assert names == ["hidden=4-seed=0", "hidden=4-seed=1", "hidden=8-seed=0", "hidden=8-seed=1"]
    params = [p.summary["parameters"] for p in result.points]
    assert params == [64 * 4 + 4 + 4 * 10 + 10] * 2 + [64 * 8 + 8 + 8 * 10 + 10] * 2
    report = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    accs = [p.summary["test_accuracy"] for p in result.points]
    group = report["over_seeds"][1]
    assert group["model.kwargs.hidden"] == "8" and group["mean"] == pytest.approx((accs[2] + accs[3]) / 2)
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 0
    assert "| hidden=8-seed=1 | 8 | 1 |" in (tmp_path / "sw" / "sweep.md").read_text()
    (tmp_path / "sw" / "hidden=8-seed=1" / "summary.json").unlink()  # as if interrupted after the last checkpoint
    again = sweep(base, {"model.kwargs.hidden": [[4], [8]], "seed": [0, 1]}, root=tmp_path / "sw", progress=False)
    assert [p.action for p in again.points] == ["skip", "skip", "skip", "resume"]
    assert [p.summary["test_accuracy"] for p in again.points] == accs


def cli_error(monkeypatch, capsys, *args: str) -> str:
    """Run the real entry point in this process; return its single stderr line (exit code 2 expected)."""
    monkeypatch.setattr(sys, "argv", ["kdlab", *args])
    with pytest.raises(SystemExit) as done:
        main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert done.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def test_sweep_in_parallel_processes_and_the_command_errors(tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(cfg(tmp_path / "sw", 8, epochs=1)))
    result = sweep(config, parse_grid(["model.kwargs.hidden=[4],[8]"]), jobs=2, progress=False)
    assert [p.name for p in result.points] == ["hidden=4", "hidden=8"]
    for point in result.points:
        assert point.summary == json.loads((tmp_path / "sw-sweep" / point.name / "summary.json").read_text())
        assert (tmp_path / "sw-sweep" / "logs" / f"{point.name}.log").is_file()
    line = cli_error(monkeypatch, capsys, "sweep", str(config), "--grid", "train.epohcs=1,2")
    assert "sweep point epohcs=1: config: unknown key 'train.epohcs'" in line
    assert "sweep point epochs=x" in cli_error(monkeypatch, capsys, "sweep", str(config), "--grid", "train.epochs=1,x")
    assert "--grid expects key.sub=v1,v2" in cli_error(monkeypatch, capsys, "sweep", str(config), "--grid", "seed")
    chain_yaml = tmp_path / "chain.yaml"
    chain_yaml.write_text("out: x\nstages: []\n")
    assert "chain: stages: List should have at least 1 item" in cli_error(monkeypatch, capsys, "chain", str(chain_yaml))
    assert not (tmp_path / "x").exists()
