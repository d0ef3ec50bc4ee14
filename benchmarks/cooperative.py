"""Cooperative distillation (task: cooperative) between a decision tree, a kNN and an MLP on two real data sets.

    python benchmarks/cooperative.py [--seeds 0 1 2 3 4] [--rounds 3] [--threads 1] [--settings ...]
    python benchmarks/cooperative.py --quick     # satellite only, 1 seed, 1 round: checks the script

The experiment of shared/methods.md §3(d) on real tabular data. Three learners of different kinds — sklearn
DecisionTreeClassifier(min_samples_leaf=5), KNeighborsClassifier(n_neighbors=7), kdlab MLP (hidden [128], 30
epochs, batch 64, the train section's default optimizer: SGD lr 0.05, Nesterov momentum 0.9, weight decay 5e-4)
— get disjoint, skewed shares of the pooled training rows: each learner has weight 1 on its "own" classes and
0.05 on the others (it is starved of them). Settings:

- ``satellite``: Statlog Satellite (6,435 rows, 36 features, 6 classes; Debian's r-cran-mlbench
  ``data/Satellite.rda``, read with the ``rdata`` package — a benchmark-only dependency); all features.
- ``satellite-features``: the same, each learner seeing its own seeded random 70 % of the 36 columns.
- ``fmnist-pca``: Fashion-MNIST (/usr/share/datasets/fashion-mnist), a seeded 8,000-row subsample of train and
  2,000 of test, reduced by PCA (fit on the subsampled train rows) to 40 dimensions.
- ``fmnist-pca-features``: the same, each learner seeing its own seeded random 70 % of the 40 components.

The pooled evaluation set is 20 % of the pooled training rows (stratified, by the seed); the test split is fixed
(20 % of Satellite by a fixed seed; the Fashion-MNIST test subsample). Rows per learner: alone, after 1 round,
after 3 rounds, KD from the best peer (soft targets on own rows + the pool for the MLP, pseudo-labels for the
tree and kNN), own rows + the labelled pool (a control: the labels cooperation uses), pooled (upper bound).
Counterfactuals: alpha 0.5, l1 1e-4, tolerance 0.01, at most 300 per ordered pair and round; gradient search 300
Adam steps (lr 0.05); swarm 24 particles, 40 iterations. Mean ± std over seeds; paired differences per seed.
Results: benchmarks/results/cooperative.{json,md} (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import torch
from _env import environment

from kdlab.api import cooperative

ROOT = Path(__file__).resolve().parent
SATELLITE = Path("/usr/lib/R/site-library/mlbench/data/Satellite.rda")
FMNIST = Path("/usr/share/datasets/fashion-mnist")
STAGES = ("alone", "round_1", "round_3", "kd_best_peer", "own_plus_pool", "pooled")
OWN = {  # each learner's own classes (the rest get weight 0.05)
    "satellite": {"tree": [0, 1], "knn": [2, 3], "mlp": [4, 5]},
    "fmnist-pca": {"tree": [0, 1, 2], "knn": [3, 4, 5], "mlp": [6, 7, 8, 9]},
}


def satellite_npz(work: Path) -> Path:
    """Satellite.rda → an .npz with a fixed stratified 20 % test split (seed 0, independent of the run seed)."""
    import rdata
    from sklearn.model_selection import train_test_split

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = rdata.read_rda(str(SATELLITE))["Satellite"]
    names = sorted(set(frame["classes"].astype(str)))
    y = np.array([names.index(str(c)) for c in frame["classes"]], dtype=np.int64)
    x = frame.drop(columns=["classes"]).to_numpy(dtype=np.float64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    path = work / "satellite.npz"
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, class_names=np.array(names))
    return path


def fmnist_npz(work: Path) -> Path:
    from sklearn.decomposition import PCA

    from kdlab.data import read_idx

    rng = np.random.default_rng(0)
    x_tr = read_idx(FMNIST / "train-images-idx3-ubyte.gz", ndim=3).reshape(-1, 784) / 255.0
    y_tr = read_idx(FMNIST / "train-labels-idx1-ubyte.gz", ndim=1).astype(np.int64)
    x_te = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz", ndim=3).reshape(-1, 784) / 255.0
    y_te = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz", ndim=1).astype(np.int64)
    tr, te = rng.choice(len(y_tr), 8000, replace=False), rng.choice(len(y_te), 2000, replace=False)
    pca = PCA(n_components=40, random_state=0).fit(x_tr[tr])
    path = work / "fmnist_pca.npz"
    np.savez(path, x_train=pca.transform(x_tr[tr]), y_train=y_tr[tr], x_test=pca.transform(x_te[te]), y_test=y_te[te])
    return path


def config(setting: str, npz: Path, seed: int, rounds: int, threads: int, out: Path) -> dict[str, Any]:
    data = "fmnist-pca" if setting.startswith("fmnist") else "satellite"
    num_classes = 10 if data == "fmnist-pca" else 6
    width = 40 if data == "fmnist-pca" else 36
    rng = np.random.default_rng(1000 + seed)
    kinds = {
        "tree": {"estimator": "sklearn.tree.DecisionTreeClassifier", "kwargs": {"min_samples_leaf": 5}},
        "knn": {"estimator": "sklearn.neighbors.KNeighborsClassifier", "kwargs": {"n_neighbors": 7}},
        "mlp": {"model": {"name": "mlp", "kwargs": {"hidden": [128]}}},
    }
    learners = []
    for name, spec in kinds.items():
        weights = {c: (1.0 if c in OWN[data][name] else 0.05) for c in range(num_classes)}
        features = None
        if setting.endswith("-features"):
            features = sorted(rng.choice(width, round(0.7 * width), replace=False).tolist())
        learners.append({"name": name, **spec, "class_weights": weights, "features": features})
    return {
        "task": "cooperative",
        "name": f"{setting}-seed{seed}",
        "out": str(out),
        "seed": seed,
        "rounds": rounds,
        "data": {"name": "npz", "path": str(npz), "eval_fraction": 0.2},
        "train": {"epochs": 30, "batch_size": 64, "threads": threads, "progress": False},
        "counterfactual": {"max_per_pair": 300},
        "learners": learners,
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def starved_gain(summary: dict, data: str, name: str, stage: str) -> tuple[float, float]:
    """Mean per-class test accuracy change (alone → stage) on the learner's starved classes and on its own."""
    per = summary["per_class"][name]
    own = OWN[data][name]
    gains = [b - a for a, b in zip(per["alone"], per[stage], strict=True)]
    starved = [g for c, g in enumerate(gains) if c not in own]
    return statistics.mean(starved), statistics.mean([gains[c] for c in own])


