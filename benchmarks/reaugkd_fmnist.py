"""ReAugKD (retrieval-augmented KD) against CE and KD on Fashion-MNIST, MLP teacher (2x512) -> MLP student (1x32).

    python benchmarks/reaugkd_fmnist.py [--seeds 0 1 2] [--epochs 5] [--teacher-epochs 5] [--threads 1] [--fresh]
    python benchmarks/reaugkd_fmnist.py --quick     # digits, 1 seed, 2 epochs: checks the script

The smallest convincing experiment of shared/methods.md §1(d). One teacher (MLP hidden [512, 512], CE, seed 0);
per seed four students (MLP hidden [32]), the same epochs and the teacher's data split: ``ce``; ``kd`` (alpha 0.1,
beta 0.9, T 4); ``reaugkd`` (the same KD terms + the in-batch relational loss; embedding: student ``body.0`` (32),
teacher ``body.1`` (512) projected to 32 by SupCon); ``reaugkd-norel`` (the same, relation_weight 0: the
ablation — its KB is built the same way, the student is never asked to line up with it). Every run is then scored
by ``kdlab.api.evaluate`` on val and test: the reaugkd rows report the test accuracy without retrieval, with
retrieval (k and β chosen on validation), the KB's kNN accuracy with the student's queries, and the latency of
the student alone and with retrieval at batch 1 and 256. Reported: mean ± std over seeds, last epoch.
Results: benchmarks/results/reaugkd_fmnist.{json,md} (--quick: benchmarks/results/quick/).
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
from kdlab.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
TEACHER_MODEL: dict[str, Any] = {"name": "mlp", "kwargs": {"hidden": [512, 512]}}
STUDENT_MODEL: dict[str, Any] = {"name": "mlp", "kwargs": {"hidden": [32]}}
REAUG = {"name": "reaugkd", "student_layer": "body.0", "teacher_layer": "body.1"}
ROWS: dict[str, dict[str, Any]] = {
    "ce": {"name": "ce"},
    "kd": {"name": "kd"},
    "reaugkd": REAUG,
    "reaugkd-norel": {**REAUG, "relation_weight": 0.0},
}
TEACHER_SEED = 0


def base_config(dataset: str, seed: int, epochs: int) -> dict[str, Any]:
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
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() and not fresh else None


def score(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Test metrics from kdlab's evaluate (reused when the summary holds them), retrieval ones where there are."""
    ev = summary.get("evaluation")
    if not ev or ("predictor" not in ev and (out / "kb").is_dir()):
        ev = evaluate(out, ("val", "test"))
    row: dict[str, Any] = {"accuracy": ev["test"]["accuracy"], "wall_seconds": summary["wall_seconds"]}
    p = ev["test"].get("predictor")
    if p:
        lat = ev["predictor"]["latency_ms"]
        row.update(
            accuracy_with_retrieval=p["accuracy_with_retrieval"],
            knn_accuracy=p["knn_accuracy"],
            k=p["k"],
            beta=p["beta"],
            kb_bytes=sum(ev["predictor"]["files"].values()),
            student_bytes=ev["footprint"]["file_bytes"],
            **{f"ms_{b}_student": lat[f"batch_{b}"]["student"] for b in (1, 256)},
            **{f"ms_{b}_retrieval": lat[f"batch_{b}"]["with_retrieval"] for b in (1, 256)},
            **{f"overhead_{b}": lat[f"batch_{b}"]["overhead"] for b in (1, 256)},
        )
    return row


def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    tdir = args.runs / f"teacher-e{args.teacher_epochs}"
    tcfg = base_config(args.dataset, TEACHER_SEED, args.teacher_epochs)
    tcfg.update(name=f"teacher-e{args.teacher_epochs}", out=str(tdir), model=TEACHER_MODEL)
    teacher = _reuse(tdir, args.fresh) or train(tcfg, overwrite=True)
    print(f"teacher: test accuracy {teacher['test']['accuracy']:.4f} ({teacher['wall_seconds']:.0f}s)", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {row: [] for row in ROWS}
    for seed in args.seeds:
        for row, method in ROWS.items():
            out = args.runs / f"e{args.epochs}" / f"{row}-seed{seed}"
            cfg = base_config(args.dataset, seed, args.epochs)
            cfg.update(name=f"{row}-seed{seed}", out=str(out), model=STUDENT_MODEL, method=method)
            cfg["teacher"] = {"run": str(tdir)}
            summary = _reuse(out, args.fresh) or distill(cfg, overwrite=True)
            rows[row].append({"seed": seed, **score(out, summary)})
            print(f"seed {seed} {row}: {rows[row][-1]}", flush=True)
    return teacher, rows


def mean_std(values: list[float]) -> dict[str, Any]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std, "runs": values}


