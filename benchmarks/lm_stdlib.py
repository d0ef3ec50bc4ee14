"""Distilling a small code language model offline: Python's own standard library as the corpus.

    python benchmarks/lm_stdlib.py             # BPE 2048, teacher 4x128, students 2x64, 3 seeds (~20 min, 1 core)
    python benchmarks/lm_stdlib.py --quick     # a smoke run: fewer tokens, 1 seed (results/quick/)
    python benchmarks/lm_stdlib.py --study sparse   # + KD+CE, top-64+CE and top-256 rows (same teacher)
    python benchmarks/lm_stdlib.py --study strong   # a stronger teacher (1 epoch on ~0.8 M tokens), dense vs top-64
    python benchmarks/lm_stdlib.py --study tail     # top-64 + tail samples per token (unbiased KD): 16 and the
                                                    # default 54 (299 bytes), vs dense
    python benchmarks/lm_stdlib.py --study tail-strong   # the same with the stronger teacher
    python benchmarks/lm_stdlib.py --study tail-draws    # strong teacher, 48 / 64 draws: is the gap variance?
    python benchmarks/lm_stdlib.py --study tail-draws-weak   # the same with the main study's teacher
    python benchmarks/lm_stdlib.py --study budget        # strong teacher, top-48 + 48 or top-32 + 80 draws
    python benchmarks/lm_stdlib.py --study budget-weak   # the same with the main study's teacher

Why this corpus: no model or data set can be downloaded here, and the standard library's ``*.py`` sources are
on every machine with Python (``sysconfig.get_paths()["stdlib"]``), real code written by many people, with a
licence that allows it. The file list is fixed: every ``*.py`` under the stdlib directory, sorted, without
``site-packages`` and the test suites (``test``/``tests``/``idle_test`` directories); file i goes to val when
i % 40 == 1, to test when i % 40 == 2, else to train (split by file, so no file is in two splits). The val/test
files are taken in order up to a token budget, the train files in a seeded shuffled order up to another.

Steps, all through the kdlab API with ``task: causal_lm``: a byte-level BPE (``--vocab`` tokens) trained with
``tokenizers`` on the train files; a Llama-style teacher trained with cross-entropy (``kdlab train``); its top-64
cache with its default tail samples (``kdlab cache-logits``); then per seed five students of the same smaller
architecture, identical training budget: SFT only (``ce``), KD (T = 1, live teacher), PTLoss (epsilon chosen by
the proxy teacher on validation tokens: ``epsilon: auto``), KD from the k = 64 cache with its rest bucket only
and KD from the same cache with its tail samples. Reported: test perplexity, token
accuracy and top-1 agreement with the teacher (mean ± std over seeds, last epoch) and the sparse-vs-dense gap.
Results: benchmarks/results/lm_stdlib.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab.api import cache_logits, distill, train
from kdlab.config import dump_config, load_config
from kdlab.data.text import load_tokenizer, read_documents, train_bpe
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.tasks.causal_lm_cache import describe_cache
from kdlab.teacher.logit_cache import CacheError
from kdlab.teacher.sparse_cache import SparseLogitCache, default_tail_samples

RESULTS = Path(__file__).resolve().parent / "results"
EXCLUDED = {"site-packages", "test", "tests", "idle_test"}
# name: (method, k of the sparse cache it trains from or None for the live teacher[, tail samples used: a count, or
# None for cache-logits' default, as many as keep a token under 300 bytes])
ROWS = {
    "sft": ({"name": "ce"}, None),
    "kd": ({"name": "kd", "temperature": 1.0}, None),
    # the proxy solve costs ~10 ms per token and candidate at 2048 classes on this CPU: 16 x 256, once (seed 0)
    "ptloss": (
        {"name": "ptloss", "temperature": 1.0, "epsilon": "auto", "candidates": 16, "selection_tokens": 256},
        None,
    ),
    "kd_sparse64": ({"name": "kd", "temperature": 1.0}, 64),
    # --study sparse: does the next-token CE (alpha) or a larger k close the sparse-vs-dense gap?
    "kd+ce": ({"name": "kd", "temperature": 1.0, "alpha": 0.5}, None),
    "kd_sparse64+ce": ({"name": "kd", "temperature": 1.0, "alpha": 0.5}, 64),
    "kd_sparse256": ({"name": "kd", "temperature": 1.0}, 256),
    # --study tail / tail-strong: the top-64 cache plus classes drawn per token from the teacher's tail
    "kd_sparse64_tail": ({"name": "kd", "temperature": 1.0}, 64, None),
    "kd_sparse64_tail+ce": ({"name": "kd", "temperature": 1.0, "alpha": 0.5}, 64, None),
    "kd_sparse64_tail16": ({"name": "kd", "temperature": 1.0}, 64, 16),
    # --study tail: PTLoss from the cache, epsilon chosen by the proxy teacher on the k + 1 buckets of val tokens
    "ptloss_sparse64_tail": (
        {"name": "ptloss", "temperature": 1.0, "epsilon": "auto", "candidates": 16, "selection_tokens": 256},
        64,
        None,
    ),
    # --study tail-draws (strong teacher): is the remaining KD gap the variance of 16 draws? 64 draws (over budget)
    "kd_sparse64_tail64": ({"name": "kd", "temperature": 1.0}, 64, 64),
    "kd_sparse64_tail48": ({"name": "kd", "temperature": 1.0}, 64, 48),
    # --study budget (strong teacher): ~300 bytes per token spent on fewer top classes and more draws
    "kd_sparse48_tail48": ({"name": "kd", "temperature": 1.0}, 48, 48),
    "kd_sparse32_tail80": ({"name": "kd", "temperature": 1.0}, 32, 80),
}
STUDIES = {
    "main": ["sft", "kd", "ptloss", "kd_sparse64", "kd_sparse64_tail"],
    "sparse": ["kd+ce", "kd_sparse64+ce", "kd_sparse256"],
    # --study strong: the same students, but the teacher trained on ~8x more tokens (issue 11: does a teacher
    # that leaves less mass outside its top 64 close the sparse-vs-dense gap?)
    "strong": ["kd", "kd_sparse64", "kd+ce", "kd_sparse64+ce"],
    # dense rows: main's and sparse's
    "tail": ["kd_sparse64_tail16", "kd_sparse64_tail", "kd_sparse64_tail+ce", "ptloss_sparse64_tail"],
    "tail-strong": ["kd_sparse64_tail16", "kd_sparse64_tail", "kd_sparse64_tail+ce"],  # dense rows: strong's
    "tail-draws": ["kd_sparse64_tail48", "kd_sparse64_tail64"],
    "tail-draws-weak": ["kd_sparse64_tail48", "kd_sparse64_tail64"],  # the same with the main study's teacher
    "budget": ["kd_sparse48_tail48", "kd_sparse32_tail80"],
    "budget-weak": ["kd_sparse48_tail48", "kd_sparse32_tail80"],  # the same with the main study's teacher
}
DENSE_OF = {
    "kd_sparse64": "kd",
    "kd_sparse64+ce": "kd+ce",
    "kd_sparse256": "kd",
    "kd_sparse64_tail": "kd",
    "kd_sparse64_tail+ce": "kd+ce",
    "ptloss_sparse64_tail": "ptloss",
    "kd_sparse64_tail16": "kd",
    "kd_sparse64_tail64": "kd",
    "kd_sparse64_tail48": "kd",
    "kd_sparse48_tail48": "kd",
    "kd_sparse32_tail80": "kd",
}
DENSE_RESULTS = ("lm_stdlib.json", "lm_stdlib_sparse.json")  # where a study finds the dense rows it did not run


def cache_key(row: str) -> tuple[int, int | None] | None:
    """(k, tail samples or None for the default) of the cache a row trains from; rest-bucket rows read the default
    cache without its samples."""
    _, k, *tail = ROWS[row]
    return None if k is None else (k, tail[0] if tail else None)


def cache_name(k: int, draws: int | None) -> str:
    return f"teacher-cache-k{k}" + ("" if draws is None else f"-s{draws}")


def cache_is_current(directory: Path, draws: int) -> bool:
    """A cache of this kdlab's format with these tail samples (a distillation run re-checks its fingerprint)."""
    try:
        return (directory / "test").is_dir() and SparseLogitCache(directory / "train").stored_tail_samples == draws
    except CacheError:  # an older format
        return False


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(root.rglob("*.py")) if not EXCLUDED & set(p.relative_to(root).parts[:-1])]