def report(results: dict[str, list[dict]], meta: dict[str, Any], rounds: int) -> str:
    last = f"round_{rounds}"
    stages = [s for s in STAGES if s != "round_3" or rounds >= 3]
    if rounds not in (1, 3):
        stages.insert(2, last)
    lines = [
        "# Cooperative distillation: tree, kNN and MLP teach each other (task: cooperative)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']} (set: torch.set_num_threads({meta['threads']}))  ",
        f"Load average (1, 5, 15 min) at start {meta['load_start']}, at end {meta['load_end']}: **measured on a "
        "loaded machine** (other work shared these cores): the times below are indicative only.  ",
        f"Versions: python {meta['python']}, torch {meta['torch']}, kdlab {meta['kdlab']}, scikit-learn "
        f"{meta['sklearn']}, pyswarms {meta['pyswarms']}; {meta['date_utc']} UTC; this invocation "
        f"{meta['minutes']:.1f} min  ",
        f"Seeds {meta['seeds']}; test accuracy, mean ± std over seeds (the MLP: last epoch). Setup: the script's "
        "docstring (skewed disjoint shares, weight 1 on own classes and 0.05 on the rest).",
        "",
    ]
    for setting, runs in results.items():
        data = "fmnist-pca" if setting.startswith("fmnist") else "satellite"
        lines += [f"## {setting}", "", "| learner | " + " | ".join(stages) + " |", "|---" + "|---:" * len(stages) + "|"]
        for name in runs[0]["learners"]:
            cells = [mean_std([r["learners"][name][s] for r in runs]) for s in stages]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "Paired differences per seed (mean ± std):", ""]
        lines += ["| learner | round 1 − alone | round 1 → last round | last round − KD best peer | "
                  "starved classes, round 1 − alone | own classes, round 1 − alone |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name in runs[0]["learners"]:
            d1 = [r["learners"][name]["round_1"] - r["learners"][name]["alone"] for r in runs]
            dl = [r["learners"][name][last] - r["learners"][name]["round_1"] for r in runs]
            dk = [r["learners"][name][last] - r["learners"][name]["kd_best_peer"] for r in runs]
            gains = [starved_gain(r, data, name, "round_1") for r in runs]
            lines.append(f"| {name} | {mean_std(d1)} | {mean_std(dl)} | {mean_std(dk)} | "
                         f"{mean_std([g[0] for g in gains])} | {mean_std([g[1] for g in gains])} |")  # fmt: skip
        lines += ["", "Counterfactuals (all rounds, summed over seeds) by teacher kind:", ""]
        lines += ["| teacher | tried | accepted | unmoved | failed | reached tolerance | per second (loaded) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for kind in ("tree", "knn", "mlp"):
            recs = [p for r in runs for p in r["pairs"] if p["teacher_kind"] == kind]
            tot = {k: sum(p[k] for p in recs) for k in ("tried", "accepted", "unmoved", "failed", "reached_tolerance")}
            secs = sum(p["seconds"] for p in recs)
            rate = f"{tot['tried'] / secs:.0f}" if secs else "–"
            lines.append(f"| {kind} | {tot['tried']} | {tot['accepted']} | {tot['unmoved']} | {tot['failed']} | "
                         f"{tot['reached_tolerance']} | {rate} |")  # fmt: skip
        accepted = [sum(p["accepted"] for p in r["pairs"] if p["round"] == k) for r in runs for k in (1, rounds)]
        lines += ["", f"Instances accepted per run: round 1 {accepted[0::2]}, round {rounds} {accepted[1::2]}.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--settings", nargs="+", default=["satellite", "satellite-features", "fmnist-pca", "fmnist-pca-features"]
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.settings = [0], 1, ["satellite"]
    torch.set_num_threads(args.threads)
    out_dir = ROOT / "results" / ("quick" if args.quick else "")
    work = Path(os.environ.get("KDLAB_BENCH_WORK", "/tmp/kdlab-cooperative-bench"))
    work.mkdir(parents=True, exist_ok=True)
    start, load_start = time.time(), [round(v, 2) for v in os.getloadavg()]
    files = {"satellite": satellite_npz(work)}
    if any(s.startswith("fmnist") for s in args.settings):
        files["fmnist-pca"] = fmnist_npz(work)
    results: dict[str, list[dict]] = {}
    for setting in args.settings:
        data = "fmnist-pca" if setting.startswith("fmnist") else "satellite"
        for seed in args.seeds:
            cfg = config(setting, files[data], seed, args.rounds, args.threads, work / "runs" / f"{setting}-{seed}")
            t0 = time.time()
            summary = cooperative(cfg, overwrite=True)
            results.setdefault(setting, []).append(summary)
            print(f"{setting} seed {seed}: {time.time() - t0:.0f} s", {n: {s: round(v, 4) for s, v in st.items()}
                  for n, st in summary["learners"].items()}, flush=True)  # fmt: skip
    import pyswarms
    import sklearn

    meta = {
        **environment(), "threads": args.threads, "seeds": args.seeds, "load_start": load_start,
        "load_end": [round(v, 2) for v in os.getloadavg()], "minutes": (time.time() - start) / 60,
        "sklearn": sklearn.__version__, "pyswarms": pyswarms.__version__,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cooperative.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out_dir / "cooperative.md").write_text(report(results, meta, args.rounds))
    print((out_dir / "cooperative.md").read_text())


if __name__ == "__main__":
    main()
