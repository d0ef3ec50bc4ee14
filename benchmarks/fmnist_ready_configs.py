"""Run the ready Fashion-MNIST configs: the teacher once, then CE and KD students over 3 seeds.

    python benchmarks/fmnist_ready_configs.py [--seeds 0 1 2] [--runs runs/fmnist-bench]

Uses configs/fashion_mnist/*.yaml unchanged except for `out` and `seed`; the teacher's logits are cached
once (`kdlab cache-logits`) and the KD students read them. Test accuracy is the last epoch's model.
Results: benchmarks/results/fmnist_ready_configs.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab.api import cache_logits, distill, train
from kdlab.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "fashion_mnist"
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "fmnist-bench")
    parser.add_argument("--out", type=Path, default=RESULTS / "fmnist_ready_configs")
    args = parser.parse_args()
    started = time.perf_counter()
    teacher_dir = args.runs / "teacher"
    if (teacher_dir / "summary.json").exists():
        import json

        teacher = json.loads((teacher_dir / "summary.json").read_text())
    else:
        teacher = train(CONFIGS / "teacher.yaml", [f"out={teacher_dir}"], overwrite=True)
    print(f"teacher test accuracy {teacher['test_accuracy']:.4f}", flush=True)
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for student in ("mlp", "cnn"):
            for method in ("ce", "kd"):
                name = f"student-{student}-{method}"
                overrides = [
                    f"out={args.runs / f'{name}-seed{seed}'}",
                    f"seed={seed}",
                    f"teacher.run={teacher_dir}",
                    f"cache.path={args.runs / f'logits-seed{seed}.safetensors'}",
                ]
                if method == "kd" and not (args.runs / f"logits-seed{seed}.safetensors").exists():
                    cache_logits(CONFIGS / f"{name}.yaml", overrides)
                summary = distill(CONFIGS / f"{name}.yaml", overrides, overwrite=True)
                rows.setdefault(name, []).append(summary)
                print(f"seed {seed} {name}: test accuracy {summary['test_accuracy']:.4f}", flush=True)
    table = {}
    for name, summaries in rows.items():
        accs = [s["test_accuracy"] for s in summaries]
        table[name] = {
            "mean": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "runs": accs,
            "train_seconds": statistics.mean(s["train_seconds"] for s in summaries),
        }
    result = {
        "environment": environment(),
        "seeds": args.seeds,
        "teacher_test_accuracy": teacher["test_accuracy"],
        "teacher_train_seconds": teacher["train_seconds"],
        "students": table,
        "total_seconds": time.perf_counter() - started,
    }
    env = result["environment"]
    lines = [
        "# Fashion-MNIST with the ready configs (configs/fashion_mnist/)",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC  ",
        f"Teacher (CNN, seed 0): test accuracy **{teacher['test_accuracy']:.4f}** "
        f"({teacher['train_seconds'] / 60:.1f} min). Students: last-epoch test accuracy, mean ± std over seeds "
        f"{args.seeds}.",
        "",
        "| student | method | test accuracy | per seed | train s |",
        "|---|---|---:|---|---:|",
    ]
    for name, s in table.items():
        _, model, method = name.split("-")
        per_seed = ", ".join(f"{a:.4f}" for a in s["runs"])
        lines.append(
            f"| {model} | {method} | {s['mean']:.4f} ± {s['std']:.4f} | {per_seed} | {s['train_seconds']:.0f} |"
        )
    for model in ("mlp", "cnn"):
        gain = table[f"student-{model}-kd"]["mean"] - table[f"student-{model}-ce"]["mean"]
        lines.append(f"\nKD − CE for the {model} student: {gain * 100:+.2f} points.")
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
