"""Compression + distillation on Fashion-MNIST: accuracy against size on disk and CPU latency, over seeds.

    nice -n 10 python benchmarks/compress_fmnist.py      # Fashion-MNIST, MLP 784-256-128-10, 3 seeds (~25 min)
    python benchmarks/compress_fmnist.py --quick          # digits, MLP 64-64-32-10, 1 seed (a smoke run, ~1 min)

Per seed: the student trained from scratch (cross-entropy); then, with ``kdlab compress``, structured pruning of its
hidden units (smallest L1 norm of incoming weights) to 50 / 75 / 90 %, one shot, recovered for the same number of
epochs by plain fine-tuning (CE), by KD (T = 4, alpha = 0.1, beta = 0.9) or by PTLoss (epsilon: auto, selected on the
validation split through the proxy teacher). The teacher of every KD/PTLoss recovery is the unpruned model itself
(same seed): the issue's "unpruned teacher", free (it exists already) and the setting practitioners have.
Every model is measured the same way after training: size of its weights file on disk, parameters and non-zeros,
median CPU latency (one torch thread) at batch 1 and 256 after warm-up, last-epoch test accuracy.
Run directories are kept under --runs, so a second call only measures and writes the results.
Results: benchmarks/results/compress_fmnist.{json,md,png} (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab.compress import sparsity_report
from kdlab.compress.recover import compress
from kdlab.config import load_config
from kdlab.engine import train
from kdlab.engine.run import build_student, load_data
from kdlab.eval.plots import save_png
from kdlab.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
SPARSITIES = (0.5, 0.75, 0.9)
RECOVERY = {  # row suffix -> method
    "fine-tune": {"name": "ce"},
    "KD": {"name": "kd", "temperature": 4.0, "alpha": 0.1, "beta": 0.9},
    "PTLoss": {"name": "ptloss", "epsilon": "auto"},
}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = {
            "data": {"name": args.data, "split_seed": 0},  # one validation split: the teacher never saw its rows
            "model": {"name": "mlp", "kwargs": {"hidden": args.hidden}},
            "train": {
                "batch_size": 128,
                "progress": False,
                "train_eval_size": 0,
                "optimizer": {"lr": 0.05},
                "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
            },
        }

    def config(self, out: Path, seed: int, epochs: int, **extra) -> dict:
        return {
            **self.base,
            **extra,
            "name": out.name,
            "out": str(out),
            "seed": seed,
            "train": {**self.base["train"], "epochs": epochs},
        }

    def scratch(self, seed: int) -> Path:
        out = self.args.runs / f"seed{seed}" / "scratch"
        if not (out / "summary.json").exists():
            train(self.config(out, seed, self.args.epochs), overwrite=True)
        return out

    def pruned(self, seed: int, source: Path, sparsity: float, recovery: str) -> Path:
        out = self.args.runs / f"seed{seed}" / f"pruned{round(100 * sparsity)}-{recovery}"
        if not (out / "summary.json").exists():
            prune = {"kind": "structured", "sparsity": sparsity}
            cfg = self.config(
                out,
                seed,
                self.args.recover_epochs,
                method=RECOVERY[recovery],
                compress={"source": str(source), "prune": prune},
            )
            compress(cfg, overwrite=True)
        return out


def _median_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(run: Path, repeats: int) -> dict:
    """Accuracy, size on disk, parameters, non-zeros and CPU latency of a finished run's model."""
    cfg = load_config(run / "config.yaml")
    data = load_data(cfg)
    model = build_student(cfg, data)
    weights = run / "model.safetensors"
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    report = sparsity_report(model)
    shape = tuple(data.in_shape)
    summary = json.loads((run / "summary.json").read_text())
    return {
        "test_accuracy": summary["test_accuracy"],
        "size_kb": weights.stat().st_size / 1024,
        "parameters": report["parameters"],
        "nonzero_parameters": report["nonzero_parameters"],
        "latency_b1_ms": _median_ms(model, torch.randn(1, *shape), repeats * 10),
        "latency_b256_ms": _median_ms(model, torch.randn(256, *shape), repeats),
        "train_seconds": summary["train_seconds"],
        "method": summary["method"],
    }


FIELDS = ("test_accuracy", "size_kb", "parameters", "nonzero_parameters", "latency_b1_ms", "latency_b256_ms")


def aggregate(per_seed: list[dict]) -> dict:
    row = {}
    for key in (*FIELDS, "train_seconds"):
        values = [m[key] for m in per_seed]
        row[key] = {
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values,
        }
    return row


def paired(rows: dict, better: str, base: str) -> dict:
    """Per-seed accuracy differences ``better - base`` (same seed, same source model) and a verdict."""
    diffs = [
        a - b
        for a, b in zip(rows[better]["test_accuracy"]["per_seed"], rows[base]["test_accuracy"]["per_seed"], strict=True)
    ]
    mean = statistics.mean(diffs)
    sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    if mean > 2 * sem:
        verdict = "beats"
    elif mean < -2 * sem:
        verdict = "is worse than"
    else:
        verdict = "does not clearly differ from"
    wins = sum(d > 0 for d in diffs)
    return {"row": better, "base": base, "diffs": diffs, "mean": mean, "sem": sem, "wins": wins, "verdict": verdict}


def comparisons(rows: dict) -> list[dict]:
    pairs = []
    for s in SPARSITIES:
        ft = f"pruned {round(100 * s)} % + fine-tune"
        for rec in ("KD", "PTLoss"):
            pairs.append(paired(rows, f"pruned {round(100 * s)} % + {rec}", ft))
    return pairs


