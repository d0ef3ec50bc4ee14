"""A self-contained demonstration of PTLoss's central idea on synthetic data (seconds, no download).

An over-confident teacher is a biased estimate of the true class probabilities. PTLoss's proxy
teacher shows what a perfect student of the perturbed loss would predict; choosing epsilon so that the
proxy is closest to held-out labels should bring the proxy closer to the truth than the teacher is.
Here the truth is known, so the claim can be checked directly.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from kdlab.losses import kd_loss, proxy_teacher, ptloss
from kdlab.methods.selection import proxy_scores, select_ptloss_epsilon


def _scores(probs: torch.Tensor, labels: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """The selection's scores of a distribution, plus its KL from the (here known) truth."""
    kl_truth = (torch.xlogy(truth, truth) - truth * probs.clamp_min(1e-300).log()).sum(-1).mean().item()
    return {**proxy_scores(probs, labels), "kl_truth": kl_truth}


def run_loss_demo(console: Console, seed: int = 0, candidates: int = 64, rows: int = 4000) -> dict[str, object]:
    """Print the worked example and return its numbers (used by the tests)."""
    gen = torch.Generator().manual_seed(seed)
    num_classes, order = 10, 5
    true_logits = torch.randn(rows, num_classes, generator=gen, dtype=torch.float64) * 1.5
    truth = torch.softmax(true_logits, -1)
    labels = torch.multinomial(truth, 1, generator=gen).squeeze(1)
    noise = torch.randn(rows, num_classes, generator=gen, dtype=torch.float64)
    teacher = torch.softmax(2.5 * true_logits + 0.5 * noise, -1)  # over-confident and noisy
    val, test = slice(0, rows // 2), slice(rows // 2, rows)

    console.rule("1. kd_loss and ptloss on one batch")
    s = torch.randn(4, num_classes, generator=gen)
    t = torch.randn(4, num_classes, generator=gen)
    eps = torch.tensor([0.4, -0.2, 0.1, 0.05, -0.1])
    console.print(f"kd_loss(T=1)                 = {kd_loss(s, t, temperature=1.0).item():.6f}")
    console.print(f"ptloss(eps=0, T=1)           = {ptloss(s, t, torch.zeros(5), temperature=1.0).item():.6f}  (equal)")
    console.print(f"ptloss(eps=[0.4, -0.2, 0.1, 0.05, -0.1], T=1) = {ptloss(s, t, eps, temperature=1.0).item():.6f}")

    console.rule(f"2. choosing epsilon through the proxy teacher ({candidates} candidates, M={order})")
    start = time.perf_counter()
    # normalised log-probabilities are logits whose softmax is the teacher itself
    selection = select_ptloss_epsilon(teacher[val].log(), labels[val], candidates=candidates, order=order, seed=seed)
    seconds = time.perf_counter() - start
    epsilons, best = selection.candidates, selection.index
    val_scores = [score["l2"] for score in selection.scores]

    table = Table(title=f"held-out rows ({rows - rows // 2}); selection on the other {rows // 2} took {seconds:.2f}s")
    table.add_column("distribution")
    for col in ("val L2 to labels", "L2 to labels", "NLL", "KL(truth ‖ ·)", "accuracy"):
        table.add_column(col, justify="right")
    results: dict[str, object] = {"epsilon": epsilons[best].tolist(), "val_scores": val_scores}
    for name, probs, score in (
        ("teacher (eps=0)", teacher[test], val_scores[0]),
        ("proxy (selected eps)", proxy_teacher(teacher[test], epsilons[best]), val_scores[best]),
        ("truth (unknown)", truth[test], float("nan")),
    ):
        held_out = _scores(probs, labels[test], truth[test])
        results[name.split(" ")[0]] = held_out
        table.add_row(
            name,
            f"{score:.4f}",
            f"{held_out['l2']:.4f}",
            f"{held_out['nll']:.4f}",
            f"{held_out['kl_truth']:.4f}",
            f"{held_out['accuracy']:.3f}",
        )
    console.print(table)
    console.print(f"selected eps = {[round(x, 3) for x in epsilons[best].tolist()]}")
    console.print(
        "The proxy teacher chosen on validation labels is closer to the true distribution than the teacher "
        "(lower KL(truth ‖ ·)); a student trained with ptloss at that epsilon imitates the proxy, "
        "not the teacher."
    )
    return results


DEMO_TEACHER = {
    "model": {"name": "cnn", "kwargs": {"width": 32}},
    "train": {"epochs": 20, "batch_size": 64, "optimizer": {"lr": 0.05}},
}
DEMO_STUDENT = {
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "train": {"epochs": 30, "batch_size": 64, "optimizer": {"lr": 0.05}},
}
DEMO_METHODS = {
    "ce": {"name": "ce"},
    "kd": {"name": "kd", "temperature": 4.0, "alpha": 0.1, "beta": 0.9},
    "ptloss": {"name": "ptloss", "temperature": 4.0, "alpha": 0.1, "beta": 0.9, "epsilon": [-0.2, 0.1, 0.05]},
}


def run_demo(out, console: Console, seed: int = 0) -> list[dict[str, object]]:
    """Teacher (CNN) then CE, KD and PTLoss students (MLP) on digits; returns the four run summaries."""
    from pathlib import Path

    from kdlab.api import distill, train

    out = Path(out)
    base = {"seed": seed, "data": {"name": "digits"}}
    console.rule("teacher: CNN trained with cross-entropy")
    rows = [train({**base, **DEMO_TEACHER, "name": "teacher", "out": str(out / "teacher")}, overwrite=True)]
    for name, method in DEMO_METHODS.items():
        console.rule(f"student: MLP with {name}")
        cfg = {
            **base,
            **DEMO_STUDENT,
            "name": name,
            "out": str(out / f"student-{name}"),
            "method": method,
            "teacher": {"run": str(out / "teacher")},
        }
        rows.append(distill(cfg, overwrite=True))
    return rows
