"""The fidelity benchmark's ensemble row: distilling a 3-member ensemble of teachers (Stanton et al. 2021 used
ensembles as teachers) into the small student, next to distilling one of its members.

    python benchmarks/fidelity_ensemble_fmnist.py [--seeds 0 1 2] [--epochs 15]
    python benchmarks/fidelity_ensemble_fmnist.py --quick     # digits, 2 seeds: checks the script only

Per seed: three MLP[256] teachers (cross-entropy, the main benchmark's settings; member i trained with seed
100·i + seed on the same data split), then pure distillation (alpha 0, beta 1, T 4) of MLP[32] on plain data
(a) from member 0 alone and (b) from the ensemble, whose logits are the log of the members' mean probability.
Fidelity (top-1 agreement, KL(teacher ‖ student) at T = 1) is measured against the run's own teacher — the
ensemble for (b). Last epoch, mean ± std over seeds. Results: benchmarks/results/fidelity_fmnist_ensemble.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _env import environment
from fidelity_fmnist import _reuse, base_config, fmt, mean_std

from kdlab.api import distill, train
from kdlab.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MEMBERS = 3
METRICS = ("accuracy", "agreement", "kl_teacher", "nll", "ece")


def run(args) -> tuple[dict, dict]:
    teachers: dict[str, list[float]] = {"member": [], "ensemble": []}
    rows: dict[str, list[dict]] = {"one member": [], "3-member ensemble": []}
    for seed in args.seeds:
        members = []
        for i in range(MEMBERS):
            out = args.runs / f"seed{seed}" / f"teacher{i}"
            cfg = base_config(args.dataset, 100 * i + seed, args.teacher_epochs, args.train_eval_size)
            cfg["data"]["split_seed"] = seed  # every member and student shares the split of `seed`
            cfg.update(name=f"teacher{i}-seed{seed}", out=str(out), model={"name": "mlp", "kwargs": {"hidden": [256]}})
            summary = _reuse(out) or train(cfg, overwrite=True)
            teachers["member"].append(summary["test_accuracy"])
            members.append({"run": str(out)})
        for label, teacher in (("one member", members[0]), ("3-member ensemble", {"ensemble": members})):
            out = args.runs / f"seed{seed}" / ("small-member0" if label == "one member" else "small-ensemble")
            cfg = base_config(args.dataset, seed, args.epochs, args.train_eval_size)
            cfg["data"]["split_seed"] = seed
            cfg.update(
                name=f"small-{label}-seed{seed}",
                out=str(out),
                model={"name": "mlp", "kwargs": {"hidden": [32]}},
                teacher=teacher,
                method={"name": "kd", "alpha": 0.0, "beta": 1.0, "temperature": 4.0},
            )
            start = time.perf_counter()
            summary = _reuse(out) or distill(cfg, overwrite=True)
            rows[label].append(summary)
            print(
                f"seed {seed} {label}: test acc {summary['test']['accuracy']:.4f}, agreement "
                f"{summary['test']['agreement']:.4f}, KL {summary['test']['kl_teacher']:.4f} "
                f"({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    return teachers, rows


def ensemble_accuracy(args) -> list[float]:
    """The ensemble's own test accuracy per seed (its predictions: the argmax of the members' mean probability)."""
    from kdlab.config import load_config
    from kdlab.tasks.classify import load_data
    from kdlab.teacher.source import load_teacher, resolve_teacher

    accuracies = []
    for seed in args.seeds:
        members = [{"run": str(args.runs / f"seed{seed}" / f"teacher{i}")} for i in range(MEMBERS)]
        cfg = load_config({"data": {"name": args.dataset, "split_seed": seed}, "teacher": {"ensemble": members}})
        data = load_data(cfg)
        teacher = load_teacher(resolve_teacher(cfg.teacher), data.num_classes, tuple(data.in_shape))
        with torch.inference_mode():
            pred = torch.cat([teacher(x).argmax(-1) for x in data.x_test.split(2048)])
        accuracies.append(float((pred == data.y_test).float().mean()))
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15, help="the students' epoch budget (plain data)")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--train-eval-size", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "fidelity-ensemble-fmnist")
    parser.add_argument("--out", type=Path, default=RESULTS / "fidelity_fmnist_ensemble")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render-only", action="store_true", help="re-draw the Markdown from the JSON result")
    args = parser.parse_args()
    if args.quick:
        args.dataset, args.seeds, args.epochs, args.teacher_epochs = "digits", [0, 1], 3, 3
        args.runs, args.out = args.runs.with_name(args.runs.name + "-quick"), RESULTS / "quick" / args.out.name
    if args.render_only:
        render(json.loads(args.out.with_suffix(".json").read_text()), args.out)
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    teachers, rows = run(args)
    ensemble_acc = ensemble_accuracy(args)
    table = {
        label: {
            f"test_{m}": {"mean": mean_std(v)[0], "std": mean_std(v)[1], "runs": v}
            for m in METRICS
            for v in [[s["test"][m] for s in summaries]]
        }
        | {"train_seconds": statistics.mean(s["train_seconds"] for s in summaries)}
        for label, summaries in rows.items()
    }
    result = {
        "command": " ".join(["python", *sys.argv]),
        "environment": {**environment(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]},
        "seeds": args.seeds,
        "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs,
        "member_test_accuracy": teachers["member"],
        "ensemble_test_accuracy": ensemble_acc,
        "rows": table,
        "wall_seconds": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), result)
    render(result, args.out)


def render(result: dict, out: Path) -> None:
    """The Markdown table from the JSON result (``--render-only`` re-draws it without running anything)."""
    table, teachers, ensemble_acc = result["rows"], result["member_test_accuracy"], result["ensemble_test_accuracy"]
    env = result["environment"]
    loaded = env["load_average_1_5_15"][0] > 0.75 * (os.cpu_count() or 1)
    lines = [
        "# Fidelity on Fashion-MNIST: distilling a 3-member ensemble of teachers",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {env['machine']}; load average (1/5/15 min, at the end) {env['load_average_1_5_15']}"
        + (
            ": **a loaded machine** (other jobs shared the cores): wall times are indicative only  " if loaded else "  "
        ),
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC; "
        f"wall time {result['wall_seconds'] / 60:.1f} min  ",
        f"Teachers MLP[256] ({result['teacher_epochs']} epochs): member test accuracy {fmt(teachers)} "
        f"({len(teachers)} members over {len(result['seeds'])} seeds); the ensemble's {fmt(ensemble_acc)}. "
        f"Student MLP[32], pure distillation (alpha 0, beta 1, T 4), {result['epochs']} epochs, plain data, "
        f"seeds {result['seeds']}, last epoch, mean ± std. Agreement and KL(teacher ‖ student) are measured against "
        "the run's own teacher: member 0, or the ensemble (the log of the members' mean probability).",
        "",
        "| teacher | test acc | test agreement | test KL | test NLL | test ECE | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, entry in table.items():
        cells = [fmt(entry[f"test_{m}"]["runs"]) for m in METRICS]
        lines.append(f"| {label} | {' | '.join(cells)} | {entry['train_seconds']:.0f} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
