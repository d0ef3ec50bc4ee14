"""A SIGKILLed distillation resumes to the same weights; 2 processes (torchrun, gloo) match 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from two_processes import distill_with_two_processes

from kdlab.api import distill, train


def _teacher(root: Path) -> Path:
    out = root / "teacher"
    train(
        {
            "out": str(out),
            "data": {"name": "digits"},
            "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
            "train": {"epochs": 2, "batch_size": 64, "progress": False},
        }
    )
    return out


def _student(out: Path, teacher: Path, **train_extra) -> dict:
    return {
        "out": str(out),
        "seed": 3,
        "data": {"name": "digits", "augment": {"hflip": True}},
        "model": {"name": "mlp", "kwargs": {"hidden": [32], "dropout": 0.2}},
        "teacher": {"run": str(teacher)},
        "method": {"name": "ptloss", "epsilon": [0.2, -0.1], "temperature": 2.0},
        "train": {"epochs": 2, "batch_size": 64, "progress": False, "checkpoint_every_steps": 3, **train_extra},
    }


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    teacher = _teacher(tmp_path)
    reference = distill(_student(tmp_path / "reference", teacher))
    cfg = _student(tmp_path / "killed", teacher)
    script = textwrap.dedent(f"""
        import os, signal
        from kdlab.api import distill
        def kill(info):
            if info.global_step == 7:  # mid-epoch, one step after the checkpoint of step 6
                os.kill(os.getpid(), signal.SIGKILL)
        distill({cfg!r}, callbacks=[kill])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    killed = tmp_path / "killed"
    assert not (killed / "summary.json").exists()
    assert (killed / "checkpoints" / "latest").read_text().startswith("step-000000006")
    resumed = distill(cfg, resume=True)
    a = load_file(str(tmp_path / "reference" / "model.safetensors"))
    b = load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["test"] == reference["test"]
    epochs = [
        json.loads(x)["epoch"] for x in (killed / "metrics.jsonl").read_text().splitlines() if "val/accuracy" in x
    ]
    assert epochs == [1, 2]  # no duplicated lines after the resume


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX system")
def test_two_processes_match_one(tmp_path):
    teacher = _teacher(tmp_path)
    cfg = _student(tmp_path / "one", teacher)
    cfg["model"]["kwargs"]["dropout"] = 0.0  # dropout draws differ per process; the rest must not
    cfg["data"]["augment"] = {"hflip": False}
    one = distill(cfg)
    two = distill_with_two_processes(cfg, tmp_path / "two")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["optimizer_steps"] == one["optimizer_steps"]
    # the same rows per step, DDP's mean of the two halves' gradients = the mean over the whole batch: the same
    # weights up to float32 rounding (measured: 6e-8; nll 5e-9)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    for key in ("accuracy", "agreement"):
        assert two["test"][key] == one["test"][key], key
    for key in ("nll", "kl_teacher"):
        assert two["test"][key] == pytest.approx(one["test"][key], rel=1e-4, abs=1e-6), key


def test_two_processes_train_the_method_modules_like_one(tmp_path):
    """VID's own modules (mean network, per-channel variances) live in the module DDP wraps with the student: under
    torchrun with 2 processes their gradients are averaged, so student and method weights match 1 process."""
    from safetensors.torch import load_file

    teacher = _teacher(tmp_path)
    cfg = _student(tmp_path / "one", teacher)
    cfg["model"]["kwargs"]["dropout"] = 0.0
    cfg["data"]["augment"] = {"hflip": False}
    cfg["method"] = {"name": "vid", "student_layer": "body.0", "teacher_layer": "body.0", "beta": 0.5}
    one = distill(cfg)
    two = distill_with_two_processes(cfg, tmp_path / "two")
    assert two["world_size"] == 2 and two["optimizer_steps"] == one["optimizer_steps"]
    for file in ("model.safetensors", "method/heads.safetensors"):
        a, b = load_file(str(tmp_path / "one" / file)), load_file(str(tmp_path / "two" / file))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{file}: {key}")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX system")
def test_an_alternating_method_trains_with_two_processes(tmp_path):
    """RID's phases leave one side's parameters without a gradient in a step; DDP must still reduce (the loop gives
    them a zero gradient). The filters' BatchNorm sees per-process batches, so the weights differ a little."""
    teacher = _teacher(tmp_path)
    cfg = _student(tmp_path / "one", teacher)
    cfg["model"]["kwargs"]["dropout"] = 0.0
    cfg["data"]["augment"] = {"hflip": False}
    cfg["method"] = {"name": "rid", "student_layer": "body.0", "teacher_layer": "body.0"}
    one = distill(cfg)
    two = distill_with_two_processes(cfg, tmp_path / "two")
    assert two["world_size"] == 2 and two["optimizer_steps"] == one["optimizer_steps"]
    assert abs(two["test"]["accuracy"] - one["test"]["accuracy"]) < 0.03
