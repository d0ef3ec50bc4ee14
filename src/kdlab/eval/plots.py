"""Pictures of a run (matplotlib, Agg): learning curves, reliability diagrams, teacher-vs-student confusion.

Each ``*_figure`` function returns a Figure; ``save_png`` writes it atomically and ``png_bytes`` gives the PNG
for embedding (the HTML report). They read only plain data (metrics.jsonl records, ``kdlab evaluate`` output).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from kdlab.io import atomic_write_bytes

SPLIT_STYLE = {"train_eval": ("train (fixed subset)", "-"), "val": ("validation", "--")}


def png_bytes(fig: Figure, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    return atomic_write_bytes(path, png_bytes(fig, dpi))


def epoch_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-epoch lines of metrics.jsonl (they carry val/* metrics; per-step lines do not)."""
    return [r for r in records if "val/accuracy" in r]


def learning_curves_figure(records: list[dict[str, Any]], title: str = "") -> Figure:
    """Loss terms, then (where recorded) perplexity (language models), accuracy, agreement with the teacher and
    KL(teacher ‖ student) per epoch, train vs val."""
    epochs = epoch_records(records)
    x = [r["epoch"] for r in epochs]
    measured = ("perplexity", "accuracy", "agreement", "kl_teacher")
    panels = ["loss"] + [m for m in measured if any(f"{split}/{m}" in r for r in epochs for split in SPLIT_STYLE)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "loss":
            terms = sorted({k for r in epochs for k in r if k.startswith("train/")})
            for key in terms:
                ax.plot(x, [r.get(key, math.nan) for r in epochs], "o-", ms=3, label=key.removeprefix("train/"))
            ax.set(title="training loss terms", xlabel="epoch")
        else:
            for split, (label, style) in SPLIT_STYLE.items():
                values = [r.get(f"{split}/{panel}", math.nan) for r in epochs]
                if not all(math.isnan(v) for v in values):
                    ax.plot(x, values, style, marker="o", ms=3, label=label)
            names = {
                "perplexity": "perplexity",
                "accuracy": "accuracy",
                "agreement": "top-1 agreement with teacher",
                "kl_teacher": "KL(t ‖ s)",
            }
            ax.set(title=names[panel], xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def return_curves_figure(records: list[dict[str, Any]], window: int = 10) -> Figure:
    """``task: rl``: episode returns against the run's environment-step budget, one colour per learner (dots:
    episodes, line: the rolling mean of ``window``); a distillation's per-round evaluations as a line."""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    learners = sorted({str(r["learner"]) for r in records if r.get("kind") in ("episode", "eval")})
    for name in learners:
        for kind, style in (("episode", "."), ("eval", "o-")):
            points = [
                (r["budget_step"], r["return"]) for r in records if r.get("kind") == kind and r["learner"] == name
            ]
            if not points:
                continue
            x, y = zip(*points, strict=True)
            label = f"{name} (evaluation)" if kind == "eval" else name
            (line,) = ax.plot(x, y, style, alpha=0.3 if kind == "episode" else 1.0, markersize=2, label=label)
            if kind == "episode":
                rolling = [
                    sum(y[max(0, i - window + 1) : i + 1]) / len(y[max(0, i - window + 1) : i + 1])
                    for i in range(len(y))
                ]
                ax.plot(x, rolling, "-", color=line.get_color())
    ax.set(title="return per episode", xlabel="environment steps (whole run)", ylabel="return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


PID_TERMS = {"red": "Red(Y: T, S)", "unique_t": "Uni(Y: T \\ S)", "mi_ts": "I(T; S)"}


def pid_curves_figure(logs: dict[str, list[dict[str, Any]]]) -> Figure:
    """Red(Y: T, S), Uni(Y: T \\ S) and I(T; S) in bits per epoch (``train.pid_every``'s pid.jsonl), one line per
    run: the knowledge transferred, the knowledge left to distil, and what VID maximises."""
    fig, axes = plt.subplots(1, len(PID_TERMS), figsize=(3.8 * len(PID_TERMS), 3.2), squeeze=False)
    for ax, (term, title) in zip(axes[0], PID_TERMS.items(), strict=True):
        for name, lines in logs.items():
            ax.plot([r["epoch"] for r in lines], [r[term] for r in lines], "o-", ms=3, label=name)
        ax.set(title=title, xlabel="epoch", ylabel="bits")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def reliability_figure(curves: dict[str, dict[str, list]], title: str = "") -> Figure:
    """Accuracy against mean confidence per bin (the ECE's bins) for each named curve; the diagonal is perfect."""
    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="perfect calibration")
    for (name, curve), marker in zip(curves.items(), "os^v", strict=False):
        points = [
            (c, a, n)
            for c, a, n in zip(curve["confidence"], curve["accuracy"], curve["count"], strict=True)
            if n > 0 and not math.isnan(c)
        ]
        if points:
            conf, accuracy, counts = zip(*points, strict=True)
            total = sum(counts)
            sizes = [12 + 200 * n / total for n in counts]
            ax.plot(conf, accuracy, "-", lw=1)
            ax.scatter(conf, accuracy, s=sizes, marker=marker, label=name, alpha=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy", title=title or "reliability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def confusion_figure(matrices: dict[str, list[list[int]]], axis_labels: dict[str, tuple[str, str]]) -> Figure:
    """Row-normalised heat maps with counts, e.g. true label vs student and teacher vs student predictions."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.9), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items(), strict=True):
        k = len(matrix)
        rows = [sum(r) or 1 for r in matrix]
        norm = [[v / rows[i] for v in r] for i, r in enumerate(matrix)]
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    color = "white" if norm[i][j] > 0.6 else "black"
                    ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=6, color=color)
        ylabel, xlabel = axis_labels[name]
        agree = sum(matrix[i][i] for i in range(k)) / max(sum(map(sum, matrix)), 1)
        ax.set(title=f"{name} (diagonal {agree:.3f})", xlabel=xlabel, ylabel=ylabel)
        ax.set_xticks(range(k)) if k <= 20 else None
        ax.set_yticks(range(k)) if k <= 20 else None
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def split_confusion_figure(split_eval: dict[str, Any], name: str = "student") -> Figure:
    """The two confusion matrices of one split of ``kdlab evaluate``: vs labels, and vs the teacher if any;
    ``name`` is what the run's model is called ("student", "teacher", "model")."""
    matrices = {f"{name} vs labels": split_eval["confusion_labels"]}
    labels = {f"{name} vs labels": ("true label", f"{name} prediction")}
    if "confusion_teacher" in split_eval:
        matrices[f"{name} vs teacher"] = split_eval["confusion_teacher"]
        labels[f"{name} vs teacher"] = ("teacher prediction", f"{name} prediction")
    return confusion_figure(matrices, labels)


def write_run_plots(
    out_dir: str | Path,
    records: list[dict[str, Any]],
    evaluation: dict[str, Any],
    pid: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """learning_curves.png, pid.png (``pid`` lines of pid.jsonl), reliability.png (test) and confusion.png (test) in
    ``out_dir``, where data exists."""
    out = Path(out_dir)
    written = []
    if epoch_records(records):
        written.append(save_png(learning_curves_figure(records), out / "learning_curves.png"))
    if pid:
        written.append(save_png(pid_curves_figure({"student": pid}), out / "pid.png"))
    test = evaluation.get("test", {})
    if "reliability" in test:
        curves = {"student": test["reliability"]}
        if "teacher_reliability" in test:
            curves["teacher"] = test["teacher_reliability"]
        written.append(save_png(reliability_figure(curves, "reliability (test)"), out / "reliability.png"))
    if "confusion_labels" in test:
        written.append(save_png(split_confusion_figure(test), out / "confusion.png"))
    return written