def aggregate(rows: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    table = {}
    for row, runs in rows.items():
        keys = [k for k in runs[0] if k != "seed"]
        table[row] = {"method": ROWS[row], "runs": runs, **{k: mean_std([r[k] for r in runs]) for k in keys}}
    return table


def fmt(stat: dict[str, Any] | None, digits: int = 4, scale: float = 1.0) -> str:
    return "-" if stat is None else f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    env, load, t = result["environment"], result["load_average"], result["rows"]
    loaded = max(load["start"][0], load["end"][0]) > 1
    note = (
        ": **measured on a loaded machine** (other work shared these cores): times are indicative." if loaded else "."
    )
    lines = [
        "# ReAugKD (retrieval-augmented KD) vs KD and CE on Fashion-MNIST",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']} (set: torch.set_num_threads({result['threads']}); FAISS the same)  ",
        f"Load average (1, 5, 15 min) at start {load['start']}, at end {load['end']}{note}  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC; "
        f"this invocation {result['total_seconds'] / 60:.1f} min  ",
        f"Data: {result['dataset']}, val_fraction 0.1, split_seed {TEACHER_SEED}. Teacher: MLP [512, 512], CE, "
        f"{result['teacher_epochs']} epochs: test accuracy {result['teacher_test_accuracy']:.4f}. Students: MLP "
        f"[32], {result['epochs']} epochs, SGD lr 0.05 momentum 0.9 wd 5e-4, cosine, batch 128. Seeds "
        f"{result['seeds']}; last epoch; test split; mean ± std over seeds. KD: alpha 0.1, beta 0.9, T 4 (also "
        "inside both reaugkd rows). ReAugKD: teacher body.1 (512) → 32 by a linear projection trained with SupCon "
        "(τ 0.07, 10 epochs), KB = every training row (flat inner-product index), relational loss in-batch "
        "(τ_t = τ_s = 0.2, weight 1); retrieval k and β chosen on validation.",
        "",
        "| row | test accuracy |",
        "|---|---:|",
        f"| CE | {fmt(t['ce']['accuracy'])} |",
        f"| KD | {fmt(t['kd']['accuracy'])} |",
        f"| ReAugKD, without retrieval | {fmt(t['reaugkd']['accuracy'])} |",
        f"| ReAugKD, with retrieval | {fmt(t['reaugkd']['accuracy_with_retrieval'])} |",
        f"| no relational loss (ablation), without retrieval | {fmt(t['reaugkd-norel']['accuracy'])} |",
        f"| no relational loss (ablation), with retrieval | {fmt(t['reaugkd-norel']['accuracy_with_retrieval'])} |",
        "",
        "| | ReAugKD | ablation (no relational loss) |",
        "|---|---:|---:|",
        f"| kNN accuracy of the KB alone (student queries) | {fmt(t['reaugkd']['knn_accuracy'])} "
        f"| {fmt(t['reaugkd-norel']['knn_accuracy'])} |",
        f"| k chosen (per seed) | {t['reaugkd']['k']['runs']} | {t['reaugkd-norel']['k']['runs']} |",
        f"| β chosen (per seed) | {t['reaugkd']['beta']['runs']} | {t['reaugkd-norel']['beta']['runs']} |",
    ]
    r = t["reaugkd"]
    lines += [
        "",
        "Cost of the KB (ReAugKD runs): on disk "
        f"{r['kb_bytes']['mean']:,.0f} bytes (the student's model.safetensors: {r['student_bytes']['mean']:,.0f}).",
        "",
        "| CPU latency, median ms | student alone | with retrieval | overhead |",
        "|---|---:|---:|---:|",
    ]
    for b in (1, 256):
        lines.append(
            f"| batch {b} | {fmt(r[f'ms_{b}_student'], 3)} | {fmt(r[f'ms_{b}_retrieval'], 3)} "
            f"| {fmt(r[f'overhead_{b}'], 0, 100)} % |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5, help="student epochs, every row")
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU is not oversubscribed)")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "reaugkd_fmnist")
    parser.add_argument("--out", type=Path, default=RESULTS / "reaugkd_fmnist")
    parser.add_argument("--fresh", action="store_true", help="retrain runs whose summary.json exists")
    parser.add_argument("--quick", action="store_true", help="digits, seed 0, 2 epochs: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.dataset, args.seeds, args.epochs, args.teacher_epochs = "digits", [0], 2, 2
        args.runs, args.out = args.runs.with_name(args.runs.name + "-quick"), RESULTS / "quick" / "reaugkd_fmnist"
    torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    teacher, rows = run_all(args)
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
        "rows": aggregate(rows),
        "total_seconds": time.perf_counter() - started,
    }
    text = markdown(result)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