def take(files: list[Path], tokenizer, budget: int) -> tuple[list[str], int]:
    """Whole files, in the given order, until ``budget`` tokens are reached."""
    chosen, tokens = [], 0
    for path in files:
        if tokens >= budget:
            break
        n = len(tokenizer.encode_batch(read_documents([path]))[0])
        if n:
            chosen.append(str(path))
            tokens += n
    return chosen, tokens


def finished(run: Path, cfg: dict) -> bool:
    """A complete run directory made from exactly this config."""
    if not (run / "summary.json").is_file():
        return False
    return (run / "config.yaml").read_text() == dump_config(load_config(cfg))


def model_kwargs(layers: int, hidden: int) -> dict:
    heads = max(hidden // 32, 1)
    return {
        "architecture": "llama",
        "hidden_size": hidden,
        "intermediate_size": hidden * 8 // 3 // 8 * 8,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
    }


def mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--train-tokens", type=int, default=100_000)
    parser.add_argument("--eval-tokens", type=int, default=12_000)
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default 3 (1 with --study strong)")
    parser.add_argument(
        "--teacher-train-tokens",
        type=int,
        default=None,
        help="the teacher's train tokens: the students' files and more (default: --train-tokens; 800k with strong)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("runs/lm_stdlib"))
    parser.add_argument(
        "--study",
        choices=sorted(STUDIES),
        default="main",
        help="sparse: the extra sparse rows; strong: a teacher trained on more tokens (its own work directory)",
    )
    args = parser.parse_args()
    strong = args.study in ("strong", "tail-strong", "tail-draws", "budget")
    if args.teacher_epochs is None:
        args.teacher_epochs = 1 if strong else 3
    if args.teacher_train_tokens is None:
        args.teacher_train_tokens = 800_000 if strong else args.train_tokens
    if strong and args.work == Path("runs/lm_stdlib"):  # another teacher: never reuse the main study's runs
        args.work = Path("runs/lm_stdlib-strong")
    if args.quick:
        args.train_tokens, args.eval_tokens, args.seeds, args.teacher_epochs = 20_000, 4_000, 1, 1
        args.teacher_train_tokens = 40_000 if strong else args.train_tokens
        args.work = args.work.with_name(args.work.name + "-quick")
    out = (
        RESULTS / ("quick" if args.quick else "") / ("lm_stdlib" if args.study == "main" else f"lm_stdlib_{args.study}")
    )
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)

    files = stdlib_files()
    split_of = {i: "val" if i % 40 == 1 else "test" if i % 40 == 2 else "train" for i in range(len(files))}
    by_split = {s: [f for i, f in enumerate(files) if split_of[i] == s] for s in ("train", "val", "test")}
    tokenizer_file = work / "tokenizer.json"
    train_bpe(by_split["train"], args.vocab, tokenizer_file)  # deterministic: same files, same merges
    tokenizer = load_tokenizer(str(tokenizer_file))
    corpus_tokens = {s: sum(len(x) for x in tokenizer.encode_batch(read_documents(fs))) for s, fs in by_split.items()}
    shuffled = by_split["train"][:]
    random.Random(0).shuffle(shuffled)
    chosen = {"train": take(shuffled, tokenizer, args.train_tokens)}
    # the same shuffled order: the teacher's files start with the students' files
    teacher_train = take(shuffled, tokenizer, max(args.teacher_train_tokens, args.train_tokens))
    for split in ("val", "test"):
        chosen[split] = take(by_split[split], tokenizer, args.eval_tokens)
    print(
        f"stdlib: {len(files)} files, {sum(corpus_tokens.values()):,} BPE tokens; used: "
        + ", ".join(f"{s} {len(c[0])} files / {c[1]:,} tokens" for s, c in chosen.items())
        + f"; teacher train {len(teacher_train[0])} files / {teacher_train[1]:,} tokens",
        flush=True,
    )

    def config(name: str, layers: int, hidden: int, epochs: int, seed: int, train_files=None, **extra) -> dict:
        return {
            "name": name,
            "task": "causal_lm",
            "out": str(work / name),
            "seed": seed,
            "data": {
                "name": "text",
                **{s: chosen[s][0] for s in ("train", "val", "test")},
                **({"train": train_files} if train_files else {}),
                "tokenizer": str(tokenizer_file),
                "block_size": args.block,
            },
            "model": {"name": "hf_causal_lm", "kwargs": model_kwargs(layers, hidden)},
            "train": {
                "epochs": epochs,
                "batch_size": 16,
                "progress": False,
                "log_every_steps": 25,
                "max_grad_norm": 1.0,
                "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01, "betas": [0.9, 0.95]},
                "scheduler": {"name": "cosine", "warmup_epochs": 0.05, "min_lr_ratio": 0.1},
            },
            **extra,
        }

    teacher_cfg = config("teacher", 4, 128, args.teacher_epochs, 0, train_files=teacher_train[0])
    teacher_dir = work / "teacher"
    if finished(teacher_dir, teacher_cfg):  # the same teacher (same config, same data) as a previous invocation
        teacher_summary = json.loads((teacher_dir / "summary.json").read_text())
        print("teacher: reusing the finished run in", teacher_dir)
    else:
        teacher_summary = train(teacher_cfg, overwrite=True)
    print(f"teacher: test perplexity {teacher_summary['test']['perplexity']:.3f}", flush=True)
    caches = {}
    for k, draws in sorted({cache_key(row) for row in STUDIES[args.study]} - {None}, key=str):
        cache_dir = work / cache_name(k, draws)
        cache_start = time.perf_counter()
        # a cache of an older format or with other samples is made again (the same top-k rows, the same draws for
        # the same count; the bucket rows read it without them)
        if not cache_is_current(cache_dir, default_tail_samples(k, args.vocab) if draws is None else draws):
            cache = {"topk": k, "tail_samples": draws, "path": str(cache_dir)}
            cache_logits(config("cache", 2, 64, 1, 0, teacher={"run": str(teacher_dir)}, cache=cache))
        rest = SparseLogitCache(cache_dir / "test").read().log_rest.exp()
        caches[cache_name(k, draws)] = {
            "description": describe_cache(cache_dir),
            "seconds": time.perf_counter() - cache_start,
            "test_rest_mass_mean": float(rest.mean()),
        }
        print(f"cache {cache_dir.name}: {describe_cache(cache_dir)}, mean rest mass {float(rest.mean()):.3f}")
    runs: dict[str, list[dict]] = {row: [] for row in STUDIES[args.study]}
    for seed in range(args.seeds):
        for row in runs:
            method, k, *tail = ROWS[row]
            extra = {"teacher": {"run": str(teacher_dir)}, "method": method}
            if method.get("epsilon") == "auto" and seed > 0:  # the selection depends on teacher and val tokens only:
                extra["method"] = {  # reuse seed 0's
                    "name": "ptloss",
                    "temperature": 1.0,
                    "epsilon": runs[row][0]["selection"]["epsilon"],
                }
            if k is not None:
                path = str(work / cache_name(*cache_key(row)))
                # tail_samples None: use what the cache holds; 0: the rest-bucket loss
                extra["cache"] = {"use": "require", "path": path, "topk": k, "tail_samples": tail[0] if tail else 0}
            else:
                extra["cache"] = {"use": "never"}
            summary = distill(config(f"{row}-seed{seed}", 2, 64, 1, seed, **extra), overwrite=True)
            selection = work / f"{row}-seed{seed}" / "ptloss_selection.json"
            if selection.is_file():
                chosen_sel = json.loads(selection.read_text())
                summary["selection"] = {"epsilon": chosen_sel["epsilon"], "index": chosen_sel["chosen_index"]}
            runs[row].append(summary)
            t = summary["test"]
            print(
                f"seed {seed} {row:>12}: test ppl {t['perplexity']:.3f} acc {t['accuracy']:.4f} "
                f"agree {t['agreement'] if 'agreement' in t else float('nan'):.4f} ({summary['wall_seconds']:.0f} s)",
                flush=True,
            )
    table = {}
    for row, summaries in runs.items():
        table[row] = {
            key: mean_std([s["test"][key] for s in summaries if key in s["test"]])
            for key in ("perplexity", "accuracy", "agreement")
            if any(key in s["test"] for s in summaries)
        }
        table[row]["method"] = summaries[0]["method"]
        table[row]["wall_seconds"] = mean_std([s["wall_seconds"] for s in summaries])
    gaps, paired = {}, {}
    for row, dense in DENSE_OF.items():
        if row in table:  # a dense row this study did not run comes from an earlier study's results
            dense_table, dense_runs, source = table, runs, "this study"
            if dense not in table:
                sources = ("lm_stdlib_strong.json",) if strong else DENSE_RESULTS
                found = [(name, json.loads(out.with_name(name).read_text())) for name in sources]
                source, earlier = next((name, r) for name, r in found if dense in r["table"])
                dense_table, dense_runs = earlier["table"], earlier["runs"]
            d = dense_table[dense]["perplexity"]["mean"]
            gaps[f"{row} vs {dense}"] = (table[row]["perplexity"]["mean"] - d) / d
            by_seed = {r["seed"]: r["test"]["perplexity"] for r in dense_runs[dense]}
            per_seed = [
                (s["test"]["perplexity"] - by_seed[s["seed"]]) / by_seed[s["seed"]]
                for s in runs[row]
                if s["seed"] in by_seed
            ]
            paired[f"{row} vs {dense}"] = {
                "dense": dense_table[dense]["perplexity"],
                "source": source,
                "per_seed": per_seed,
            }
    result = {
        "environment": {**environment(), "transformers": teacher_summary["versions"]["transformers"]},
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "corpus": {
            "stdlib": sysconfig.get_paths()["stdlib"],
            "files": {s: len(fs) for s, fs in by_split.items()},
            "bpe_tokens": corpus_tokens,
            "used_tokens": {s: c[1] for s, c in chosen.items()},
            "used_files": {s: len(c[0]) for s, c in chosen.items()},
        },
        "teacher": {
            "model": model_kwargs(4, 128),
            "parameters": teacher_summary["parameters"],
            "test": teacher_summary["test"],
            "val": teacher_summary["val"],
            "train_seconds": teacher_summary["train_seconds"],
            "train_tokens": teacher_train[1],
            "train_files": len(teacher_train[0]),
        },
        "student_model": model_kwargs(2, 64),
        "student_parameters": next(iter(runs.values()))[0]["parameters"],
        "caches": caches,
        "table": table,
        "sparse_vs_dense_perplexity_gap": gaps,
        "sparse_vs_dense_paired": paired,  # the same seed (initialisation, batch order) with either teacher
        "ptloss_selection": {row: [s.get("selection") for s in v] for row, v in runs.items() if v[0].get("selection")},
        "runs": {
            row: [{k: s[k] for k in ("method", "seed", "test", "val", "wall_seconds")} for s in v]
            for row, v in runs.items()
        },
        "total_seconds": time.perf_counter() - start,
    }
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    for name, gap in gaps.items():
        print(f"{name}: test perplexity {gap * 100:+.2f} % (acceptance at k = 64: within 1 %)")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} in {result['total_seconds']:.0f} s")


