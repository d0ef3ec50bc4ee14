"""A sweep's combined results: one row per run, mean ± std over ``seed`` when it is a grid key, and a plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from kdlab.io import atomic_write_json, atomic_write_text

from .plots import save_png

METRICS = (("test acc", "accuracy"), ("NLL", "nll"), ("ECE", "ece"), ("agree", "agreement"))


def run_rows(result) -> list[dict[str, Any]]:
    rows = []
    for point in result.points:
        row: dict[str, Any] = {"run": point.name, **{k: point.labels[k] for k in result.keys}}
        summary = point.summary
        if summary is None:
            row["error"] = point.error
        else:
            row.update({label: summary["test"].get(key) for label, key in METRICS})
            row.update(
                {
                    "val acc": summary["val"]["accuracy"],
                    "params": summary["parameters"],
                    "sec": round(summary["wall_seconds"], 1),
                }
            )
        rows.append(row)
    return rows


def seed_groups(result) -> list[dict[str, Any]]:
    """Rows that differ only in ``seed``, folded into mean ± std of the test accuracy (empty without a seed key)."""
    if "seed" not in result.keys or len(result.keys) < 1:
        return []
    others = [k for k in result.keys if k != "seed"]
    groups: dict[tuple, list] = {}
    for point in result.points:
        if point.summary is not None:
            groups.setdefault(tuple(point.labels[k] for k in others), []).append(point.summary["test_accuracy"])
    out = []
    for labels, accs in groups.items():
        out.append(
            {
                **dict(zip(others, labels, strict=True)),
                "mean": statistics.mean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "n": len(accs),
            }
        )
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(result, rows: list[dict[str, Any]], groups: list[dict[str, Any]]) -> str:
    columns = ["run", *result.keys, *(label for label, _ in METRICS), "val acc", "params", "sec"]
    lines = [f"# Sweep {result.root}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if "error" in row:
            lines.append(
                "| " + " | ".join([row["run"], *(row[k] for k in result.keys), f"failed: {row['error']}"]) + " |"
            )
        else:
            lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    if groups:
        others = [k for k in result.keys if k != "seed"]
        lines += ["", "Test accuracy over seeds (mean ± std):", ""]
        lines += ["| " + " | ".join([*others, "test acc", "n"]) + " |", "|" + "---|" * (len(others) + 2)]
        for g in groups:
            lines.append(
                "| " + " | ".join([*(g[k] for k in others), f"{g['mean']:.4f} ± {g['std']:.4f}", str(g["n"])]) + " |"
            )
    return "\n".join(lines) + "\n"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def plot(result, path: Path) -> Path:
    """Test accuracy against the first non-seed key; one line per value of the other keys; std bars over seeds."""
    others = [k for k in result.keys if k != "seed"] or list(result.keys)
    x_key, line_keys = others[0], others[1:]
    series: dict[tuple, dict[str, list[float]]] = {}
    for point in result.points:
        if point.summary is not None:
            line = tuple(point.labels[k] for k in line_keys)
            series.setdefault(line, {}).setdefault(point.labels[x_key], []).append(point.summary["test_accuracy"])
    x_labels = list(dict.fromkeys(point.labels[x_key] for point in result.points))
    numeric = all(_number(x) is not None for x in x_labels)
    position = {x: (_number(x) if numeric else i) for i, x in enumerate(x_labels)}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for line, by_x in series.items():
        xs = [x for x in x_labels if x in by_x]
        means = [statistics.mean(by_x[x]) for x in xs]
        stds = [statistics.stdev(by_x[x]) if len(by_x[x]) > 1 else 0.0 for x in xs]
        label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(line_keys, line, strict=True)) or None
        ax.errorbar([position[x] for x in xs], means, yerr=stds, marker="o", capsize=3, label=label)
    if not numeric:
        ax.set_xticks(range(len(x_labels)), x_labels, rotation=20, ha="right", fontsize=8)
    ax.set_xlabel(x_key)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    if any(line for line in series):
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=120)
    return path


def write_report(result) -> dict[str, Path]:
    rows, groups = run_rows(result), seed_groups(result)
    root = Path(result.root)
    files = {"json": root / "sweep.json", "md": root / "sweep.md", "png": root / "sweep.png"}
    atomic_write_json(files["json"], {"grid": result.keys, "runs": rows, "over_seeds": groups})
    atomic_write_text(files["md"], markdown(result, rows, groups))
    if any(p.summary is not None for p in result.points):
        plot(result, files["png"])
    else:
        files.pop("png")
    return files
