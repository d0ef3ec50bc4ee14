"""Tests that kill mutants mutmut found alive in the loop's normalisation (see benchmarks/results/mutation.md).

The two tasks' ``objective`` scale a micro-batch's terms so that a whole accumulation window's gradient is the mean
over its rows: classification weights the rows' mean by their share of the window's rows (× the world size);
the LM step's terms are already sums over the window's target tokens (``num_items``), multiplied by the world size
because DDP averages gradients.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kdlab.engine.supervised import ClassifyStep
from kdlab.losses import cross_entropy
from kdlab.methods.base import Method, MethodParams, StepState
from kdlab.tasks.causal_lm import LMStep


def test_classification_objective_weights_the_rows_share_of_the_window():
    step = SimpleNamespace(acc=SimpleNamespace(num_processes=2))
    terms = {"ce": torch.tensor(1.5, dtype=torch.float64), "kd": torch.tensor(0.25, dtype=torch.float64)}
    batch = {"y": torch.zeros(3, dtype=torch.long)}  # 3 of this process's rows in a window of 10 global rows
    loss, log_scale = ClassifyStep.objective(step, terms, batch, 10)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx((1.5 + 0.25) * 3 * 2 / 10, rel=1e-15) and log_scale == 1.0


def test_lm_objective_multiplies_by_the_world_size_and_logs_per_window():
    step = SimpleNamespace(acc=SimpleNamespace(num_processes=2))
    terms = {"kd": torch.tensor(0.75, dtype=torch.float64), "ce": torch.tensor(0.5, dtype=torch.float64)}
    batch = {"ids": torch.zeros(3, 5, dtype=torch.long)}  # 3 blocks here, 6 over both processes
    loss, log_scale = LMStep.objective(step, terms, batch, 12)  # type: ignore[arg-type]
    assert loss.item() == (0.75 + 0.5) * 2 and log_scale == 12 / 6


def test_lm_batch_counts_the_target_tokens_of_the_whole_window():
    blocks = torch.arange(40).reshape(8, 5)  # 8 blocks of 5 tokens: 4 targets each
    step = SimpleNamespace(
        data=SimpleNamespace(train=blocks),
        acc=SimpleNamespace(device=torch.device("cpu")),
        batch_size=2,
        targets_per_block=4,
    )
    batch = LMStep.batch(step, torch.tensor([6, 1]), 0, 3, 4)  # type: ignore[arg-type]
    assert batch["num_items"] == 4 * 4  # a window of 4 blocks (2 micro-batches of 2) of 4 targets each
    assert torch.equal(batch["ids"], blocks[[6, 1]]) and torch.equal(batch["targets"], blocks[[6, 1], 1:])
    assert torch.equal(batch["index"], torch.tensor([6, 1]))


# ---- the loop itself: windows, progress, what is logged per step and per epoch ----

ROWS, FEATURES, CLASSES, BATCH, ACCUM, SEED = 22, 5, 3, 4, 2, 7  # drop_last: 5 micro-batches, windows 2, 2, 1


class _Recording(Method):
    """A cross-entropy method that records the StepState of every micro-batch (not registered)."""

    name = "recording"
    needs_teacher = False

    def __init__(self) -> None:
        super().__init__(MethodParams(), CLASSES)
        self.states: list[StepState] = []

    def compute(self, batch, student, teacher, state):
        self.states.append(state)
        return {"ce": cross_entropy(student.logits, batch["y"])}


def test_the_loop_logs_window_means_and_progress(tmp_path):
    from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
    from kdlab.engine import Splits, fit
    from kdlab.engine.batches import batch_indices, epoch_permutation

    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(ROWS + 8, FEATURES, generator=gen), torch.randint(0, CLASSES, (ROWS + 8,), generator=gen)
    data = Splits(x[:ROWS], y[:ROWS], x[ROWS : ROWS + 4], y[ROWS : ROWS + 4], x[ROWS + 4 :], y[ROWS + 4 :], CLASSES)
    torch.manual_seed(1)
    student = torch.nn.Linear(FEATURES, CLASSES)
    frozen = torch.nn.Linear(FEATURES, CLASSES).double()
    frozen.load_state_dict(student.state_dict())
    method, seen = _Recording(), []
    cfg = TrainConfig(
        epochs=2, batch_size=BATCH, grad_accum=ACCUM, drop_last=True, cpu=True, progress=False, train_eval_size=0
    )
    result = fit(
        student,
        data,
        method,
        cfg,
        OptimizerConfig(name="sgd", lr=1e-12, momentum=0.0, nesterov=False, weight_decay=0.0),  # weights stay put
        SchedulerConfig(name="constant"),
        out_dir=tmp_path / "run",
        seed=SEED,
        callbacks=[seen.append],
    )
    assert result.steps == 6
    assert [s.progress for s in method.states] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8])
    assert [s.step for s in method.states] == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]
    assert {(s.epochs, s.epoch) for s in method.states} == {(2, 0), (2, 1)}
    assert [(i.epoch, i.step_in_epoch, i.global_step) for i in seen] == [
        (0, 2, 1),
        (0, 4, 2),
        (0, 5, 3),
        (1, 2, 4),
        (1, 4, 5),
        (1, 5, 6),
    ]
    for epoch in range(2):  # reference: the float64 cross-entropy of each micro-batch of the unchanged model
        order = epoch_permutation(ROWS, SEED, epoch)
        ce = []
        for step in range(5):
            rows = batch_indices(order, step, BATCH, BATCH, 0, 1)
            ce.append(torch.nn.functional.cross_entropy(frozen(x[rows].double()), y[rows]).item())
        assert [i.terms["ce"] for i in seen[3 * epoch : 3 * epoch + 3]] == pytest.approx([ce[1], ce[3], ce[4]])
        assert result.history[epoch]["train/ce"] == pytest.approx(sum(ce) / 5, rel=1e-6)
        assert result.history[epoch]["step"] == 3 * (epoch + 1)


def test_one_micro_batch_per_epoch_trains_and_too_few_rows_is_an_error(tmp_path):
    from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
    from kdlab.engine import Splits, fit
    from kdlab.errors import ConfigError

    x, y = torch.randn(6, FEATURES), torch.tensor([0, 1, 2, 0, 1, 2])
    data = Splits(x[:4], y[:4], x[4:5], y[4:5], x[5:], y[5:], CLASSES)
    sgd = OptimizerConfig(name="sgd", lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    cfg = TrainConfig(epochs=2, batch_size=4, grad_accum=3, cpu=True, progress=False, train_eval_size=0)
    result = fit(
        torch.nn.Linear(FEATURES, CLASSES),
        data,
        _Recording(),
        cfg,
        sgd,
        SchedulerConfig(name="constant"),
        out_dir=tmp_path / "one",
        seed=0,
    )
    assert result.steps == 2  # one window of one micro-batch per epoch
    partial = fit(  # a batch larger than the data: one partial batch per epoch
        torch.nn.Linear(FEATURES, CLASSES),
        data,
        _Recording(),
        cfg.model_copy(update={"batch_size": 5}),
        sgd,
        SchedulerConfig(name="constant"),
        out_dir=tmp_path / "partial",
        seed=0,
    )
    assert partial.steps == 2
    with pytest.raises(ConfigError, match=r"exceeds the 4 training rows and train\.drop_last is set"):
        fit(
            torch.nn.Linear(FEATURES, CLASSES),
            data,
            _Recording(),
            cfg.model_copy(update={"batch_size": 5, "drop_last": True}),
            sgd,
            SchedulerConfig(name="constant"),
            out_dir=tmp_path / "none",
            seed=0,
        )
