"""Data parallel semantics: train.batch_size is the global batch, and evaluation is gathered without duplicates.

One worker script runs in 1 process and under torchrun in 2 (gloo, CPU): the same distillation (2 epochs,
global batch 34 = 17 rows per process) must give the same weights to float rounding, and the evaluation of a
101-row split (not divisible by 2) the very same 101 rows of logits and the same metrics.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kdlab.engine.speed import fast_student, fast_teacher

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path

    import torch
    from accelerate import Accelerator

    from kdlab import models
    from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
    from kdlab.engine import Splits, end_process_group, fit
    from kdlab.engine.predict import predict
    from kdlab.eval import classification_metrics
    from kdlab.methods import build

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(306, 20, generator=g), torch.randint(0, 5, (306,), generator=g)
    x_train, y_train, x_val, y_val, x_test, y_test = x[:102], y[:102], x[102:205], y[102:205], x[205:], y[205:]
    torch.manual_seed(1)
    teacher = models.create("mlp", 5, (20,), hidden=[32]).eval().requires_grad_(False)
    torch.manual_seed(2)
    student = models.create("mlp", 5, (20,), hidden=[16])
    acc = Accelerator(cpu=True)
    out = Path(sys.argv[1])
    result = fit(
        student,
        Splits(x_train, y_train, x_val, y_val, x_test, y_test, 5),
        build("kd", {"alpha": 0.5, "beta": 0.5, "temperature": 2.0}, 5),
        TrainConfig(epochs=2, batch_size=34, progress=False, train_eval_size=0, cpu=True),
        OptimizerConfig(lr=0.1),
        SchedulerConfig(name="constant"),
        out_dir=out / f"run{acc.num_processes}",
        teacher=teacher,
        accelerator=acc,
    )
    logits = predict(student, x_test, 5, 16, acc)  # batches of 16 across shards of 51 and 50 rows
    teacher_logits = predict(teacher, x_test, 5, 16, acc)  # collective: every process calls it
    if acc.is_main_process:
        (out / f"world{acc.num_processes}.json").write_text(json.dumps({
            "world": acc.num_processes,
            "steps": result.steps,
            "test": result.test,
            "logits": logits.tolist(),
            "metrics": classification_metrics(logits, y_test, teacher_logits),
            "weights": [p.detach().flatten().tolist() for p in student.parameters()],
        }))
    acc.free_memory()  # the DDP wrapper it keeps holds the process group; then tear the group down before exit
    end_process_group()
    sys.stdout.flush()
    os._exit(0)  # results are written: no exit-time thread cleanup of any library can fail the comparison
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX system")
def test_two_processes_global_batch_and_gathered_evaluation(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launch += ["--master_port", str(_free_port()), str(script), str(tmp_path)]
    two = subprocess.run(launch, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "world1.json").read_text())
    b = json.loads((tmp_path / "world2.json").read_text())
    assert (a["world"], b["world"]) == (1, 2)
    assert a["steps"] == b["steps"] == 2 * (102 // 34)  # batch_size is global: 3 steps per epoch in both
    logits_a, logits_b = torch.tensor(a["logits"]), torch.tensor(b["logits"])
    assert logits_b.shape == (101, 5)  # every row once: no padding row, no duplicate
    torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=1e-5)
    for key, value in a["metrics"].items():
        assert b["metrics"][key] == pytest.approx(value, abs=1e-6), key
    for key, value in a["test"].items():
        assert b["test"][key] == pytest.approx(value, abs=1e-6), key
    for p, q in zip(a["weights"], b["weights"], strict=True):
        torch.testing.assert_close(torch.tensor(q), torch.tensor(p), rtol=0, atol=1e-5)


def test_channels_last_teacher_and_student_keep_the_arithmetic():
    from kdlab import models

    torch.manual_seed(0)
    x = torch.randn(8, 1, 12, 12)
    plain = models.create("cnn", 4, (1, 12, 12), width=4).eval()
    expected = plain(x)
    fast = fast_teacher(models.create("cnn", 4, (1, 12, 12), width=4), channels_last=True)
    fast.load_state_dict(plain.state_dict())
    assert fast.layer1[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    student = models.create("cnn", 4, (1, 12, 12), width=4)
    params = list(student.parameters())
    assert fast_student(student, channels_last=True) is student
    assert [id(p) for p in student.parameters()] == [id(p) for p in params]  # the optimizer's tensors stay valid


def test_bf16_teacher_returns_float32_close_to_fp32():
    from kdlab import models

    torch.manual_seed(0)
    teacher = models.create("mlp", 6, (10,), hidden=[16])
    x = torch.randn(32, 10)
    reference = teacher.eval()(x)
    fast = fast_teacher(teacher, precision="bf16")
    out = fast(x)
    assert out.dtype == torch.float32
    assert not torch.equal(out, reference)  # bf16 really ran
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)
    assert fast_teacher(teacher) is teacher  # no switch on: the teacher itself


def _switch_run(tmp_path, name: str, teacher_extra: dict, train_extra: dict) -> dict:
    from kdlab import models
    from kdlab.api import distill
    from kdlab.engine.checkpoint import save_weights

    weights = tmp_path / "teacher.safetensors"
    if not weights.exists():
        torch.manual_seed(0)
        save_weights(models.create("cnn", 10, (1, 8, 8), width=4), weights)
    teacher = {"model": {"name": "cnn", "kwargs": {"width": 4}}, "weights": str(weights), **teacher_extra}
    return distill(
        {
            "out": str(tmp_path / name),
            "data": {"name": "digits"},
            "model": {"name": "cnn", "kwargs": {"width": 4}},
            "teacher": teacher,
            "method": {"name": "kd"},
            "train": {"epochs": 1, "batch_size": 64, "progress": False, "train_eval_size": 0, **train_extra},
        }
    )


def test_config_switches_reach_the_run_and_keep_its_results(tmp_path, one_thread):
    from kdlab.config import ConfigError, load_config

    plain = _switch_run(tmp_path, "plain", {}, {})
    fast = _switch_run(tmp_path, "fast", {"channels_last": True}, {"channels_last": True})
    assert fast["test"]["accuracy"] == plain["test"]["accuracy"]
    assert fast["test"]["nll"] == pytest.approx(plain["test"]["nll"], abs=1e-4)
    assert fast["test"]["kl_teacher"] == pytest.approx(plain["test"]["kl_teacher"], abs=1e-4)
    with pytest.raises(ConfigError, match=r"teacher\.precision"):
        load_config({"teacher": {"run": "x", "precision": "fp16"}})
    with pytest.raises(ConfigError, match=r"unknown key 'train\.channel_last'"):
        load_config({"train": {"channel_last": True}})
