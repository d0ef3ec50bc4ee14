"""Tests that kill mutants mutmut found alive in the loop's normalisation (see benchmarks/results/mutation.md).

The two tasks' ``objective`` divide a micro-batch's terms by what makes a whole accumulation window's gradient a
mean: classification divides the rows' mean by the window's micro-batches; the LM step's terms are already sums
over the window's target tokens (``num_items``), multiplied by the world size because DDP averages gradients.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from kdlab.engine.supervised import ClassifyStep
from kdlab.tasks.causal_lm import LMStep


def test_classification_objective_divides_by_the_window():
    terms = {"ce": torch.tensor(1.5, dtype=torch.float64), "kd": torch.tensor(0.25, dtype=torch.float64)}
    loss, log_scale = ClassifyStep.objective(None, terms, 3)  # type: ignore[arg-type]
    assert loss.item() == (1.5 + 0.25) / 3 and log_scale == 1.0


def test_lm_objective_multiplies_by_the_world_size_and_logs_per_window():
    step = SimpleNamespace(acc=SimpleNamespace(num_processes=2))
    terms = {"kd": torch.tensor(0.75, dtype=torch.float64), "ce": torch.tensor(0.5, dtype=torch.float64)}
    loss, log_scale = LMStep.objective(step, terms, 3)  # type: ignore[arg-type]
    assert loss.item() == (0.75 + 0.5) * 2 and log_scale == 3.0


def test_lm_batch_counts_the_target_tokens_of_the_whole_window():
    blocks = torch.arange(40).reshape(8, 5)  # 8 blocks of 5 tokens: 4 targets each
    step = SimpleNamespace(
        data=SimpleNamespace(train=blocks),
        acc=SimpleNamespace(device=torch.device("cpu")),
        batch_size=2,
        targets_per_block=4,
    )
    batch = LMStep.batch(step, torch.tensor([6, 1]), 0, 3, 2)  # type: ignore[arg-type]
    assert batch["num_items"] == 2 * 2 * 4  # a window of 2 micro-batches of 2 blocks
    assert torch.equal(batch["ids"], blocks[[6, 1]]) and torch.equal(batch["targets"], blocks[[6, 1], 1:])
    assert torch.equal(batch["index"], torch.tensor([6, 1]))
