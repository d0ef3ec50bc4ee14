"""Where the top-64 student loses perplexity: test tokens whose target is inside vs outside the teacher's top k.

    python benchmarks/lm_sparse_gap.py --work runs/lm_stdlib-strong   # after lm_stdlib.py --study strong, tail-strong

Reads the finished run directories of ``benchmarks/lm_stdlib.py`` (teacher, ``kd-seed*``, ``kd_sparse64-seed*`` and
``kd_sparse64_tail16-seed*`` and ``kd_sparse64_tail-seed*`` (``--study tail-strong``: 16 and the default 54 tail
samples), and the ``+ce`` rows when present) and, on the test split,
splits each student's next-token NLL into the tokens whose target is among the teacher's top k and those outside
it. Reported per student row (mean over seeds): the fraction of tokens in each group, the mean NLL per group, each
group's contribution to log-perplexity (sum of NLL over the group / all tokens), and the student's own probability
mass outside the teacher's top k (the sparse teacher only constrains that mass as one "rest" bucket).

Also checks that float16 storage of the top-k values is not the cause: the sparse KD loss (KL over the k + 1
buckets) of each student computed with float16 and float32 top-k values of the same teacher logits.
Results: benchmarks/results/lm_sparse_gap.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab.config import load_config
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.losses.sparse_teacher import sparse_teacher_from_logits, student_buckets, teacher_bucket_logits
from kdlab.models.hf import load_pretrained
from kdlab.tasks.causal_lm import load_lm_data

RESULTS = Path(__file__).resolve().parent / "results"
# dense, rest bucket only, rest bucket + 16 or 54 tail samples (lm_stdlib.py --study tail-strong); rows not run are
# skipped
ROWS = ["kd", "kd_sparse64", "kd_sparse64_tail16", "kd_sparse64_tail"]
ROWS += ["kd+ce", "kd_sparse64+ce", "kd_sparse64_tail+ce"]


@torch.no_grad()
def logits_of(model, blocks: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """(tokens, V) next-token logits over all blocks (last position of each block dropped)."""
    model.eval()
    out = [
        model(input_ids=blocks[i : i + batch]).logits[:, :-1].float().flatten(0, 1)
        for i in range(0, len(blocks), batch)
    ]
    return torch.cat(out)


def bucket_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, k: int, dtype: torch.dtype) -> float:
    """Mean KL(teacher buckets || student buckets) over tokens, top-k values stored as ``dtype``."""
    sparse = sparse_teacher_from_logits(teacher_logits, k, values_dtype=dtype)
    log_q = torch.log_softmax(teacher_bucket_logits(sparse.values.float(), sparse.log_rest, 1.0), dim=-1)
    log_p, _, _ = student_buckets(student_logits, sparse.indices.long())
    q = log_q.exp()
    return float((q * (log_q - log_p)).nan_to_num().sum(-1).mean())


def analyse(work: Path, k: int, seeds: int) -> dict:
    cfg = load_config(work / "kd-seed0" / "config.yaml")
    test = load_lm_data(cfg).test
    targets = test[:, 1:].flatten()
    t_logits = logits_of(load_pretrained(work / "teacher"), test)
    t_logp = torch.log_softmax(t_logits, -1)
    top = t_logits.topk(k, dim=-1).indices
    inside = (top == targets[:, None]).any(-1)
    teacher_rest = 1 - t_logp.gather(-1, top).exp().sum(-1)
    n = targets.numel()
    teacher_nll = -t_logp.gather(-1, targets[:, None]).squeeze(-1)
    result = {
        "k": k,
        "test_tokens": n,
        "fraction_target_inside_top_k": float(inside.float().mean()),
        "teacher": {
            "perplexity": math.exp(float(teacher_nll.mean())),
            "mean_rest_mass": float(teacher_rest.mean()),
            "nll_inside": float(teacher_nll[inside].mean()),
            "nll_outside": float(teacher_nll[~inside].mean()),
        },
        "rows": {},
    }
    for row in ROWS:
        per_seed = []
        for seed in range(seeds):
            run = work / f"{row}-seed{seed}"
            if not (run / "config.json").is_file():
                continue
            s_logits = logits_of(load_pretrained(run), test)
            s_logp = torch.log_softmax(s_logits, -1)
            nll = -s_logp.gather(-1, targets[:, None]).squeeze(-1)
            per_seed.append(
                {
                    "perplexity": math.exp(float(nll.mean())),
                    "nll_inside": float(nll[inside].mean()),
                    "nll_outside": float(nll[~inside].mean()),
                    "log_ppl_from_inside": float(nll[inside].sum()) / n,
                    "log_ppl_from_outside": float(nll[~inside].sum()) / n,
                    "student_mass_outside_teacher_top_k": float((1 - s_logp.gather(-1, top).exp().sum(-1)).mean()),
                    "sparse_kd_loss_fp16_values": bucket_kl(t_logits, s_logits, k, torch.float16),
                    "sparse_kd_loss_fp32_values": bucket_kl(t_logits, s_logits, k, torch.float32),
                }
            )
        if per_seed:
            result["rows"][row] = {key: statistics.fmean(s[key] for s in per_seed) for key in per_seed[0]}
            result["rows"][row]["seeds"] = len(per_seed)
    return result


def markdown(r: dict) -> str:
    env, t = r["environment"], r["teacher"]
    lines = [
        "# Where the sparse (top-k) teacher's student loses perplexity",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}; versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; "
        f"{env['date_utc']} UTC  ",
        f"Runs: `{r['work']}`; {r['test_tokens']:,} test tokens; k = {r['k']}.",
        "",
        f"Teacher: test perplexity {t['perplexity']:.2f}, mean mass outside its top {r['k']} "
        f"{t['mean_rest_mass']:.3f}; "
        f"the target is inside the teacher's top {r['k']} for {r['fraction_target_inside_top_k']:.3f} of the test "
        f"tokens (teacher NLL there {t['nll_inside']:.3f}, outside {t['nll_outside']:.3f}).",
        "",
        "Per student (mean over seeds): NLL on tokens whose target is inside / outside the teacher's top k, each "
        "group's share of the log-perplexity (sum over the group / all tokens), the student's own mass outside the "
        "teacher's top k, and its sparse KD loss (KL over the k + 1 buckets) with float16 vs float32 top-k values.",
        "",
        "| student | perplexity | NLL inside | NLL outside | log-ppl from inside | log-ppl from outside | "
        "student mass outside top k | sparse KD loss fp16 | fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, s in r["rows"].items():
        lines.append(
            f"| {row} | {s['perplexity']:.2f} | {s['nll_inside']:.3f} | {s['nll_outside']:.3f} | "
            f"{s['log_ppl_from_inside']:.3f} | {s['log_ppl_from_outside']:.3f} | "
            f"{s['student_mass_outside_teacher_top_k']:.3f} | {s['sparse_kd_loss_fp16_values']:.5f} | "
            f"{s['sparse_kd_loss_fp32_values']:.5f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/lm_stdlib-strong"))
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="lm_sparse_gap", help="results/<name>.{json,md}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"environment": environment(), "work": str(args.work), **analyse(args.work.resolve(), args.k, args.seeds)}
    out = RESULTS / args.name
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
