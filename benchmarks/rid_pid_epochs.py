"""Red(Y: T, S), Uni(Y: T \\ S) and I(T; S) over the epochs of CE, VID and RID students, against a trained and an
untrained (nuisance) teacher: ``train.pid_every: 1`` in rid_fmnist's setting.

    python benchmarks/rid_pid_epochs.py [--seeds 0 1 2] [--epochs 8] [--train-rows 8000] [--threads 1]
    python benchmarks/rid_pid_epochs.py --quick      # 1 seed, 2 epochs, 2,000 rows: checks the script

The setting of ``benchmarks/rid_fmnist.py`` (its data subsample, MLP teacher 784-128-10 and student 784-16-10,
SGD, cosine, batch 128; student ``body.0`` paired with teacher ``body.0``): each student run logs the PID of that
pair after every epoch on the first ``--pid-rows`` validation rows (8 clusters, point estimates) into its
``pid.jsonl``; the CE student names the pair with ``train.pid_layers`` (it distils nothing, it is measured).
The paper's expectation (methods.md §5 (d)): RID's Red grows during training; with a nuisance teacher VID's
I(T; S) rises while Red does not. It also times ``kdlab evaluate --pid``'s estimate (``run_pid``) on one run,
for the choice of keeping it opt-in. Results: benchmarks/results/rid_pid_epochs.{json,md,png}.
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
from rid_fmnist import LAYERS, STUDENT_MODEL, TEACHER_MODEL, TEACHER_SEED, base_config, subsample

from kdlab.api import distill, train
from kdlab.config import load_config
from kdlab.eval.pid import read_log
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.tasks.classify_pid import run_pid

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
ROWS: dict[str, dict[str, Any]] = {
    "ce": {"name": "ce"},
    "vid": {"name": "vid", **LAYERS},
    "rid": {"name": "rid", **LAYERS},
}
TEACHERS: dict[str, dict[str, Any] | None] = {"trained": None, "untrained": {"kind": "untrained"}}
TERMS = ("red", "unique_t", "mi_ts")
TITLES = {"red": "Red(Y: T, S)", "unique_t": "Uni(Y: T \\ S)", "mi_ts": "I(T; S)"}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    data = subsample(args.runs, args.train_rows)
    tdir = args.runs / "teacher"
    tcfg = base_config(data, TEACHER_SEED, args.epochs)
    tcfg.update(name="teacher", out=str(tdir), model=TEACHER_MODEL)
    teacher = train(tcfg, overwrite=True)
    print(f"teacher: test accuracy {teacher['test']['accuracy']:.4f}", flush=True)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {r: [] for r in ROWS} for t in TEACHERS}
    for seed in args.seeds:
        for tname, nuisance in TEACHERS.items():
            for row, method in ROWS.items():
                out = args.runs / f"e{args.epochs}" / tname / f"{row}-seed{seed}"
                cfg = base_config(data, seed, args.epochs)
                cfg.update(name=f"{tname}-{row}-seed{seed}", out=str(out), model=STUDENT_MODEL, method=method)
                cfg["teacher"] = {"run": str(tdir), "check": "off", **({"nuisance": nuisance} if nuisance else {})}
                cfg["train"].update(pid_every=1, pid_rows=args.pid_rows, pid_clusters=8)
                if row == "ce":
                    cfg["train"]["pid_layers"] = ["body.0", "body.0"]
                summary = distill(cfg, overwrite=True)
                log = read_log(out)
                runs[tname][row].append({"seed": seed, "accuracy": summary["test"]["accuracy"], "pid": log,
                                         "wall_seconds": summary["wall_seconds"], "run": str(out)})  # fmt: skip
                last = log[-1]
                print(f"{tname} seed {seed} {row}: test acc {summary['test']['accuracy']:.4f} Red {last['red']:.3f} "
                      f"UniT {last['unique_t']:.3f} I(T;S) {last['mi_ts']:.3f} ({summary['wall_seconds']:.0f}s, "
                      f"PID {sum(x['seconds'] for x in log):.1f}s)", flush=True)  # fmt: skip
    return {"teacher": teacher, "runs": runs}


def time_evaluate_pid(run: Path) -> dict[str, float]:
    """Seconds of ``run_pid`` (what ``kdlab evaluate --pid`` runs) at its defaults and at a small row cap."""
    cfg = load_config(run / "config.yaml")
    timings = {}
    for label, rows, bootstrap in (("test_5000_rows_bootstrap_20", 5000, 20), ("test_1000_rows_no_bootstrap", 1000, 0)):
        started = time.perf_counter()
        run_pid(run, cfg, "test", rows=rows, bootstrap=bootstrap)
        timings[label] = round(time.perf_counter() - started, 2)
    return timings


def curves(entries: list[dict[str, Any]], term: str) -> tuple[list[int], list[float], list[float]]:
    epochs = [line["epoch"] for line in entries[0]["pid"]]
    per_epoch = [[e["pid"][i][term] for e in entries] for i in range(len(epochs))]
    mean = [statistics.mean(v) for v in per_epoch]
    std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
    return epochs, mean, std


def figure(runs: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> None:
    from kdlab.eval.plots import plt, save_png

    fig, axes = plt.subplots(len(runs), len(TERMS), figsize=(4.0 * len(TERMS), 3.1 * len(runs)), squeeze=False)
    for ax_row, (tname, rows) in zip(axes, runs.items(), strict=True):
        for ax, term in zip(ax_row, TERMS, strict=True):
            for row, entries in rows.items():
                x, mean, std = curves(entries, term)
                (line,) = ax.plot(x, mean, "o-", ms=3, label=row)
                low = [m - s for m, s in zip(mean, std, strict=True)]
                high = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
            ax.set(title=f"{TITLES[term]}, {tname} teacher", xlabel="epoch", ylabel="bits")
            ax.grid(alpha=0.3)
        ax_row[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def markdown(result: dict[str, Any]) -> str:
    env, load = result["environment"], result["load_average"]
    epochs = result["epochs"]
    lines = [
        "# Red, Uni and I(T;S) over epochs (train.pid_every): CE, VID and RID students, trained and untrained teacher",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']} (torch.set_num_threads({result['threads']}))  ",
        f"Load average (1, 5, 15 min) at start {load['start']}, at end {load['end']}: a shared, loaded machine — "
        "the PID values are deterministic, times are not a speed result.  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC; "
        f"this invocation {result['total_seconds'] / 60:.1f} min.  ",
        f"Setting of benchmarks/rid_fmnist.py: Fashion-MNIST, {result['train_rows']} training images subsampled "
        f"(10% of them validation), {epochs} epochs, teacher MLP 784-128-10 (test accuracy "
        f"{result['teacher_test_accuracy']:.4f}; untrained = same network, random weights), student MLP 784-16-10, "
        f"seeds {result['seeds']}. PID of student body.0 vs teacher body.0 after every epoch (train.pid_every: 1) "
        f"on the first {result['pid_rows']} validation rows ({result['measured_rows']} exist), PCA 10 + k-means 8 "
        "clusters per side, BROJA, bits; point estimates, mean ± std over seeds. CE is measured against each teacher "
        "(train.pid_layers), it distils nothing.",
        "",
        "![Red, Uni(T\\S), I(T;S) over epochs](rid_pid_epochs.png)",
        "",
        "| teacher | row | test acc | Red epoch 1 | Red last | Uni(T\\S) epoch 1 | Uni(T\\S) last | I(T;S) epoch 1 "
        "| I(T;S) last | PID s/epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tname, rows in result["runs"].items():
        for row, entries in rows.items():
            cells = [f"{statistics.mean(e['accuracy'] for e in entries):.4f}"]
            for term in TERMS:
                _, mean, std = curves(entries, term)
                cells += [f"{mean[0]:.3f} ± {std[0]:.3f}", f"{mean[-1]:.3f} ± {std[-1]:.3f}"]
            seconds = statistics.mean(x["seconds"] for e in entries for x in e["pid"])
            lines.append(f"| {tname} | {row} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    timing = result["evaluate_pid_seconds"]
    lines += [
        "",
        f"`kdlab evaluate --pid`'s estimate (`run_pid`, test split) on {timing['run']}: "
        f"{timing['test_5000_rows_bootstrap_20']} s at its defaults (5,000 rows, 20 bootstrap draws), "
        f"{timing['test_1000_rows_no_bootstrap']} s at 1,000 rows without bootstrap (loaded machine).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-rows", type=int, default=8000)
    parser.add_argument("--pid-rows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "rid_pid_epochs")
    parser.add_argument("--out", type=Path, default=RESULTS / "rid_pid_epochs")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 2,000 rows")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.train_rows = [0], 2, 2000
        args.runs, args.out = args.runs.with_name(args.runs.name + "-quick"), RESULTS / "quick" / "rid_pid_epochs"
    torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    found = run_all(args)
    timed_run = Path(found["runs"]["trained"]["rid"][0]["run"])
    timing = {"run": f"trained/rid seed {args.seeds[0]}", **time_evaluate_pid(timed_run)}
    result = {
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "seeds": args.seeds,
        "epochs": args.epochs,
        "train_rows": args.train_rows,
        "pid_rows": args.pid_rows,
        "measured_rows": found["runs"]["trained"]["ce"][0]["pid"][0]["rows"],
        "teacher_test_accuracy": found["teacher"]["test"]["accuracy"],
        "evaluate_pid_seconds": timing,
        "runs": found["runs"],
        "total_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure(found["runs"], args.out.with_suffix(".png"))
    text = markdown(result)
    atomic_write_json(args.out.with_suffix(".json"), json.loads(json.dumps(result)))
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
