"""RID vs VID, FitNets, KD and CE on Fashion-MNIST with a trained and two nuisance teachers, and the PID of what the
VID and RID students share with each teacher.

    python benchmarks/rid_fmnist.py [--seeds 0 1 2] [--epochs 10] [--train-rows 12000] [--threads 1] [--fresh]
    python benchmarks/rid_fmnist.py --quick      # 1 seed, 2 epochs, 2,000 rows: checks the script

Sized for a shared 2-core CPU (methods.md §5 (d)): an MLP teacher with one 128-unit hidden layer, an MLP student
with one 16-unit hidden layer, both on a seeded subsample of ``--train-rows`` Fashion-MNIST training images (the
full 10,000-image test split), ``--epochs`` epochs each, SGD lr 0.05 momentum 0.9 wd 5e-4, cosine, batch 128.
Teachers: ``trained`` (cross-entropy, seed 0), ``untrained`` (``teacher.nuisance: untrained``: the same network,
random weights) and ``noise`` (the trained teacher with ``nuisance: {kind: noise_channels, fraction: 0.5, std:
1.0}``: half of its 128 hidden units replaced by noise in the features the methods distil; its logits, used by KD,
stay clean). Feature rows pair student ``body.0`` (16) with teacher ``body.0`` (128). RID keeps the authors'
defaults (α = (1, 0.1), 10 rounds, filter phase 1/4 of each round, σ⁴ term); VID and FitNets kdlab's defaults.
The CE row needs no teacher: one run per seed, compared with every teacher's rows.
PID (kdlab.eval.pid, BROJA, bits): on the first 5,000 test rows, PCA to 10 components, k-means with 8 clusters,
20 bootstrap draws (90% intervals), for the ce, vid and rid students against each teacher's (nuisance) features.
Results: benchmarks/results/rid_fmnist.{json,md} (--quick: benchmarks/results/quick/).
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
import numpy as np
import torch
from _env import environment

from kdlab.api import distill, train
from kdlab.config import TeacherConfig, load_config
from kdlab.data.idx import read_idx_pair
from kdlab.errors import TrainingError
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.tasks.classify_pid import run_pid

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
TEACHER_MODEL: dict[str, Any] = {"name": "mlp", "kwargs": {"hidden": [128]}}
STUDENT_MODEL: dict[str, Any] = {"name": "mlp", "kwargs": {"hidden": [16]}}
LAYERS = {"student_layer": "body.0", "teacher_layer": "body.0"}
ROWS: dict[str, dict[str, Any]] = {
    "ce": {"name": "ce"},
    "kd": {"name": "kd"},
    "fitnets": {"name": "fitnets", **LAYERS},
    "vid": {"name": "vid", **LAYERS},
    "rid": {"name": "rid", **LAYERS},
}
TEACHERS: dict[str, dict[str, Any] | None] = {
    "trained": None,
    "untrained": {"kind": "untrained"},
    "noise": {"kind": "noise_channels", "fraction": 0.5, "std": 1.0},
}
PID_ROWS = ("ce", "vid", "rid")
TEACHER_SEED = 0


def subsample(out: Path, rows: int) -> Path:
    """An .npz of ``rows`` seeded training images and the whole test split (kdlab's npz loader reads it)."""
    path = out / f"fmnist-{rows}.npz"
    if path.exists():
        return path
    x, y = read_idx_pair(FMNIST / "train-images-idx3-ubyte.gz", FMNIST / "train-labels-idx1-ubyte.gz")
    xt, yt = read_idx_pair(FMNIST / "t10k-images-idx3-ubyte.gz", FMNIST / "t10k-labels-idx1-ubyte.gz")
    keep = np.random.default_rng(TEACHER_SEED).permutation(len(y))[:rows]
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x[keep], y_train=y[keep], x_test=xt, y_test=yt)
    return path


def base_config(data: Path, seed: int, epochs: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "data": {"name": "npz", "path": str(data), "val_fraction": 0.1, "split_seed": TEACHER_SEED},
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "progress": False,
            "train_eval_size": 0,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            "scheduler": {"name": "cosine"},
        },
    }


def _reuse(out: Path, fresh: bool) -> dict[str, Any] | None:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() and not fresh else None


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    data = subsample(args.runs, args.train_rows)
    tdir = args.runs / "teacher"
    tcfg = base_config(data, TEACHER_SEED, args.epochs)
    tcfg.update(name="teacher", out=str(tdir), model=TEACHER_MODEL)
    teacher = _reuse(tdir, args.fresh) or train(tcfg, overwrite=True)
    print(f"teacher: test accuracy {teacher['test']['accuracy']:.4f}", flush=True)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {r: [] for r in ROWS} for t in TEACHERS}
    for seed in args.seeds:
        for tname, nuisance in TEACHERS.items():
            for row, method in ROWS.items():
                shared = row == "ce"  # no teacher: one run serves every teacher
                out = args.runs / f"e{args.epochs}" / ("ce" if shared else tname) / f"{row}-seed{seed}"
                cfg = base_config(data, seed, args.epochs)
                cfg.update(name=f"{tname}-{row}-seed{seed}", out=str(out), model=STUDENT_MODEL, method=method)
                cfg["teacher"] = {"run": str(tdir), "check": "off", **({"nuisance": nuisance} if nuisance else {})}
                started = time.perf_counter()
                try:
                    summary = _reuse(out, args.fresh) or distill(cfg, overwrite=True)
                except TrainingError as error:
                    runs[tname][row].append({"seed": seed, "failed": str(error)})
                    print(f"{tname} seed {seed} {row}: FAILED: {error}", flush=True)
                    continue
                entry = {"seed": seed, "accuracy": summary["test"]["accuracy"], "wall_seconds": summary["wall_seconds"]}
                if row in PID_ROWS:  # the CE student too, against this teacher's features
                    entry["pid"] = run_pid(out, load_config(out / "config.yaml"), "test", clusters=8,
                                           bootstrap=args.bootstrap, rows=5000, layers=("body.0", "body.0"),
                                           teacher_cfg=TeacherConfig.model_validate(cfg["teacher"]))  # fmt: skip
                runs[tname][row].append(entry)
                pid = entry.get("pid", {}).get("point", {})
                shown = f" Red {pid['red']:.3f} UniT {pid['unique_t']:.3f} I(T;S) {pid['mi_ts']:.3f}" if pid else ""
                print(f"{tname} seed {seed} {row}: test acc {entry['accuracy']:.4f}{shown} "
                      f"({time.perf_counter() - started:.0f}s)", flush=True)  # fmt: skip
    return {"teacher": teacher, "runs": runs}


