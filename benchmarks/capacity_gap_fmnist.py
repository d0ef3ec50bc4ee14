"""The capacity gap on Fashion-MNIST: does a bigger teacher make a better small student, and do ESKD/TAKD help?

    python benchmarks/capacity_gap_fmnist.py            # 4 teachers, MLP(16) student, 3 seeds (~30 min, 2 shared cores)
    python benchmarks/capacity_gap_fmnist.py --quick    # digits, 2 teachers, 1 seed, 2 epochs (a smoke run)

Teachers (trained once, seed 0, with cross-entropy; weights kept every 2 epochs) of increasing size; one small
student (MLP with 16 hidden units), the same budget in every run (6 epochs, batch 256, SGD lr 0.1, cosine: sized
for a shared 2-core machine), seeds 0..2 (the seed also draws the validation split; the test split is fixed). Rows:
  CE          the student on hard labels only (the floor);
  KD          Hinton KD from the final teacher (T = 2, alpha = beta = 0.5: configs/fashion_mnist/student-mlp-kd.yaml);
  ESKD-1      KD from the teacher's early checkpoint (epoch 2 of 6): an early-stopped teacher;
  ESKD-2      KD until epoch 3 of 6, then CE only (method.kd_until_epoch);
  TAKD        teacher -> assistant MLP(64) -> student (`kdlab chain`), both KD steps as the KD row;
  DiSK        scaffolding (method disk, docs/disk.md): 1 guide warm-up epoch, then 1 student / 1 guide epoch in
              turn, top-K 3; 2x the epochs so that the student gets the same 6 epochs of updates.
Runs go through the toolkit's own `sweep` (teachers, KD rows) and `chain` (TAKD); the teacher logits are cached
once per teacher, checkpoint and seed. Test accuracy is the last epoch's. Results:
benchmarks/results/capacity_gap_fmnist.{json,md,png} (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab.api import cache_logits
from kdlab.eval.plots import save_png
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.workflow.chain import chain
from kdlab.workflow.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("KD", "ESKD-1", "ESKD-2", "TAKD", "DiSK")

TEACHERS = {  # label -> model section; increasing capacity
    "mlp128": {"name": "mlp", "kwargs": {"hidden": [128]}},
    "mlp512": {"name": "mlp", "kwargs": {"hidden": [512]}},
    "mlp512x2": {"name": "mlp", "kwargs": {"hidden": [512, 512]}},
    "cnn8": {"name": "cnn", "kwargs": {"width": 8, "blocks": 2}},
}
QUICK_TEACHERS = {"mlp64": {"name": "mlp", "kwargs": {"hidden": [64]}}, "cnn8": TEACHERS["cnn8"]}
STUDENT = {"name": "mlp", "kwargs": {"hidden": [16]}}
ASSISTANT = {"name": "mlp", "kwargs": {"hidden": [64]}}
KD = {"name": "kd", "temperature": 2.0, "alpha": 0.5, "beta": 0.5}
DISK = {"name": "disk", "warmup_epochs": 1, "student_epochs": 1, "guide_epochs": 1, "top_k": 3}


def base_config(data: str, epochs: int) -> dict[str, Any]:
    return {
        "data": {"name": data, "val_fraction": 0.1},
        "train": {
            "epochs": epochs,
            "batch_size": 256,
            "progress": False,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4},
            "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
        },
    }


def mean_std(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "runs": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="only rebuild the .md and .png from a .json")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        lines = report(result)
        atomic_write_text(args.from_json.with_suffix(".md"), "\n".join(lines) + "\n")
        plot(result, args.from_json.with_suffix(".png"))
        print("\n".join(lines))
        return
    started = time.perf_counter()
    data, epochs = ("digits", 4) if args.quick else ("fashion_mnist", 6)
    early, kd_until = 2, (2 if args.quick else 3)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    teachers = QUICK_TEACHERS if args.quick else TEACHERS
    runs = args.runs or ROOT / "runs" / ("capacity-gap-quick" if args.quick else "capacity-gap")
    out = (RESULTS / "quick" if args.quick else RESULTS) / "capacity_gap_fmnist"

    base = base_config(data, epochs)
    teacher_cfg = {**base, "name": "teacher", "out": str(runs / "teachers"), "seed": 0}
    teacher_cfg["train"] = {**base["train"], "keep_checkpoints_every": early}
    print(f"teachers: {', '.join(teachers)}", flush=True)
    t_result = sweep(teacher_cfg, {"model": teachers}, root=runs / "teachers", progress=False)
    teacher_runs = {p.labels["model"]: Path(p.cfg.out) for p in t_result.points}
    teacher_info = {}
    for label, path in teacher_runs.items():
        summary = json.loads((path / "summary.json").read_text())
        metrics = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        early_val = next(m["val/accuracy"] for m in metrics if m.get("epoch") == early and "val/accuracy" in m)
        teacher_info[label] = {
            "params": summary["parameters"],
            "test_accuracy": summary["test_accuracy"],
            "early_val_accuracy": early_val,
            "train_seconds": summary["train_seconds"],
        }
        print(f"teacher {label}: {summary['parameters']:,} params, test {summary['test_accuracy']:.4f}", flush=True)

    student_cfg = {**base, "name": "student", "out": str(runs / "students"), "model": STUDENT, "method": KD}
    student_cfg["teacher"] = {"run": str(next(iter(teacher_runs.values())))}
    for path in teacher_runs.values():  # teacher logits once per teacher, checkpoint and seed (split)
        for seed in seeds:
            for epoch in (None, early):
                sets = [f"teacher.run={path}", f"seed={seed}", f"teacher.checkpoint_epoch={epoch or 'null'}"]
                cache_logits(student_cfg, sets)
    grid = {"teacher.run": {label: str(p) for label, p in teacher_runs.items()}, "seed": seeds}
    variants = {
        "KD": [],
        "ESKD-1": [f"teacher.checkpoint_epoch={early}"],
        "ESKD-2": [f"method.kd_until_epoch={kd_until}"],
        "DiSK": [f"method={json.dumps({**DISK, 'budget_period': epochs})}", f"train.epochs={2 * epochs}"],
    }
    rows: dict[str, dict[str, list[float]]] = {m: {t: [] for t in teachers} for m in METHODS}
    for method, sets in variants.items():
        print(f"{method} students", flush=True)
        result = sweep(student_cfg, grid, sets, root=runs / method, progress=False)
        for p in result.points:
            rows[method][p.labels["teacher.run"]].append(p.summary["test_accuracy"])
    ce = sweep({**student_cfg, "method": {"name": "ce"}}, {"seed": seeds}, root=runs / "CE", progress=False)
    ce_accs = [p.summary["test_accuracy"] for p in ce.points]
    print("TAKD chains", flush=True)
    for label, path in teacher_runs.items():
        for seed in seeds:
            stages = [
                {"name": "assistant", "model": ASSISTANT, "method": KD, "teacher": {"run": str(path)}},
                {"name": "student", "model": STUDENT, "method": KD},
            ]
            chain_cfg = {"out": str(runs / "TAKD" / f"{label}-seed{seed}"), "base": {**base, "seed": seed}}
            summaries = chain({**chain_cfg, "stages": stages})
            rows["TAKD"][label].append(summaries[-1]["test_accuracy"])
    assistant_params = summaries[0]["parameters"]

    table = {m: {t: mean_std(v) for t, v in by_t.items()} for m, by_t in rows.items()}
    result = {
        "environment": environment(),
        "data": data,
        "epochs": epochs,
        "seeds": seeds,
        "early_checkpoint_epoch": early,
        "kd_until_epoch": kd_until,
        "student": STUDENT,
        "student_params": ce.points[0].summary["parameters"],
        "assistant": ASSISTANT,
        "assistant_params": assistant_params,
        "kd": KD,
        "teachers": {label: {**teacher_info[label], "model": teachers[label]} for label in teachers},
        "ce": mean_std(ce_accs),
        "students": table,
        "total_seconds": time.perf_counter() - started,
    }
    lines = report(result)
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    plot(result, out.with_suffix(".png"))
    print("\n".join(lines))


def present(result: dict[str, Any]) -> list[str]:
    """The rows a result holds (one written before DiSK joined the study has no DiSK row)."""
    return [m for m in METHODS if m in result["students"]]


def report(result: dict[str, Any]) -> list[str]:
    methods = present(result)
    env, teachers, table, ce = result["environment"], result["teachers"], result["students"], result["ce"]
    lines = [
        f"# The capacity gap on {result['data']}: student accuracy against teacher size",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC; "
        f"total {result['total_seconds'] / 60:.1f} min  ",
        f"Student: MLP(16) ({result['student_params']:,} params), {result['epochs']} epochs, seeds {result['seeds']}; "
        f"KD: T={result['kd']['temperature']}, alpha={result['kd']['alpha']}, beta={result['kd']['beta']}; "
        f"ESKD-1: teacher weights after epoch {result['early_checkpoint_epoch']}; ESKD-2: KD until epoch "
        f"{result['kd_until_epoch']}, then CE; TAKD: assistant MLP(64) ({result['assistant_params']:,} params). "
        "Teachers: seed 0, cross-entropy. Last-epoch test accuracy, mean ± std over seeds.",
        "",
        f"CE-only student (no teacher): **{ce['mean']:.4f} ± {ce['std']:.4f}**",
        "",
        "| teacher | params | teacher test acc | early val acc | " + " | ".join(methods) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(methods),
    ]
    for label, info in teachers.items():
        cells = [f"{table[m][label]['mean']:.4f} ± {table[m][label]['std']:.4f}" for m in methods]
        lines.append(
            f"| {label} | {info['params']:,} | {info['test_accuracy']:.4f} | {info['early_val_accuracy']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "Difference to the CE-only student, points (mean over seeds):", ""]
    lines += ["| teacher | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for label in teachers:
        diffs = [f"{(table[m][label]['mean'] - ce['mean']) * 100:+.2f}" for m in methods]
        lines.append(f"| {label} | " + " | ".join(diffs) + " |")
    return [*lines, "", "## What it shows (computed from the table above)", "", *findings(result)]


def findings(result: dict[str, Any]) -> list[str]:
    """Plain statements: is there a gap (does KD get worse with the most accurate teacher), do the remedies help."""
    methods = present(result)
    teachers, table, ce = result["teachers"], result["students"], result["ce"]
    noise = statistics.mean([ce["std"], *(table[m][t]["std"] for m in methods for t in teachers)])
    kd = table["KD"]
    strongest = max(teachers, key=lambda t: teachers[t]["test_accuracy"])
    best = max(teachers, key=lambda t: kd[t]["mean"])
    gap = (kd[best]["mean"] - kd[strongest]["mean"]) * 100
    out = [f"- Seed noise: the mean std of a row is {noise * 100:.2f} points; smaller differences are not resolved."]
    accs = [teachers[t]["test_accuracy"] for t in teachers]
    sizes = [teachers[t]["params"] for t in teachers]
    out.append(
        f"- The teachers span {min(sizes):,}–{max(sizes):,} parameters but only {min(accs):.4f}–{max(accs):.4f} "
        f"test accuracy ({(max(accs) - min(accs)) * 100:.2f} points): this probes teacher size and architecture "
        "more than teacher accuracy."
    )
    if best == strongest or gap <= noise * 100:
        out.append(
            f"- No capacity gap at this scale: KD from the most accurate teacher ({strongest}, "
            f"{teachers[strongest]['test_accuracy']:.4f}) gives {kd[strongest]['mean']:.4f}, "
            f"{'the best KD row' if best == strongest else f'within noise of the best ({best}, {gap:+.2f} points)'}."
        )
    else:
        out.append(
            f"- A capacity gap: KD from the most accurate teacher ({strongest}, "
            f"{teachers[strongest]['test_accuracy']:.4f}) gives {kd[strongest]['mean']:.4f}, "
            f"{gap:.2f} points below KD from {best} ({teachers[best]['test_accuracy']:.4f} teacher accuracy)."
        )
    kd_vs_ce = [(kd[t]["mean"] - ce["mean"]) * 100 for t in teachers]
    out.append(f"- KD − CE over the teachers: {', '.join(f'{d:+.2f}' for d in kd_vs_ce)} points.")
    for method in methods[1:]:
        diffs = {t: (table[method][t]["mean"] - kd[t]["mean"]) * 100 for t in teachers}
        shown = ", ".join(f"{t} {d:+.2f}" for t, d in diffs.items())
        verdict = (
            "within noise everywhere"
            if all(abs(d) <= noise * 100 for d in diffs.values())
            else f"largest change {max(diffs.values(), key=abs):+.2f}"
        )
        out.append(f"- {method} − KD, points: {shown} ({verdict}).")
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    methods = present(result)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers, table, ce = result["teachers"], result["students"], result["ce"]
    labels = sorted(teachers, key=lambda t: teachers[t]["test_accuracy"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in (
        (axes[0], "params", "teacher parameters (log)"),
        (axes[1], "test_accuracy", "teacher test accuracy"),
    ):
        order = sorted(labels, key=lambda t: teachers[t][key])
        xs = [teachers[t][key] for t in order]
        for method in methods:
            ax.errorbar(
                xs,
                [table[method][t]["mean"] for t in order],
                yerr=[table[method][t]["std"] for t in order],
                marker="o",
                capsize=3,
                label=method,
            )
        ax.axhspan(ce["mean"] - ce["std"], ce["mean"] + ce["std"], color="grey", alpha=0.25, label="CE only (±std)")
        ax.axhline(ce["mean"], color="grey", lw=1)
        if key == "params":
            ax.set_xscale("log")
        for x, t in zip(xs, order, strict=True):
            ax.annotate(t, (x, ax.get_ylim()[0]), fontsize=7, rotation=90, va="bottom", ha="right")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("student test accuracy")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"MLP(16) student on {result['data']}: mean ± std over seeds {result['seeds']}")
    fig.tight_layout()
    save_png(fig, path, dpi=120)


if __name__ == "__main__":
    main()
