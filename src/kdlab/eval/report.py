"""One self-contained HTML report for several runs: configs, a comparison table and the plots.

Plots are PNGs embedded as base64 ``data:`` URIs and the CSS is inline, so the file opens anywhere with no
network and no JavaScript. Input is what a run directory holds (config.yaml, summary.json with its
"evaluation" from ``kdlab evaluate``, metrics.jsonl); nothing is recomputed here.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError
from kdlab.io import atomic_write_text

from . import plots
from .pid import read_log

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd; margin-top: 28px; }
h3 { font-size: 15px; margin: 14px 0 6px; } p.meta { color: #666; font-size: 12px; margin-top: 0; }
table.cmp { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
table.cmp th, table.cmp td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; white-space: nowrap; }
table.cmp th { background: #f2f4f7; white-space: normal; } table.cmp td.l, table.cmp th.l { text-align: left; }
table.cmp td.m { white-space: normal; min-width: 160px; max-width: 260px; font-size: 12px; }
table.cmp tr:nth-child(even) td { background: #fafbfc; }
td.best { font-weight: bold; color: #0a5; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 8px; font-size: 11px; max-height: 260px;
  overflow: auto; }
img { max-width: 100%; border: 1px solid #eee; margin: 4px 0; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
details summary { cursor: pointer; color: #036; font-size: 13px; }
.note { font-size: 12px; color: #555; }
"""

# (key in the table, header, where it comes from, format, which direction is better)
COLUMNS = [
    ("test_accuracy", "test acc", "test.accuracy", ".4f", "max"),
    ("test_return", "test return", "test.return", ".1f", "max"),  # task: rl
    ("test_nll", "test NLL", "test.nll", ".3f", "min"),
    ("test_ece", "test ECE", "test.ece", ".3f", "min"),
    ("test_agreement", "test agree", "test.agreement", ".4f", "max"),
    ("test_kl", "test KL t‖s", "test.kl_teacher", ".4f", "min"),
    ("train_agreement", "train agree", "train.agreement", ".4f", "max"),
    ("train_kl", "train KL t‖s", "train.kl_teacher", ".4f", "min"),
    ("proxy_agreement", "test agree proxy", "test.proxy_agreement", ".4f", "max"),
    ("test_kl_proxy", "test KL proxy‖s", "test.kl_proxy", ".4f", "min"),
    ("pid_red", "val Red(Y:T,S)", "pid.red", ".3f", "max"),  # the last line of pid.jsonl (train.pid_every)
    ("pid_unique_t", "val Uni(Y:T\\S)", "pid.unique_t", ".3f", "min"),
]


@dataclass
class RunData:
    """What the report needs of one run directory."""

    path: Path
    name: str
    config_text: str
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    pid: list[dict[str, Any]] = field(default_factory=list)  # pid.jsonl: the PID per measured epoch

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.summary.get("evaluation", {})


def load_run(run_dir: str | Path) -> RunData:
    """Read a finished run; ``ConfigError`` (one line) if it is not one."""
    run = Path(run_dir)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"{run} is not a finished kdlab run directory (no summary.json)")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{summary_path} is not valid JSON: {err}") from None
    config_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    records = []
    if (run / "metrics.jsonl").is_file():
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return RunData(run, str(summary.get("name") or run.name), config_text, summary, records, read_log(run))


