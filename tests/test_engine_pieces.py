"""Loop details: gradient accumulation equals the large batch, the LR schedule, bf16 autocast on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from kdlab.api import train
from kdlab.config import SchedulerConfig
from kdlab.engine.batches import batch_indices, epoch_permutation
from kdlab.engine.optim import lr_factor


def _cfg(out, **train_cfg) -> dict:
    return {
        "out": str(out),
        "data": {"name": "digits"},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "train": {
            "epochs": 2,
            "progress": False,
            **train_cfg,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
        },
    }


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    train(_cfg(tmp_path / "big", batch_size=64))
    train(_cfg(tmp_path / "accum", batch_size=32, grad_accum=2))
    big = load_file(str(tmp_path / "big" / "model.safetensors"))
    accum = load_file(str(tmp_path / "accum" / "model.safetensors"))
    for key in big:
        torch.testing.assert_close(big[key], accum[key], atol=1e-5, rtol=1e-5)


def test_learning_rate_schedules():
    cosine = SchedulerConfig(name="cosine", warmup_epochs=1)
    assert [lr_factor(s, 10, 3, cosine) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(10, 10, 3, cosine) == pytest.approx(1.0)
    assert lr_factor(20, 10, 3, cosine) == pytest.approx(0.5)
    assert lr_factor(30, 10, 3, cosine) == pytest.approx(0.0, abs=1e-12)
    step = SchedulerConfig(name="step", milestones=[1, 2], gamma=0.1)
    assert [lr_factor(s, 10, 3, step) for s in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.1, 0.01])
    floor = SchedulerConfig(name="cosine", min_lr_ratio=0.1)
    assert lr_factor(15, 10, 3, floor) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_batches_are_the_same_rows_for_any_number_of_processes():
    perm = epoch_permutation(100, seed=0, epoch=3)
    assert torch.equal(perm, epoch_permutation(100, seed=0, epoch=3))
    assert not torch.equal(perm, epoch_permutation(100, seed=0, epoch=4))
    one = batch_indices(perm, 2, 8, 8, rank=0, world=1)
    two = torch.cat([batch_indices(perm, 2, 8, 8, rank=r, world=2) for r in range(2)])
    assert sorted(one.tolist()) == sorted(two.tolist()) == sorted(perm[16:24].tolist())
    last = [batch_indices(perm, 12, 8, 4, rank=r, world=3) for r in range(3)]  # rows 96..99, dealt 2 + 1 + 1
    assert [len(part) for part in last] == [2, 1, 1]
    assert sorted(torch.cat(last).tolist()) == sorted(perm[96:].tolist())


def test_bf16_autocast_trains_on_cpu_like_float32(tmp_path):
    """The training forward really runs in bfloat16 (a hook sees the first layer's output dtype), and the result
    stays close to float32's: measured test NLL 1.8039 vs 1.8045 and accuracy 0.622 vs 0.617 (2 of 360 rows)."""
    from kdlab import models
    from kdlab.api import fit_model

    summaries, dtypes = {}, {}
    for precision in ("no", "bf16"):
        torch.manual_seed(0)
        student = models.create("mlp", 10, (1, 8, 8), hidden=[16])
        seen: set[torch.dtype] = set()

        def record(module, inputs, output, seen=seen) -> None:
            if module.training:
                seen.add(output.dtype)

        student.body[0][0].register_forward_hook(record)
        cfg = _cfg(tmp_path / precision, batch_size=64, mixed_precision=precision)
        summaries[precision], dtypes[precision] = fit_model(cfg, student), seen
    assert dtypes == {"no": {torch.float32}, "bf16": {torch.bfloat16}}
    full, half = summaries["no"], summaries["bf16"]
    assert abs(half["test"]["nll"] - full["test"]["nll"]) < 5e-3
    assert abs(half["test_accuracy"] - full["test_accuracy"]) <= 0.02
