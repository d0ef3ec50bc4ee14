"""DiSK (scaffolding) against CE, KD and ESKD on Fashion-MNIST, one teacher, students of sharply decreasing capacity.

    python benchmarks/disk_capacity_fmnist.py          # 10k-row subsample, 4 students, 6 rows, 3 seeds (~26 min loaded)
    python benchmarks/disk_capacity_fmnist.py --quick      # digits, 2 students, 1 seed, 2 epochs (checks the script)
    python benchmarks/disk_capacity_fmnist.py --from-json benchmarks/results/disk_capacity_fmnist.json

Sized for a shared 2-core CPU: a stratified 10,000-row subsample of Fashion-MNIST's training set (seed 0; 10% of it
carved for validation, split seed 0 in every run, so a seed changes only initialisation and batch order and the
differences are paired), the full 10,000-row test set, 1 torch thread. Teacher: CNN(width 16, 2 blocks), 8 epochs,
CE, seed 0 (logits cached once). Students: logistic regression, MLP(8), MLP(32), CNN(width 4, 2 blocks); every
student sees E = 8 epochs of student updates (batch 128, SGD lr 0.05 momentum 0.9, cosine):
  CE    hard labels only;
  KD    0.1 · CE + 0.9 · T² KL at T = 4 (the weights DiSK's runner.sh gives its CE and hint terms);
  ESKD  the KD row until epoch E/2, then CE only (early-stopped KD, Cho & Hariharan 2019);
  DiSK  method disk scaled down from runner.sh: 1 guide warm-up epoch (5), then alternating 1 student / 1 guide
        epoch (kt = kg = 3), top-K 3 of 10 classes (10 of 100), budget period 8 cycles (20; ε from 0.6 to 0.4 over
        the run); τ_t 4, τ_s 3.5, weights 0.9 / 0.1, c_max 5, dual variable from 5 (floor 1, ρ 2) as runner.sh.
        2E epochs in all (E student + E guide epochs, the warm-up included), the student from scratch (the authors
        start from a CE-trained student);
  DiSK-rho20   the same with the dual step size ρ = 20: 8 cycles instead of runner.sh's 200 give the dual
               variable 25x fewer steps, so its step is scaled up 10x;
  DiSK-sched   the same with runner.sh's own multiplier (multiplier: schedule, a cosine μ from 1 to 5, its
               period scaled from 50 cycles to the run's 8).
Test accuracy of the last epoch, mean ± std over seeds, and paired per-seed differences. The plot: the guide's g
against the hardness h on the 512 logged training rows (seed 0, last epoch) per student.
Results: benchmarks/results/disk_capacity_fmnist.{json,md,png} (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment
from capacity_gap_fmnist import mean_std

from kdlab.api import cache_logits
from kdlab.eval.plots import save_png
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.workflow.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("CE", "KD", "ESKD", "DiSK", "DiSK-rho20", "DiSK-sched")
DISK_ROWS = ROWS[3:]
STUDENTS = {  # label -> model section; decreasing capacity is read from the parameter counts
    "cnn4": {"name": "cnn", "kwargs": {"width": 4, "blocks": 2}},
    "mlp32": {"name": "mlp", "kwargs": {"hidden": [32]}},
    "mlp8": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "logreg": {"name": "mlp", "kwargs": {"hidden": []}},
}
TEACHER = {"name": "cnn", "kwargs": {"width": 16, "blocks": 2}}
KD = {"name": "kd", "temperature": 4.0, "alpha": 0.1, "beta": 0.9}
DISK = {
    "name": "disk",
    "warmup_epochs": 1,
    "student_epochs": 1,
    "guide_epochs": 1,
    "top_k": 3,
    "budget_period": 8,
}


def subsample(rows: int, out: Path) -> Path:
    """A stratified ``rows``-row subsample of Fashion-MNIST's train split (seed 0) and its whole test split."""
    from kdlab.data.sources import idx_source

    if out.is_file():
        return out
    raw = idx_source("fashion_mnist", None, False)
    rng = np.random.default_rng(0)
    per_class = rows // raw.num_classes
    keep = np.concatenate([rng.permutation(np.flatnonzero(raw.y_train == c))[:per_class] for c in range(10)])
    keep.sort()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x_train=raw.x_train[keep], y_train=raw.y_train[keep], x_test=raw.x_test, y_test=raw.y_test)
    return out