def _lookup(run: RunData, dotted: str) -> float | None:
    split, key = dotted.split(".")
    if split == "pid":
        source = run.pid[-1] if run.pid else {}
    else:
        source = run.evaluation.get(split) or run.summary.get("train_eval" if split == "train" else split) or {}
    value = source.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def comparison_rows(runs: list[RunData]) -> tuple[list[tuple[str, str, str, str]], list[dict[str, float | None]]]:
    """Per run: (name, model, method, params) and the metric values of ``COLUMNS`` (None where absent)."""
    ident, values = [], []
    for run in runs:
        s = run.summary
        params = s.get("parameters")
        ident.append((run.name, str(s.get("model", "")), str(s.get("method", "")), f"{params:,}" if params else ""))
        values.append({key: _lookup(run, where) for key, _, where, _, _ in COLUMNS})
    return ident, values


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _teacher_runs(runs: list[RunData]) -> set[Path]:
    """The runs that another run of the report distilled from (its ``teacher.run``)."""
    import yaml

    teachers: set[Path] = set()
    for run in runs:
        try:
            config = yaml.safe_load(run.config_text or "") or {}
        except yaml.YAMLError:
            continue
        teacher = config.get("teacher") if isinstance(config, dict) else None
        members = [teacher, *((teacher or {}).get("ensemble") or [])] if isinstance(teacher, dict) else []
        for member in members:
            if isinstance(member, dict) and member.get("run"):
                teachers.add(Path(member["run"]).resolve())
    return {run.path.resolve() for run in runs} & teachers


def role(run: RunData, teachers: set[Path]) -> str:
    """How a run's plots name its model: "teacher" for a report's teacher, "student" when it had one."""
    if run.path.resolve() in teachers:
        return "teacher"
    return "student" if run.summary.get("teacher") else "model"


