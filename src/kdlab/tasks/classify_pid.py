"""The PID of a finished feature-distillation run: what its student's layer and its teacher's layer know about the
labels, split into Red / Uni / Syn (``kdlab.eval.pid``), on a data split of the run.

Teacher features are what the method distilled: a nuisance teacher's (``teacher.nuisance``) with its noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdlab.config import RunConfig, TeacherConfig
from kdlab.engine.supervised import teacher_features
from kdlab.errors import ConfigError
from kdlab.teacher.source import load_teacher, resolve_teacher

from .classify import load_data, run_preprocess
from .classify_eval import load_run_model

# what is printed, in this order: the decomposition and its total; a pid.jsonl line also has I(T;S)
TERMS = (
    ("Red", "red"),
    ("Uni(T\\S)", "unique_t"),
    ("Uni(S\\T)", "unique_s"),
    ("Syn", "synergy"),
    ("I(Y;T,S)", "joint"),
)
LOGGED_TERMS = (*TERMS[:4], ("I(T;S)", "mi_ts"))


def layer_pairs(cfg: RunConfig) -> list[tuple[str, str]]:
    """The (student, teacher) layer pairs of a feature-distillation run's method; [] for other methods."""
    params = cfg.method.params()
    if "student_layer" not in params or "teacher_layer" not in params or cfg.teacher is None:
        return []
    listed = [
        (params[k],) if isinstance(params[k], str) else tuple(params[k]) for k in ("student_layer", "teacher_layer")
    ]
    return list(zip(*listed, strict=True))


def run_pid(
    run: Path,
    cfg: RunConfig,
    split: str = "test",
    pair: int = 0,
    clusters: int = 8,
    components: int = 10,
    bootstrap: int = 20,
    rows: int | None = 5000,
    seed: int = 0,
    layers: tuple[str, str] | None = None,
    teacher_cfg: TeacherConfig | None = None,
) -> dict[str, Any]:
    """Red(Y: T, S), Uni, Syn, I(Y; T, S) (bits, bootstrap percentile intervals) of layer pair ``pair`` on the
    first ``rows`` rows of ``split``. ``layers`` (student, teacher) and ``teacher_cfg`` measure a run against
    another teacher or layer than its own (a CE student against a teacher it never saw)."""
    from kdlab.eval.pid import estimate

    teacher_cfg = teacher_cfg or cfg.teacher
    pairs = [layers] if layers is not None else layer_pairs(cfg)
    if not pairs or teacher_cfg is None:
        raise ConfigError(f"{run}: not a feature-distillation run (no student_layer/teacher_layer and teacher)")
    if not 0 <= pair < len(pairs):
        raise ConfigError(f"{run}: layer pair {pair} does not exist ({len(pairs)} pairs)")
    student_layer, teacher_layer = pairs[pair]
    data = load_data(cfg, run_preprocess(run))
    x, y = getattr(data, f"x_{split}")[:rows], getattr(data, f"y_{split}")[:rows]
    student = load_run_model(cfg, data, run / "model.safetensors").eval()
    teacher = load_teacher(resolve_teacher(teacher_cfg), data.num_classes, tuple(data.in_shape), data)
    batch = cfg.train.eval_batch_size
    s = teacher_features(student, x, (student_layer,), batch, torch.float32)[student_layer]  # any model: a tap
    t = teacher_features(teacher, x, (teacher_layer,), batch, torch.float32)[teacher_layer]
    found = estimate(t.numpy(), s.numpy(), y.numpy(), clusters, components, bootstrap, seed=seed)
    return {"split": split, "student_layer": student_layer, "teacher_layer": teacher_layer, **found.as_dict()}


def write_run_pid(run: Path, clusters: int = 8, bootstrap: int = 20) -> str:
    """``kdlab evaluate RUN --pid``: the PID of the run's first layer pair on test, written to ``RUN/pid.json``;
    returns one line for the console."""
    from kdlab.config import load_config
    from kdlab.io import atomic_write_json

    cfg = load_config(run / "config.yaml")
    found = run_pid(run, cfg, "test", clusters=clusters, bootstrap=bootstrap)
    atomic_write_json(run / "pid.json", found)
    point, low, high = found["point"], found["low"], found["high"]
    shown = ", ".join(f"{name} {point[k]:.3f} [{low[k]:.3f}, {high[k]:.3f}]" for name, k in TERMS)
    return (
        f"PID (bits, {found['student_layer']} vs teacher {found['teacher_layer']}, test): {shown} -> {run / 'pid.json'}"
    )


def quick_pid_line(run: Path, rows: int = 1000) -> str | None:
    """``kdlab evaluate``'s default for a feature-distillation run: the PID point estimate on the first ``rows`` test
    rows, without intervals (about a second); None for a run without a layer pair."""
    from kdlab.config import load_config

    cfg = load_config(run / "config.yaml")
    if cfg.task not in ("classify", "text_classify") or not layer_pairs(cfg):
        return None
    found = run_pid(run, cfg, "test", bootstrap=0, rows=rows)
    point = found["point"]
    shown = ", ".join(f"{name} {point[k]:.3f}" for name, k in TERMS)
    return (
        f"PID (bits, {found['student_layer']} vs teacher {found['teacher_layer']}, first {rows:,} test rows, no "
        f"intervals; --pid: 5,000 rows with bootstrap intervals): {shown}"
    )


def pid_lines(run: Path, estimate: bool | None) -> list[str]:
    """What ``kdlab evaluate`` says of a run's PID: the last line of its pid.jsonl (``train.pid_every``, free) and a
    test-split estimate: by default (``estimate`` None) a quick point estimate for a feature-distillation run,
    with ``--pid`` (True) the full one with intervals written to pid.json (10-40 s), with ``--no-pid`` none."""
    from kdlab.eval.pid import PID_LOG, read_log

    lines = []
    logged = read_log(run)
    if logged:
        last = logged[-1]
        shown = ", ".join(f"{name} {last[k]:.3f}" for name, k in LOGGED_TERMS)
        lines.append(f"PID at epoch {last['epoch']} (bits, {last['rows']} val rows, {run / PID_LOG}): {shown}")
    if estimate:
        lines.append(write_run_pid(run))
    elif estimate is None:
        quick = quick_pid_line(run)
        lines += [quick] if quick else []
    return lines