def markdown(r: dict) -> str:
    env, c, t = r["environment"], r["corpus"], r["teacher"]

    def cell(stats: dict | None, digits: int) -> str:
        return "-" if stats is None else f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"

    seeds = len(next(iter(r["runs"].values())))
    lines = [
        "# Distilling a code LM offline: Python's standard library",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}; device {env['device']}; load average at the end {r['load_avg_1min_end']}  ",
        f"Versions: python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"kdlab {env['kdlab']}; {env['date_utc']} UTC; total {r['total_seconds'] / 60:.1f} min",
        "",
        f"Corpus: {sum(c['files'].values())} stdlib `*.py` files ({c['stdlib']}), split by file "
        f"(train/val/test {c['files']['train']}/{c['files']['val']}/{c['files']['test']} files, "
        f"{c['bpe_tokens']['train']:,}/{c['bpe_tokens']['val']:,}/{c['bpe_tokens']['test']:,} tokens of a byte-level "
        f"BPE with {r['config']['vocab']} tokens trained on the train files). Used (CPU budget): "
        f"{c['used_tokens']['train']:,} train tokens ({c['used_files']['train']} files), "
        f"{c['used_tokens']['val']:,} val and {c['used_tokens']['test']:,} test tokens; "
        f"blocks of {r['config']['block']}.",
        "",
        f"Teacher: Llama {t['model']['num_hidden_layers']} layers × {t['model']['hidden_size']}, "
        f"{t['parameters']:,} parameters, {r['config']['teacher_epochs']} epochs on "
        f"{t.get('train_tokens', c['used_tokens']['train']):,} train tokens ({t['train_seconds'] / 60:.1f} min), "
        "test perplexity "
        f"{t['test']['perplexity']:.3f}, token accuracy {t['test']['accuracy']:.4f}.  ",
        f"Students: Llama {r['student_model']['num_hidden_layers']} layers × {r['student_model']['hidden_size']}, "
        f"{r['student_parameters']:,} parameters, 1 epoch, AdamW 3e-3 cosine, batch 16 blocks; {seeds} seeds "
        "(initialisation and batch order); last-epoch test numbers, mean ± std.  ",
        *(
            f"Sparse cache `{name}`: {c['description']}; mean teacher mass outside the top k on test tokens "
            f"{c['test_rest_mass_mean']:.3f}.  "
            for name, c in r["caches"].items()
        ),
        "",
        "| student | method | test perplexity | token accuracy | top-1 agreement with teacher | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for row, stats in r["table"].items():
        lines.append(
            f"| {row} | `{stats['method']}` | {cell(stats.get('perplexity'), 3)} | {cell(stats.get('accuracy'), 4)} | "
            f"{cell(stats.get('agreement'), 4)} | {stats['wall_seconds']['mean']:.0f} |"
        )
    lines.append("")
    for row, sel in r["ptloss_selection"].items():
        eps = ", ".join(f"{x:+.3f}" for x in sel[0]["epsilon"])
        teacher = "the k + 1 buckets of the cache" if "sparse" in row else "the dense teacher"
        lines.append(
            f"PTLoss epsilon of {row} (proxy teacher from {teacher} on the first 256 validation tokens, 16 "
            f"candidates, L2 score; chosen once, with seed 0, and reused): [{eps}] (candidate {sel[0]['index']}; "
            "candidate 0 is plain KD).  "
        )
    for name, gap in r["sparse_vs_dense_perplexity_gap"].items():
        pair = r.get("sparse_vs_dense_paired", {}).get(name)
        detail = ""
        if pair:
            seeds = ", ".join(f"{x * 100:+.2f}" for x in pair["per_seed"])
            detail = (
                f" Dense {cell(pair['dense'], 3)} ({pair['source']}); per seed, same initialisation and batch "
                f"order: {seeds} %."
            )
        lines.append(
            f"Sparse vs dense, test perplexity, {name}: {gap * 100:+.2f} % relative (acceptance at k = 64: 1 %)."
            f"{detail}  "
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