def _table(runs: list[RunData]) -> str:
    ident, values = comparison_rows(runs)
    shown = [c for c in COLUMNS if any(v[c[0]] is not None for v in values)]
    teachers = _teacher_runs(runs)
    compared = [v for run, v in zip(runs, values, strict=True) if run.path.resolve() not in teachers]
    best = {}  # among the students: a reader compares them, not them with their teacher
    for key, _, _, _, better in shown:
        present = [v[key] for v in compared if v[key] is not None]
        if len(present) > 1:
            best[key] = max(present) if better == "max" else min(present)
    head = "".join(f'<th class="l">{h}</th>' for h in ("run", "model", "method", "params"))
    head += "".join(f"<th>{html.escape(h)}</th>" for _, h, _, _, _ in shown)
    head += "<th>epochs</th><th>wall s</th>"
    body = []
    for run, (name, model, method, params), row in zip(runs, ident, values, strict=True):
        cells = [f'<td class="l">{html.escape(x)}</td>' for x in (name, model)]
        cells += [f'<td class="l m">{html.escape(method)}</td>', f'<td class="l">{html.escape(params)}</td>']
        for key, _, _, form, _ in shown:
            value = row[key]
            mark = ' class="best"' if value is not None and best.get(key) == value else ""
            cells.append(f"<td{mark}>{'-' if value is None else format(value, form)}</td>")
        wall = run.summary.get("wall_seconds")
        cells.append(f"<td>{run.summary.get('epochs', '')}</td><td>{'' if wall is None else f'{wall:.0f}'}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="cmp"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _fidelity_overview(runs: list[RunData]) -> bytes | None:
    """Agreement per epoch of every run that had a teacher, train subset vs validation."""
    with_teacher = [r for r in runs if any("val/agreement" in x for x in r.records)]
    if not with_teacher:
        return None
    fig, axes = plots.plt.subplots(1, 2, figsize=(10, 3.4))
    for run in with_teacher:
        epochs = plots.epoch_records(run.records)
        x = [r["epoch"] for r in epochs]
        for ax, metric in zip(axes, ("agreement", "kl_teacher"), strict=True):
            (line,) = ax.plot(x, [r.get(f"val/{metric}", math.nan) for r in epochs], "--", label=f"{run.name} val")
            if any(f"train_eval/{metric}" in r for r in epochs):
                values = [r.get(f"train_eval/{metric}", math.nan) for r in epochs]
                ax.plot(x, values, "-", color=line.get_color(), label=f"{run.name} train")
    axes[0].set(title="top-1 agreement with the teacher", xlabel="epoch")
    axes[1].set(title="KL(teacher ‖ student)", xlabel="epoch", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return plots.png_bytes(fig)


def _run_section(run: RunData, index: int, name: str = "student") -> str:
    parts = [f'<section class="run" id="run-{index}"><h2>{html.escape(run.name)}</h2>']
    s = run.summary
    parts.append(
        f'<p class="meta">{html.escape(str(run.path))} · {html.escape(str(s.get("method", "")))} · '
        f"teacher: {html.escape(str(s.get('teacher') or 'none'))} · seed {s.get('seed', '')}</p>"
    )
    images = []
    if plots.epoch_records(run.records):
        fig = plots.learning_curves_figure(run.records)
        images.append(_img(plots.png_bytes(fig), f"learning curves of {run.name}"))
    if any(r.get("kind") in ("episode", "eval") for r in run.records):  # task: rl
        fig = plots.return_curves_figure(run.records)
        images.append(_img(plots.png_bytes(fig), f"returns of {run.name}"))
    test = run.evaluation.get("test", {})
    if "reliability" in test:
        curves = {name: test["reliability"]}
        if "teacher_reliability" in test:
            curves["its teacher" if name == "teacher" else "teacher"] = test["teacher_reliability"]
        fig = plots.reliability_figure(curves, "reliability (test)")
        images.append(_img(plots.png_bytes(fig), f"reliability diagram of {run.name}"))
    if "confusion_labels" in test:
        fig = plots.split_confusion_figure(test, name)
        images.append(_img(plots.png_bytes(fig), f"confusion matrices of {run.name}"))
    if images:
        parts.append(f'<div class="row">{"".join(images)}</div>')
    else:
        parts.append('<p class="note">No plots: metrics.jsonl and the evaluation are missing.</p>')
    parts.append(
        f"<details><summary>config.yaml</summary><pre>{html.escape(run.config_text or '(missing)')}</pre></details>"
    )
    parts.append("</section>")
    return "".join(parts)


def render_report(runs: list[RunData], title: str = "kdlab report") -> str:
    """The whole HTML document as a string."""
    import kdlab

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{len(runs)} runs · generated {when} by kdlab {kdlab.__version__}</p>',
        "<h2>Comparison</h2>",
        _table(runs),
        '<p class="note">test/train = the run\'s test split / training split (from <code>kdlab evaluate</code>; '
        "without it, train = the fixed training subset logged by the run). agree = top-1 agreement with the "
        "teacher, KL t‖s = mean KL(teacher ‖ student) at T = 1; proxy = PTLoss's proxy teacher (at the run's "
        "temperature). val Red / Uni = the last epoch's PID in bits (<code>train.pid_every</code>). Best value per "
        "column in bold.</p>",
    ]
    overview = _fidelity_overview(runs)
    if overview is not None:
        parts += ["<h3>Fidelity per epoch (train subset vs validation)</h3>", _img(overview, "fidelity per epoch")]
    names = [run.name for run in runs]
    logged = {run.name if names.count(run.name) == 1 else str(run.path): run.pid for run in runs if run.pid}
    if logged:
        parts += [
            "<h3>Partial information decomposition per epoch (train.pid_every)</h3>",
            _img(plots.png_bytes(plots.pid_curves_figure(logged)), "Red, Uni and I(T;S) per epoch"),
            '<p class="note">Bits, on the first <code>train.pid_rows</code> validation rows (docs/rid.md): Red = '
            "what the student knows about the labels that the teacher knows too (transferred), Uni(T\\S) = what "
            "only the teacher knows (left to distil), I(T;S) = what the two layers share, label-relevant or not.</p>",
        ]
    teachers = _teacher_runs(runs)
    parts += [_run_section(run, i, role(run, teachers)) for i, run in enumerate(runs)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dirs: list[str | Path], output: str | Path, title: str = "kdlab report") -> Path:
    """Read every run (all must be finished), render, and write ``output`` atomically."""
    if not run_dirs:
        raise ConfigError("report needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    text = render_report(runs, title)
    try:
        return atomic_write_text(output, text)
    except OSError as err:
        raise ConfigError(f"cannot write the report to {output}: {err.strerror or err}") from None