def base_config(data: dict[str, Any], epochs: int) -> dict[str, Any]:
    return {
        "data": {**data, "val_fraction": 0.1, "split_seed": 0},
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "progress": False,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
        },
    }


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's ρ (ranks by argsort; ties are rare in float g and h)."""
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def guide_trace(run: Path) -> dict[str, Any]:
    """The DiSK run's per-epoch constraint, budget, μ and mean g, and the last epoch's per-example g and h."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"method/' in x]
    keys = ("phase", "budget", "multiplier", "constraint", "violation", "guide_mean", "hardness_mean")
    last = records[-1]["method/examples"]
    return {
        "per_epoch": [{k: r[f"method/{k}"] for k in keys} for r in records],
        "g": [round(v, 4) for v in last["g"]],
        "h": [round(v, 4) for v in last["h"]],
        "spearman_g_h": rank_correlation(last["g"], last["h"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--train-rows", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="only rebuild the .md and .png from a .json")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        write(result, args.from_json.with_suffix(""))
        return
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    runs = args.runs or ROOT / "runs" / ("disk-capacity-quick" if args.quick else "disk-capacity")
    epochs = 2 if args.quick else args.epochs
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    students = {k: STUDENTS[k] for k in ("mlp32", "logreg")} if args.quick else STUDENTS
    data = (
        {"name": "digits"}
        if args.quick
        else {"name": "npz", "path": str(subsample(args.train_rows, runs / "fmnist.npz"))}
    )
    out = (RESULTS / "quick" if args.quick else RESULTS) / "disk_capacity_fmnist"

    base = base_config(data, epochs)
    teacher_cfg = {**base, "name": "teacher", "out": str(runs / "teacher"), "seed": 0, "model": TEACHER}
    t_result = sweep(teacher_cfg, {"seed": [0]}, root=runs / "teacher", progress=False)
    teacher_run = Path(t_result.points[0].cfg.out)
    teacher_summary = t_result.points[0].summary or {}
    print(f"teacher: {teacher_summary['parameters']:,} params, test {teacher_summary['test_accuracy']:.4f}", flush=True)

    student_cfg = {**base, "name": "student", "out": str(runs / "students"), "model": STUDENTS["mlp8"], "method": KD}
    student_cfg["teacher"] = {"run": str(teacher_run)}
    for seed in seeds:
        cache_logits(student_cfg, [f"seed={seed}"])
    grid = {"model": students, "seed": seeds}
    variants: dict[str, list[str]] = {
        "CE": ["method={name: ce}"],
        "KD": [],
        "ESKD": [f"method.kd_until_epoch={epochs // 2}"],
        "DiSK": [f"method={json.dumps(DISK)}", f"train.epochs={2 * epochs}"],
        "DiSK-rho20": [f"method={json.dumps({**DISK, 'rho': 20.0})}", f"train.epochs={2 * epochs}"],
        "DiSK-sched": [
            f"method={json.dumps({**DISK, 'multiplier': 'schedule', 'multiplier_period': 8})}",
            f"train.epochs={2 * epochs}",
        ],
    }
    accuracy: dict[str, dict[str, dict[int, float]]] = {r: {s: {} for s in students} for r in ROWS}
    params: dict[str, int] = {}
    traces: dict[str, Any] = {}
    for row, sets in variants.items():
        print(f"{row} students", flush=True)
        result = sweep(student_cfg, grid, sets, root=runs / row, progress=False)
        for p in result.points:
            label, seed = p.labels["model"], p.values["seed"]
            accuracy[row][label][seed] = p.summary["test_accuracy"]
            params[label] = p.summary["parameters"]
            if row in DISK_ROWS:
                trace = guide_trace(Path(p.cfg.out))
                if seed != seeds[0]:  # the per-example values of the first seed are plotted; keep the file small
                    trace = {k: v for k, v in trace.items() if k not in ("g", "h")}
                traces.setdefault(row, {}).setdefault(label, {})[str(seed)] = trace
    table = {r: {s: mean_std([accuracy[r][s][k] for k in seeds]) for s in students} for r in ROWS}
    paired = {}
    pairs = [(d, "KD") for d in DISK_ROWS] + [("DiSK", "CE"), ("KD", "CE"), ("ESKD", "KD"), ("DiSK", "ESKD")]
    for a, b in pairs:
        paired[f"{a} - {b}"] = {
            s: mean_std([(accuracy[a][s][k] - accuracy[b][s][k]) * 100 for k in seeds]) for s in students
        }
    result = {
        "environment": {**environment(), "threads": torch.get_num_threads(), "load": [load_start, os.getloadavg()[0]]},
        "data": "digits" if args.quick else f"fashion_mnist, {args.train_rows}-row stratified train subsample",
        "epochs": epochs,
        "seeds": seeds,
        "teacher": {
            "model": TEACHER,
            "params": teacher_summary["parameters"],
            "test_accuracy": teacher_summary["test_accuracy"],
        },
        "students": {s: {"model": students[s], "params": params[s]} for s in students},
        "kd": KD,
        "disk": DISK,
        "accuracy": table,
        "paired_points": paired,
        "guide": traces,
        "total_seconds": time.perf_counter() - started,
    }
    atomic_write_json(out.with_suffix(".json"), result)
    write(result, out)


def write(result: dict[str, Any], out: Path) -> None:
    lines = report(result)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    plot(result, out.with_suffix(".png"))
    print("\n".join(lines))


def report(result: dict[str, Any]) -> list[str]:
    env, students, table = result["environment"], result["students"], result["accuracy"]
    order = sorted(students, key=lambda s: -students[s]["params"])
    lines = [
        f"# DiSK against CE, KD and ESKD on {result['data']}: students of decreasing capacity",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}; threads {env['threads']}; 1-min load average at start / end "
        f"{env['load'][0]:.1f} / {env['load'][1]:.1f}  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC; "
        f"{result['total_seconds'] / 60:.1f} min in the invocation that wrote this (runs already in runs/ are reused, "
        "not re-run; measured on a loaded, shared machine)  ",
        f"Teacher: CNN(16, 2 blocks), {result['teacher']['params']:,} params, test accuracy "
        f"{result['teacher']['test_accuracy']:.4f}. Students: {result['epochs']} epochs of student updates "
        f"(DiSK: {2 * result['epochs']} epochs with its guide epochs), seeds {result['seeds']}; KD: T 4, CE 0.1, KD "
        f"0.9; ESKD: KD until epoch {result['epochs'] // 2}; DiSK: {json.dumps(result['disk'])}. "
        "DiSK-rho20: the same with dual step ρ = 20 (runner.sh: 2); DiSK-sched: runner.sh's own multiplier, a cosine "
        "μ from 1 to 5 (multiplier: schedule, period 8 cycles). Last-epoch test accuracy, mean ± std over seeds.",
        "",
        "| row | " + " | ".join(f"{s} ({students[s]['params']:,} params)" for s in order) + " |",
        "|---|" + "---:|" * len(order),
    ]
    for row in ROWS:
        cells = [f"{table[row][s]['mean']:.4f} ± {table[row][s]['std']:.4f}" for s in order]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (same seed), points, mean ± std over seeds:", ""]
    lines += ["| difference | " + " | ".join(order) + " |", "|---|" + "---:|" * len(order)]
    for name, by_student in result["paired_points"].items():
        cells = [f"{by_student[s]['mean']:+.2f} ± {by_student[s]['std']:.2f}" for s in order]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The guide: Spearman(g, h) on the 512 logged training rows in the last epoch (mean ± std over seeds);",
    ]
    lines += ["mean g and h and the last guide epoch's constraint c, budget ε and multiplier μ (seed 0):", ""]
    lines += ["| row | student | Spearman(g, h) | mean g | mean h | c (last guide epoch) | ε | μ | c ≤ ε |"]
    lines += ["|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in DISK_ROWS:
        for s in order:
            traces = result["guide"][row][s]
            rho = mean_std([t["spearman_g_h"] for t in traces.values()])
            trace = traces[str(result["seeds"][0])]
            last = [e for e in trace["per_epoch"] if e["phase"] == "guide"][-1]
            lines.append(
                f"| {row} | {s} | {rho['mean']:+.3f} ± {rho['std']:.3f} | {statistics.mean(trace['g']):.3f} | "
                f"{statistics.mean(trace['h']):.3f} | {last['constraint']:.3f} | {last['budget']:.3f} | "
                f"{last['multiplier']:.2f} | {'yes' if last['constraint'] <= last['budget'] else 'no'} |"
            )
    return [*lines, "", "## What it shows (computed from the tables above)", "", *findings(result, order)]


def findings(result: dict[str, Any], order: list[str]) -> list[str]:
    out = []
    for row in DISK_ROWS:
        diff = result["paired_points"][f"{row} - KD"]
        shown = ", ".join(f"{s} {diff[s]['mean']:+.2f} ± {diff[s]['std']:.2f}" for s in order)
        se = {s: diff[s]["std"] / max(len(result["seeds"]) ** 0.5, 1) for s in order}
        resolved = [s for s in order if abs(diff[s]["mean"]) > 2 * se[s]]
        best = max(order, key=lambda s: diff[s]["mean"])
        out.append(
            f"- {row} − KD, points: {shown}; beyond twice the paired standard error: {', '.join(resolved) or 'none'}; "
            f"largest margin: {best} ({'the smallest student' if best == order[-1] else 'not the smallest student'})."
        )
    for row in DISK_ROWS:
        rhos = {s: statistics.mean(t["spearman_g_h"] for t in result["guide"][row][s].values()) for s in order}
        out.append(
            f"- {row}, g against h, mean Spearman over seeds: {', '.join(f'{s} {r:+.2f}' for s, r in rhos.items())} "
            "(> 0: g higher where h is)."
        )
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = result["students"]
    order = sorted(students, key=lambda s: -students[s]["params"])
    rows = [r for r in DISK_ROWS if r in result["guide"]]
    fig, axes = plt.subplots(len(rows), len(order), figsize=(3.4 * len(order), 3.0 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for ax, s in zip(axes[i], order, strict=True):
            trace = result["guide"][row][s][str(result["seeds"][0])]
            h, g = np.array(trace["h"]), np.array(trace["g"])
            ax.scatter(h, g, s=5, alpha=0.35)
            edges = np.quantile(h, np.linspace(0, 1, 9))
            which = np.clip(np.searchsorted(edges, h, side="right") - 1, 0, 7)
            centres = [h[which == b].mean() for b in range(8) if (which == b).any()]
            means = [g[which == b].mean() for b in range(8) if (which == b).any()]
            ax.plot(centres, means, "r-o", ms=3, label="mean g per h octile")
            ax.set_title(f"{row}: {s} ({students[s]['params']:,} params), ρ={trace['spearman_g_h']:+.2f}", fontsize=8)
            ax.set_xlabel("hardness h = min(CE(s, argmax t), 5)", fontsize=8)
            ax.set_ylabel("guide g(x)", fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"DiSK guide against hardness, last epoch, seed {result['seeds'][0]} ({result['data']})", fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=100)


if __name__ == "__main__":
    main()
