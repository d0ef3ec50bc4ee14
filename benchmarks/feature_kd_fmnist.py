"""Feature distillation (FitNets, VID) against logit KD and plain CE on Fashion-MNIST, CNN teacher -> small CNN.

    python benchmarks/feature_kd_fmnist.py [--seeds 0 1 2] [--epochs 2] [--teacher-epochs 5] [--threads 1] [--fresh]
    python benchmarks/feature_kd_fmnist.py --quick     # digits, 1 seed, 2 epochs, about a minute: checks the script

One teacher, the model and train sections of configs/fashion_mnist/teacher.yaml (CNN width 32, 2 blocks; SGD
lr 0.05 momentum 0.9 wd 5e-4, cosine with 0.5 warm-up epochs, batch 128), trained with cross-entropy at seed 0
(``--teacher-epochs``, default 5, not the config's 15: the defaults fit the whole benchmark in ~30 min on 2 CPU
cores, where one teacher epoch took ~45 s and one student epoch 10-130 s on a shared machine). One student, the
CNN of configs/fashion_mnist/student-cnn-kd.yaml (width 8, 2 blocks), distilled per seed with every row of ROWS,
all with the teacher's train settings, the same ``--epochs`` and the teacher's data split (``data.split_seed``).
Feature rows pair the last conv stage, ``layer2`` (student 16x7x7, teacher 64x7x7). Reported per row: mean ± std
over seeds of the last epoch's test accuracy, agreement with the teacher, KL(teacher ‖ student), and wall seconds
per run. Finished runs under ``--runs`` are reused unless ``--fresh``; a run that stops with a TrainingError (e.g.
a NaN loss) is recorded as failed, its settings are not changed.
Results: benchmarks/results/feature_kd_fmnist.{json,md} (--quick: benchmarks/results/quick/).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _env import environment

from kdlab.api import distill, evaluate, train
from kdlab.errors import TrainingError
from kdlab.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
TEACHER_MODEL: dict[str, Any] = {"name": "cnn", "kwargs": {"width": 32}}  # configs/fashion_mnist/teacher.yaml
STUDENT_MODEL: dict[str, Any] = {"name": "cnn", "kwargs": {"width": 8, "blocks": 2}}  # student-cnn-kd.yaml
LAYERS = {"student_layer": "layer2", "teacher_layer": "layer2"}
ROWS: dict[str, dict[str, Any]] = {
    "ce": {"name": "ce"},
    "kd": {"name": "kd"},
    "fitnets": {"name": "fitnets", **LAYERS},
    "vid": {"name": "vid", **LAYERS},
    "fitnets+kd": {"name": "fitnets", **LAYERS, "alpha": 0.1, "beta": 0.9},
}
METRICS = ("accuracy", "agreement", "kl_teacher")
TEACHER_SEED = 0


def base_config(dataset: str, seed: int, epochs: int) -> dict[str, Any]:
    """The data and train sections of configs/fashion_mnist/teacher.yaml (epochs aside), progress bars off."""
    return {
        "seed": seed,
        "data": {"name": dataset, "val_fraction": 0.1, "split_seed": TEACHER_SEED},
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "progress": False,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
        },
    }


def _reuse(out: Path, fresh: bool) -> dict[str, Any] | None:
    """A finished run (its directory name fixes its settings) is reused unless ``--fresh``."""
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() and not fresh else None


def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    tdir = args.runs / f"teacher-e{args.teacher_epochs}"
    tcfg = base_config(args.dataset, TEACHER_SEED, args.teacher_epochs)
    tcfg.update(name=f"teacher-e{args.teacher_epochs}", out=str(tdir), model=TEACHER_MODEL)
    teacher = _reuse(tdir, args.fresh) or train(tcfg, overwrite=True)
    print(f"teacher: test accuracy {teacher['test']['accuracy']:.4f} ({teacher['wall_seconds']:.0f}s)", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {row: [] for row in ROWS}
    for seed in args.seeds:
        for row, method in ROWS.items():
            out = args.runs / f"e{args.epochs}" / f"{row.replace('+', '-')}-seed{seed}"
            cfg = base_config(args.dataset, seed, args.epochs)
            cfg.update(name=f"{row}-seed{seed}", out=str(out), model=STUDENT_MODEL, method=method)
            cfg["teacher"] = {"run": str(tdir)}
            try:
                summary = _reuse(out, args.fresh) or distill(cfg, overwrite=True)
            except TrainingError as error:
                rows[row].append({"seed": seed, "failed": str(error)})
                print(f"seed {seed} {row}: FAILED: {error}", flush=True)
                continue
            t = summary["test"]
            if "agreement" not in t:  # ce loads no teacher: agreement and KL from kdlab's evaluate, post hoc
                t = (summary.get("evaluation") or evaluate(out, ("test",), latency=False))["test"]
            rows[row].append({"seed": seed, **{m: t[m] for m in METRICS}, "wall_seconds": summary["wall_seconds"]})
            print(
                f"seed {seed} {row}: test acc {t['accuracy']:.4f} agreement {t['agreement']:.4f} "
                f"KL {t['kl_teacher']:.4f} ({summary['wall_seconds']:.0f}s)",
                flush=True,
            )
    return teacher, rows


def mean_std(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "runs": values}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std, "runs": values}


def aggregate(rows: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    table = {}
    for row, runs in rows.items():
        ok = [r for r in runs if "failed" not in r]
        entry: dict[str, Any] = {"method": ROWS[row], "runs_ok": len(ok), "runs": runs}
        for key in (*METRICS, "wall_seconds"):
            entry[key] = mean_std([r[key] for r in ok])
        entry["failures"] = [f"seed {r['seed']}: {r['failed']}" for r in runs if "failed" in r]
        table[row] = entry
    return table


def fmt(stat: dict[str, Any], digits: int = 3) -> str:
    return "failed" if not stat["runs"] else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    load = result["load_average"]
    lines = [
        "# Feature distillation (FitNets, VID) vs KD and CE on Fashion-MNIST",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']} (set: torch.set_num_threads({result['threads']}))  ",
        f"Load average (1, 5, 15 min) at start {load['start']}, at end {load['end']}: **a loaded machine** — another "
        "process (a test suite) shared these cores, so wall times are indicative only.  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC; "
        f"this invocation {result['total_seconds'] / 60:.1f} min (wall of all runs, reused ones included: "
        f"{result['runs_wall_seconds'] / 60:.1f} min)  ",
        f"Data: {result['dataset']}, val_fraction 0.1, split_seed {TEACHER_SEED} for every run (the teacher's split).",
        "",
        f"Teacher: CNN width 32, 2 blocks (configs/fashion_mnist/teacher.yaml), cross-entropy, seed {TEACHER_SEED}, "
        f"{result['teacher_epochs']} epochs"
        + (" (the config's 15)" if result["teacher_epochs"] == 15 else " (the config says 15: fewer, for time)")
        + f": test accuracy {result['teacher_test_accuracy']:.4f}.  ",
        f"Student: CNN width 8, 2 blocks (the student of configs/fashion_mnist/student-cnn-kd.yaml), "
        f"{result['epochs']} epochs for every row; SGD lr 0.05 momentum 0.9 wd 5e-4, cosine (0.5 warm-up epochs), "
        f"batch 128. Seeds {result['seeds']}; last epoch, test split; mean ± std over seeds. Agreement = top-1 "
        "agreement with the teacher; KL = mean KL(teacher ‖ student) at T = 1. Feature rows: student layer2 "
        "(16 channels, 7x7 on 28x28 inputs) → teacher layer2 (64 channels). The ce row loads no teacher while "
        "training (its wall time has no teacher forward); its agreement and KL are from `kdlab.api.evaluate` on "
        "the finished run, the same metric code on the same test split.",
        "",
        "| row | method | runs ok | test accuracy | agreement | KL(teacher ‖ student) | wall s / run |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row, e in result["rows"].items():
        method = ", ".join(f"{k}: {v}" for k, v in e["method"].items())
        lines.append(
            f"| {row} | `{{{method}}}` | {e['runs_ok']}/{len(e['runs'])} | {fmt(e['accuracy'])} "
            f"| {fmt(e['agreement'])} | {fmt(e['kl_teacher'])} | {fmt(e['wall_seconds'], 1)} |"
        )
    failures = [f"- {row}: {f}" for row, e in result["rows"].items() for f in e["failures"]]
    lines += ["", "Failed runs: " + ("none." if not failures else ""), *failures]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="student epochs, every row")
    parser.add_argument("--teacher-epochs", type=int, default=5, help="teacher epochs (teacher.yaml: 15)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU is not oversubscribed)")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "feature_kd_fmnist")
    parser.add_argument("--out", type=Path, default=RESULTS / "feature_kd_fmnist")
    parser.add_argument("--fresh", action="store_true", help="retrain runs whose summary.json exists")
    parser.add_argument("--quick", action="store_true", help="digits, seed 0, 2 epochs: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.dataset, args.seeds, args.epochs, args.teacher_epochs = "digits", [0], 2, 2
        args.runs, args.out = args.runs.with_name(args.runs.name + "-quick"), RESULTS / "quick" / "feature_kd_fmnist"
    torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    teacher, rows = run_all(args)
    table = aggregate(rows)
    result = {
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "dataset": args.dataset,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs,
        "teacher_model": TEACHER_MODEL,
        "student_model": STUDENT_MODEL,
        "teacher_test_accuracy": teacher["test"]["accuracy"],
        "teacher_wall_seconds": teacher["wall_seconds"],
        "rows": table,
        "total_seconds": time.perf_counter() - started,
        "runs_wall_seconds": teacher["wall_seconds"]
        + sum(r["wall_seconds"] for runs in rows.values() for r in runs if "failed" not in r),
    }
    text = markdown(result)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
