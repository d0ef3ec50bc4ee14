"""Compression + distillation on Fashion-MNIST: accuracy against size on disk and CPU latency, over seeds.

    nice -n 10 python benchmarks/compress_fmnist.py      # Fashion-MNIST, MLP 784-256-128-10, 3 seeds (~25 min)
    python benchmarks/compress_fmnist.py --quick          # digits, MLP 64-64-32-10, 1 seed (a smoke run, ~1 min)

Per seed: the student trained from scratch (cross-entropy); then, with ``kdlab compress``, structured pruning of its
hidden units (smallest L1 norm of incoming weights) to 50 / 75 / 90 %, one shot, recovered for the same number of
epochs by plain fine-tuning (CE), by KD (T = 4, alpha = 0.1, beta = 0.9) or by PTLoss (epsilon: auto, selected on the
validation split through the proxy teacher); and int8 quantization (torchao, int8_dynamic) of the unpruned model:
post-training (PTQ), quantization-aware training with CE (QAT) and with KD (QAT + KD), as many epochs.
The teacher of every KD/PTLoss recovery is the unpruned float model itself (same seed): the issue's "unpruned,
full-precision teacher", free (it exists already) and the setting practitioners have.
Every model is measured the same way after training, with ``kdlab.eval.footprint``: size of its weights file on disk,
parameters and non-zeros, median CPU latency (one torch thread) at batch 1 and 256 after warm-up; last-epoch test
accuracy (int8 rows: the int8 model's).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab.api import train
from kdlab.compress.recover import compress
from kdlab.config import load_config
from kdlab.eval.footprint import footprint
from kdlab.eval.plots import save_png
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.tasks.classify import load_data
from kdlab.tasks.classify_eval import load_run_model

RESULTS = Path(__file__).resolve().parent / "results"
SPARSITIES = (0.5, 0.75, 0.9)
RECOVERY = {  # row suffix -> method
    "fine-tune": {"name": "ce"},
    "KD": {"name": "kd", "temperature": 4.0, "alpha": 0.1, "beta": 0.9},
    "PTLoss": {"name": "ptloss", "epsilon": "auto"},
}
# row -> (run directory tag, compress.quantize, recovery method); scheme int8_dynamic: int8 weights and activations
QUANTIZED = {
    "int8 PTQ": ("ptq", {"mode": "ptq"}, None),
    "int8 QAT (fine-tune)": ("qat-fine-tune", {"mode": "qat"}, RECOVERY["fine-tune"]),
    "int8 QAT + KD": ("qat-KD", {"mode": "qat"}, RECOVERY["KD"]),
}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.trained, self.reused = 0, 0  # run directories trained by this call / found finished
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
        if (out / "summary.json").exists():
            self.reused += 1
        else:
            train(self.config(out, seed, self.args.epochs), overwrite=True)
            self.trained += 1
        return out

    def compressed(self, seed: int, source: Path, tag: str, section: dict, method: dict | None) -> Path:
        """``kdlab compress`` of the seed's scratch model with ``section`` (prune or quantize), recovering with
        ``method`` for the recovery epochs."""
        out = self.args.runs / f"seed{seed}" / tag
        if (out / "summary.json").exists():
            self.reused += 1
        else:
            extra = {"compress": {"source": str(source), **section}}
            if method is not None:
                extra["method"] = method
            compress(self.config(out, seed, self.args.recover_epochs, **extra), overwrite=True)
            self.trained += 1
        return out


_DATA: dict[str, object] = {}


def measure(run: Path, repeats: int, rounds: int = 3) -> dict:
    """Accuracy, size on disk, parameters, non-zeros and CPU latency of a finished run's model (float or int8),
    with the product's own loader and ``kdlab.eval.footprint`` (what ``kdlab evaluate`` reports). Latency: the
    lowest of ``rounds`` footprint medians, so a burst of load from other jobs on the shared host counts less."""
    cfg = load_config(run / "config.yaml")
    key = cfg.data.model_dump_json()
    data = _DATA[key] = _DATA.get(key) or load_data(cfg)
    weights = run / "model.safetensors"
    model = load_run_model(cfg, data, weights).eval()
    costs = [footprint(model, data.x_test[:1], files=[weights], repeats=repeats) for _ in range(rounds)]
    cost = costs[0]
    latency = {b: min(c["latency_ms"][b] for c in costs) for b in ("batch_1", "batch_256")}
    summary = json.loads((run / "summary.json").read_text())
    return {
        "test_accuracy": summary["test_accuracy"],  # a quantized run's: the int8 model's
        "size_kb": cost["file_bytes"] / 1024,
        "parameters": cost["parameters"],
        "nonzero_parameters": cost["nonzero_parameters"],
        "latency_b1_ms": latency["batch_1"],
        "latency_b256_ms": latency["batch_256"],
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
    if "int8 QAT + KD" in rows:
        pairs.append(paired(rows, "int8 QAT + KD", "int8 QAT (fine-tune)"))
        pairs.append(paired(rows, "int8 QAT (fine-tune)", "int8 PTQ"))
    return pairs


def markdown(result: dict) -> list[str]:
    env, runs = result["environment"], result["runs"]
    lines = [
        f"# Pruning + distillation on {result['data']}: accuracy vs size vs latency",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}  ",
        f"Versions: torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']}",
        "",
        result["protocol"],
        "",
        f"This call trained {runs['trained_by_this_call']} run directories and reused {runs['reused']} finished ones "
        "(from earlier calls of the same command, under --runs); its wall time "
        f"{runs['wall_seconds_this_call'] / 60:.1f} min; training time of all rows together "
        f"{runs['train_seconds_all_runs'] / 60:.1f} min. Sizes, parameters and latencies are measured by this call.",
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
    lines += ["", *in_short(result), ""]
    return lines


def in_short(result: dict) -> list[str]:
    """The answer in words, from the paired comparisons and the measured sizes and latencies."""
    rows, by_row = result["rows"], {c["row"]: c for c in result["comparisons"]}
    lines = ["## In short", ""]
    for rec in ("KD", "PTLoss"):
        won = [
            f"{round(100 * s)} %"
            for s in SPARSITIES
            if by_row[f"pruned {round(100 * s)} % + {rec}"]["verdict"] == "beats"
        ]
        lost = [
            f"{round(100 * s)} %"
            for s in SPARSITIES
            if by_row[f"pruned {round(100 * s)} % + {rec}"]["verdict"] == "is worse than"
        ]
        levels = ", ".join(f"{round(100 * s)} %" for s in SPARSITIES)
        verdict = f"at {', '.join(won)}" if won else "at none of them"
        rest = f"; it is worse at {', '.join(lost)}" if lost else ""
        lines.append(
            f"- After structured pruning to {levels}: {rec} recovery beats plain fine-tuning {verdict}{rest}; "
            "every other paired difference is within two standard errors of zero."
        )
    if "int8 QAT + KD" in by_row:
        c = by_row["int8 QAT + KD"]
        lines.append(
            f"- After int8 quantization, QAT + KD {c['verdict']} QAT with cross-entropy "
            f"({100 * c['mean']:+.2f} points); test accuracy of int8 PTQ (no training) "
            f"{rows['int8 PTQ']['test_accuracy']['mean']:.4f}, of the float model "
            f"{rows['from scratch (float)']['test_accuracy']['mean']:.4f}."
        )
    base = rows["from scratch (float)"]
    for name in (f"pruned {round(100 * SPARSITIES[-1])} % + fine-tune", "int8 PTQ"):
        if name in rows:
            size, ms = rows[name]["size_kb"]["mean"], rows[name]["latency_b256_ms"]["mean"]
            float_ms = base["latency_b256_ms"]["mean"]
            lines.append(
                f"- {name}: {base['size_kb']['mean'] / size:.1f}x smaller on disk than the float model; latency at "
                f"batch 256 {ms:.3f} ms vs {float_ms:.3f} ms ({float_ms / ms:.2f}x the float model's speed)."
            )
    return lines


STYLE = {  # row family -> (colour, legend label)
    "scratch": ("black", "from scratch (float)"),
    "fine-tune": ("tab:blue", "pruned + fine-tune"),
    "KD": ("tab:orange", "pruned + KD"),
    "PTLoss": ("tab:green", "pruned + PTLoss"),
    "int8 PTQ": ("tab:purple", "int8 PTQ"),
    "int8 QAT (fine-tune)": ("tab:brown", "int8 QAT (fine-tune)"),
    "int8 QAT + KD": ("tab:red", "int8 QAT + KD"),
}
MARKERS = {"50": "o", "75": "s", "90": "^"}


def family(row: str) -> str:
    if row in STYLE:
        return row
    return next((f for f in RECOVERY if row.startswith("pruned") and row.endswith(f)), "scratch")


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
        kind = family(name)
        colour, label = STYLE[kind]
        marker = next((m for pct, m in MARKERS.items() if f"pruned {pct} %" in name), "D" if "int8" in name else "*")
        for ax, (key, xlabel) in zip(axes, panels, strict=True):
            mean, std = r[key]["mean"], r[key]["std"]
            ax.errorbar(
                mean,
                r["test_accuracy"]["mean"],
                xerr=[[min(std, 0.9 * mean)], [std]],  # a log axis cannot show mean - std <= 0
                yerr=r["test_accuracy"]["std"],
                fmt=marker,
                color=colour,
                ms=7,
                capsize=3,
                label=label if kind not in seen else None,
            )
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3, which="both")
        seen.add(kind)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8, title="marker: o 50 %, s 75 %, ^ 90 % pruned, D int8", title_fontsize=7)
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
    repeats = 10 if quick else 50
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    bench = Bench(args)
    per_row: dict[str, list[dict]] = {}
    for seed in args.seeds:
        source = bench.scratch(seed)
        per_row.setdefault("from scratch (float)", []).append(measure(source, repeats))
        for s in SPARSITIES:
            prune = {"prune": {"kind": "structured", "sparsity": s}}
            for recovery, method in RECOVERY.items():
                run = bench.compressed(seed, source, f"pruned{round(100 * s)}-{recovery}", prune, method)
                per_row.setdefault(f"pruned {round(100 * s)} % + {recovery}", []).append(measure(run, repeats))
        for row, (tag, quantize, method) in QUANTIZED.items():
            run = bench.compressed(seed, source, tag, {"quantize": quantize}, method)
            per_row.setdefault(row, []).append(measure(run, repeats))
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
            f"then {args.recover_epochs} recovery epochs with the row's method (fine-tune = CE; KD T = 4, alpha 0.1, "
            f"beta 0.9; PTLoss with epsilon: auto, proxy-selected on the validation split). int8 rows: torchao "
            f"int8_dynamic (int8 weights per channel, int8 activations per row) of every Linear of the unpruned model "
            f"with `kdlab compress` (compress.quantize): PTQ without training, QAT = fake-quantized training for "
            f"{args.recover_epochs} epochs with CE or KD, then conversion; their accuracy is the int8 model's. KD "
            f"teacher for every row: the unpruned float model of the same seed (the issue's unpruned, full-precision "
            f"teacher; it exists already, so distillation costs no extra training). Seeds {args.seeds}; mean ± std "
            f"over seeds; last-epoch test accuracy; size = the model.safetensors file on disk; latency = "
            f"`kdlab.eval.footprint` (median of up to {repeats} forward passes after 3 warm-up ones, at most 2 s per "
            f"batch size; the lowest of 3 such medians) with {args.threads} torch thread(s), on a 2-core machine "
            "shared with other jobs: latencies below ~0.1 ms are dominated by Python overhead and noise."
        ),
        "runs": {
            "trained_by_this_call": bench.trained,
            "reused": bench.reused,
            "wall_seconds_this_call": time.perf_counter() - start,
            "train_seconds_all_runs": sum(sum(r["train_seconds"]["per_seed"]) for r in rows.values()),
        },
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