def mean_std(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "runs": values}
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values}  # fmt: skip


def aggregate(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for tname, rows in runs.items():
        ce = {r["seed"]: r["accuracy"] for r in rows["ce"] if "failed" not in r}
        vid = {r["seed"]: r["accuracy"] for r in rows["vid"] if "failed" not in r}
        table[tname] = {}
        for row, entries in rows.items():
            ok = [r for r in entries if "failed" not in r]
            acc = {r["seed"]: r["accuracy"] for r in ok}
            item: dict[str, Any] = {
                "accuracy": mean_std([r["accuracy"] for r in ok]),
                "minus_ce": mean_std([acc[s] - ce[s] for s in acc if s in ce]),
                "minus_vid": mean_std([acc[s] - vid[s] for s in acc if s in vid]),
                "failures": [f"seed {r['seed']}: {r['failed']}" for r in entries if "failed" in r],
            }
            if any("pid" in r for r in ok):
                for key in ("red", "unique_t", "unique_s", "synergy", "joint", "mi_ts"):
                    item[f"pid_{key}"] = mean_std([r["pid"]["point"][key] for r in ok])
            table[tname][row] = item
    return table


def fmt(stat: dict[str, Any], digits: int = 4, sign: bool = False) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:{'+' if sign else ''}.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    env, load = result["environment"], result["load_average"]
    lines = [
        "# RID vs VID, FitNets, KD and CE on Fashion-MNIST, trained and nuisance teachers",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']} (torch.set_num_threads({result['threads']}))  ",
        f"Load average (1, 5, 15 min) at start {load['start']}, at end {load['end']}: a shared, loaded machine — "
        "accuracies are deterministic, times are not a speed result.  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC; "
        f"this invocation {result['total_seconds'] / 60:.1f} min.  ",
        f"Data: Fashion-MNIST, a seeded subsample of {result['train_rows']} training images (val_fraction 0.1 of "
        f"them), the full 10,000-image test split; {result['epochs']} epochs for teacher and students (sized to the "
        "machine: the paper trains WRNs on CIFAR for 251 epochs).  ",
        f"Teacher: MLP 784-128-10, test accuracy {result['teacher_test_accuracy']:.4f}; untrained: same network, "
        "random weights; noise: trained teacher with half of its 128 hidden units replaced by N(0, 1) in the "
        "distilled features (logits clean).  ",
        f"Student: MLP 784-16-10. Seeds {result['seeds']}; last-epoch test accuracy, mean ± std over seeds; Δ = "
        "paired (same seed) difference. CE uses no teacher (the same runs in every block).",
        "",
        "| teacher | row | test accuracy | Δ vs CE | Δ vs VID | Red(Y:T,S) | Uni(Y:T\\S) | Uni(Y:S\\T) | Syn "
        "| I(T;S) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tname, rows in result["table"].items():
        for row, e in rows.items():
            pid = [fmt(e[f"pid_{k}"], 3) if f"pid_{k}" in e else "" for k in
                   ("red", "unique_t", "unique_s", "synergy", "mi_ts")]  # fmt: skip
            delta_ce = "" if row == "ce" else fmt(e["minus_ce"], sign=True)
            delta_vid = "" if row in ("ce", "vid") else fmt(e["minus_vid"], sign=True)
            lines.append(
                f"| {tname} | {row} | {fmt(e['accuracy'])} | {delta_ce} | {delta_vid} | " + " | ".join(pid) + " |"
            )
    failures = [
        f"- {t} {r}: {f}" for t, rows in result["table"].items() for r, e in rows.items() for f in e["failures"]
    ]
    lines += [
        "",
        "PID in bits (kdlab.eval.pid, BROJA), student body.0 vs the teacher's distilled features (the nuisance ones "
        "where the teacher is a nuisance), first 5,000 test rows, PCA 10 + k-means 8 clusters each; mean ± std over "
        "seeds of the point estimates (per-run 90% bootstrap intervals in the JSON).",
        "",
        "Failed runs: " + ("none." if not failures else ""),
        *failures,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-rows", type=int, default=12000)
    parser.add_argument("--bootstrap", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "rid_fmnist")
    parser.add_argument("--out", type=Path, default=RESULTS / "rid_fmnist")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 2,000 rows")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.train_rows, args.bootstrap = [0], 2, 2000, 2
        args.runs, args.out = args.runs.with_name(args.runs.name + "-quick"), RESULTS / "quick" / "rid_fmnist"
    torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    found = run_all(args)
    result = {
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "seeds": args.seeds,
        "epochs": args.epochs,
        "train_rows": args.train_rows,
        "teacher_test_accuracy": found["teacher"]["test"]["accuracy"],
        "table": aggregate(found["runs"]),
        "runs": found["runs"],
        "total_seconds": time.perf_counter() - started,
    }
    text = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
