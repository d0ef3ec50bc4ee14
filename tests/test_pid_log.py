"""``train.pid_every``: the PID of a run's layer pair over epochs (pid.jsonl) — the epochs it measures, values equal
to ``kdlab.eval.pid`` on the same representations (through ``run_pid``, which reads the saved weights), a
training left bit for bit as without it, a resume that neither repeats nor loses a line, bad settings refused
before a directory exists, and the report's figure and table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kdlab.api import distill, train
from kdlab.config import load_config
from kdlab.engine import StepInfo
from kdlab.errors import ConfigError
from kdlab.eval import plots
from kdlab.eval.pid import read_log
from kdlab.eval.report import write_report
from kdlab.tasks.classify_pid import pid_lines, run_pid

TRAIN = {"progress": False, "batch_size": 64, "optimizer": {"lr": 0.05}, "train_eval_size": 0}
STUDENT = {"name": "mlp", "kwargs": {"hidden": [8], "dropout": 0.2}}  # dropout: a student left in eval mode shows
VID = {"name": "vid", "student_layer": "body.0", "teacher_layer": "body.0"}
TERMS = ("red", "unique_t", "unique_s", "synergy", "joint", "mi_t", "mi_s", "mi_ts")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pid_log") / "teacher"
    train({"name": "t", "out": str(out), "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
           "train": {**TRAIN, "epochs": 2}})  # fmt: skip
    return out


def _cfg(out: Path, teacher: Path, method: dict | None = None, **train_keys) -> dict:
    return {"name": out.name, "out": str(out), "model": STUDENT, "teacher": {"run": str(teacher)},
            "method": method or VID, "train": {**TRAIN, "epochs": 3, "pid_every": 2, **train_keys}}  # fmt: skip


@pytest.fixture(scope="module")
def logged(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pid_log") / "vid"
    distill(_cfg(out, teacher, keep_epoch_checkpoints=[2]))
    return out


def test_pid_every_measures_epochs_n_and_last_as_the_estimator_does(logged, tmp_path):
    lines = read_log(logged)
    assert [r["epoch"] for r in lines] == [2, 3]  # every 2nd epoch and the last
    assert {(r["rows"], r["clusters"], r["split"], r["student_layer"]) for r in lines} == {(144, 8, "val", "body.0")}
    at_two = tmp_path / "at-epoch-2"  # the run as it was after epoch 2: run_pid reads model.safetensors
    shutil.copytree(logged, at_two)
    shutil.copy(logged / "checkpoints" / "epoch-2.safetensors", at_two / "model.safetensors")
    for run, line in ((at_two, lines[0]), (logged, lines[1])):
        found = run_pid(run, load_config(run / "config.yaml"), "val", clusters=8, bootstrap=0, rows=2000)
        assert found["rows"] == line["rows"]
        for term in TERMS:
            assert line[term] == pytest.approx(found["point"][term], abs=1e-9), (line["epoch"], term)
    assert lines[0]["red"] != lines[1]["red"]


def test_measuring_leaves_the_training_bit_for_bit_as_without(logged, teacher, tmp_path):
    distill(_cfg(tmp_path / "plain", teacher, pid_every=0))
    assert not (tmp_path / "plain" / "pid.jsonl").exists()
    a, b = load_file(str(logged / "model.safetensors")), load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert all(a[k].equal(b[k]) for k in a)


def _crash_at(condition):
    def crash(info: StepInfo) -> None:
        if condition(info):
            raise RuntimeError("simulated crash")

    return crash


def test_a_resumed_run_continues_pid_jsonl_without_repeating_or_losing_a_line(logged, teacher, tmp_path):
    expected = [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(logged)]  # uninterrupted: [2, 3]
    # (a) the crash comes after epoch 2's line, before that epoch's checkpoint: the resume replays epoch 2's end
    # (b) the crash comes in epoch 3: the resume keeps epoch 2's line as written and appends epoch 3's
    for case, condition in (("a", lambda i: i.epoch_end and i.epoch == 1), ("b", lambda i: i.global_step == 50)):
        cfg = _cfg(tmp_path / case, teacher)
        with pytest.raises(RuntimeError, match="simulated crash"):
            distill(cfg, callbacks=[_crash_at(condition)])
        before = (tmp_path / case / "pid.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in before] == [2]
        distill(cfg, resume=True)
        after = (tmp_path / case / "pid.jsonl").read_text().splitlines()
        assert [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in after] == expected, case
        if case == "b":
            assert after[0] == before[0]  # continued, not measured again


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"pid_every": -1}}, "train.pid_every"),
        ({"train": {"pid_every": 1, "pid_layers": ["body.0"]}}, "train.pid_layers"),
        ({"method": {"name": "kd"}}, "train.pid_layers: [STUDENT_LAYER, TEACHER_LAYER]"),
        ({"teacher": None, "method": {"name": "ce"}}, "needs a teacher"),  # kdlab train
        ({"train": {"pid_clusters": 500}}, "144 validation rows for train.pid_clusters=500"),
        ({"task": "causal_lm", "data": {"name": "text"}, "model": {"name": "hf"}}, "is for task: classify"),
    ],
)
def test_bad_pid_settings_are_one_line_before_any_directory(teacher, tmp_path, change, message):
    cfg = _cfg(tmp_path / "s", teacher)
    cfg = {**cfg, **{k: ({**cfg[k], **v} if k == "train" else v) for k, v in change.items()}}
    with pytest.raises(ConfigError) as err:
        (train if cfg["teacher"] is None else distill)(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "s").exists()


def test_report_and_evaluate_show_the_pid_over_epochs(logged, tmp_path):
    lines = read_log(logged)
    fig = plots.pid_curves_figure({"vid": lines})
    assert [ax.get_title() for ax in fig.axes] == ["Red(Y: T, S)", "Uni(Y: T \\ S)", "I(T; S)"]
    assert list(fig.axes[0].lines[0].get_ydata()) == [r["red"] for r in lines]
    assert list(fig.axes[1].lines[0].get_xdata()) == [2, 3]
    html = write_report([logged], tmp_path / "report.html").read_text()
    assert "Partial information decomposition per epoch" in html and "val Red(Y:T,S)" in html
    assert f"<td>{lines[-1]['red']:.3f}</td>" in html and f"<td>{lines[-1]['unique_t']:.3f}</td>" in html
    written = plots.write_run_plots(tmp_path / "plots", [], {}, lines)
    assert written == [tmp_path / "plots" / "pid.png"]
    (said,) = pid_lines(logged, estimate=False)
    assert said.startswith("PID at epoch 3 (bits, 144 val rows") and f"Red {lines[-1]['red']:.3f}" in said


def test_evaluate_estimates_a_feature_runs_pid_by_default_and_not_for_other_runs(logged, teacher):
    """`kdlab evaluate` on a feature-distillation run: a quick test estimate (1,000 rows, no intervals) unless
    --no-pid; the values are the estimator's on those rows. A run without a layer pair gets none."""
    said = pid_lines(logged, estimate=None)
    assert len(said) == 2 and "first 1,000 test rows" in said[1]
    found = run_pid(logged, load_config(logged / "config.yaml"), "test", bootstrap=0, rows=1000)
    assert f"Red {found['point']['red']:.3f}" in said[1] and f"Syn {found['point']['synergy']:.3f}" in said[1]
    assert pid_lines(logged, estimate=False) == said[:1]
    assert pid_lines(teacher, estimate=None) == []  # a plain training run: no layer pair, nothing to estimate