def markdown(result: dict) -> list[str]:
    env = result["environment"]
    lines = [
        f"# Pruning + distillation on {result['data']}: accuracy vs size vs latency",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}  ",
        f"Versions: torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']}",
        "",
        result["protocol"],
        "",
        "| row | test accuracy | size on disk (KB) | parameters | non-zeros | latency b1 (ms) | latency b256 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rows"].items():
        cells = [f"{r['test_accuracy']['mean']:.4f} ± {r['test_accuracy']['std']:.4f}"]
        cells.append(f"{r['size_kb']['mean']:.1f} ± {r['size_kb']['std']:.1f}")
        cells += [f"{r[k]['mean']:,.0f}" for k in ("parameters", "nonzero_parameters")]
        cells += [f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}" for k in ("latency_b1_ms", "latency_b256_ms")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per-seed test accuracy:", ""]
    for name, r in result["rows"].items():
        lines.append(f"- {name}: " + ", ".join(f"{a:.4f}" for a in r["test_accuracy"]["per_seed"]))
    lines += [
        "",
        "## Does distillation beat plain fine-tuning?",
        "",
        "Paired per-seed differences of test accuracy (same seed = same source model and data order); a row "
        '"beats" its baseline when the mean difference is more than two standard errors above zero.',
        "",
    ]
    for c in result["comparisons"]:
        diffs = ", ".join(f"{100 * d:+.2f}" for d in c["diffs"])
        lines.append(
            f"- {c['row']} {c['verdict']} {c['base']}: mean difference {100 * c['mean']:+.2f} points "
            f"(± {100 * c['sem']:.2f} standard error; per seed {diffs}; "
            f"better on {c['wins']} of {len(c['diffs'])} seeds)."
        )
    lines.append("")
    return lines


STYLE = {  # family -> (colour, label)
    "scratch": ("black", "from scratch"),
    "fine-tune": ("tab:blue", "pruned + fine-tune"),
    "KD": ("tab:orange", "pruned + KD"),
    "PTLoss": ("tab:green", "pruned + PTLoss"),
}
MARKERS = {"50": "o", "75": "s", "90": "^"}


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    panels = [("size_kb", "size on disk (KB)"), ("latency_b1_ms", "latency, batch 1 (ms)")]
    panels.append(("latency_b256_ms", "latency, batch 256 (ms)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), sharey=True)
    seen = set()
    for name, r in rows.items():
        family = next((f for f in STYLE if f != "scratch" and name.endswith(f)), "scratch")
        colour, label = STYLE[family]
        marker = next((m for pct, m in MARKERS.items() if f"pruned {pct} %" in name), "*")
        for ax, (key, xlabel) in zip(axes, panels, strict=True):
            ax.errorbar(
                r[key]["mean"],
                r["test_accuracy"]["mean"],
                xerr=r[key]["std"],
                yerr=r["test_accuracy"]["std"],
                fmt=marker,
                color=colour,
                ms=7,
                capsize=3,
                label=label if family not in seen else None,
            )
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3, which="both")
        seen.add(family)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8, title="marker: o 50 %, s 75 %, ^ 90 % pruned", title_fontsize=7)
    fig.suptitle("accuracy vs size and CPU latency (mean ± std over seeds; up and left is better)", fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--runs", type=Path, default=None, help="run directories (default runs/compress-bench[-quick])")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training and latency")
    args = parser.parse_args()
    quick = args.quick
    args.runs = args.runs or Path("runs/compress-bench-quick" if quick else "runs/compress-bench")
    args.out = args.out or RESULTS / ("quick" if quick else "") / "compress_fmnist"
    args.data = "digits" if quick else "fashion_mnist"
    args.hidden = [64, 32] if quick else [256, 128]
    args.epochs, args.recover_epochs = (5, 2) if quick else (10, 3)
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    repeats = 5 if quick else 20
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    per_row: dict[str, list[dict]] = {}
    for seed in args.seeds:
        source = bench.scratch(seed)
        per_row.setdefault("from scratch (float)", []).append(measure(source, repeats))
        for s in SPARSITIES:
            for recovery in RECOVERY:
                run = bench.pruned(seed, source, s, recovery)
                per_row.setdefault(f"pruned {round(100 * s)} % + {recovery}", []).append(measure(run, repeats))
        print(f"seed {seed} done", flush=True)
    rows = {name: aggregate(values) for name, values in per_row.items()}
    result = {
        "environment": environment(),
        "data": args.data,
        "seeds": args.seeds,
        "student": f"MLP {args.hidden}",
        "protocol": (
            f"Student: MLP with hidden {args.hidden}, {args.epochs} epochs from scratch (SGD lr 0.05, cosine, batch "
            f"128); pruned rows: structured (whole hidden units) one-shot pruning of that model with `kdlab compress`, "
            f"then {args.recover_epochs} recovery epochs with the row's method; KD and PTLoss distil from the "
            f"unpruned model of the same seed (the issue's unpruned teacher). Seeds {args.seeds}; mean ± std over "
            f"seeds; last-epoch test accuracy; size = the weights file (safetensors) on disk; latency = median "
            f"forward time with {args.threads} torch thread(s) after warm-up ({repeats * 10} runs at batch 1, "
            f"{repeats} at batch 256), on a shared machine."
        ),
        "rows": rows,
        "comparisons": comparisons(rows),
    }
    lines = markdown(result)
    plot(rows, args.out.with_suffix(".png"))
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
