"""DistillationTrainer: gradient accumulation and 2 processes give the weights of one big batch; the teacher
stays frozen, out of the optimizer and out of every checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file
from test_hf import VOCAB, sequences, tiny_llama  # tests/ is on sys.path (pytest's rootdir-relative import)
from transformers import TrainingArguments

from kdlab.hf import CausalLMCollator, DistillationTrainer, distill_method, distillation_loss, write_teacher_cache

REPO = Path(__file__).resolve().parents[1]
LR = 0.5
METHOD = distill_method("ptloss", epsilon=[0.3, -0.1], temperature=2.0, alpha=0.3)


def _args(out: Path, per_device: int, accumulation: int, **extra) -> TrainingArguments:
    """One SGD step without clipping or decay: the new weights are w − lr · (the gradient), nothing else."""
    settings = {
        "output_dir": str(out),
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "max_steps": 1,
        "learning_rate": LR,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "weight_decay": 0.0,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_strategy": "no",
        "dataloader_num_workers": 0,
        "seed": 0,
        **extra,
    }
    return TrainingArguments(**settings)


def distil_one_step(
    out: Path, per_device: int, accumulation: int, examples: int, cache_k: int = 0, **extra
) -> DistillationTrainer:
    """The same tiny student, teacher and data every time; one optimizer step over all ``examples``.

    ``cache_k`` > 0: the teacher's top-k logits are cached first and the trainer reads them instead.
    """
    student, teacher = tiny_llama(32, seed=1), tiny_llama(48, seed=2)
    tokens = sequences(examples, seed=11, shortest=2, longest=14)
    data = [{"input_ids": s} for s in tokens]
    source = {"teacher": teacher}
    if cache_k:
        offsets = write_teacher_cache(teacher, tokens, out / "cache", k=cache_k, tail_samples=16)
        data = [dict(d, cache_offset=o) for d, o in zip(data, offsets, strict=True)]
        source = {"logit_cache": out / "cache"}
    trainer = DistillationTrainer(
        model=student,
        **source,
        method=METHOD,
        args=_args(out, per_device, accumulation, **extra),
        train_dataset=data,
        data_collator=CausalLMCollator(),
    )
    trainer.train()
    return trainer


def _one_big_batch_step(examples: int) -> dict[str, torch.Tensor]:
    """The reference by hand: the gradient of the mean over all target tokens of all examples, one SGD step."""
    student, teacher = tiny_llama(32, seed=1), tiny_llama(48, seed=2)
    teacher.eval()
    batch = CausalLMCollator()([{"input_ids": s} for s in sequences(examples, seed=11, shortest=2, longest=14)])
    distillation_loss(student, teacher, batch, METHOD).backward()
    return {name: (p - LR * p.grad).detach() for name, p in student.named_parameters()}


def _assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_accumulating_4_by_8_equals_1_by_32_and_the_teacher_is_frozen_and_not_saved(tmp_path, one_thread):
    expected = _one_big_batch_step(32)
    big = distil_one_step(tmp_path / "big", per_device=32, accumulation=1, examples=32)
    _assert_weights(big.model, expected)

    teacher_before = {k: v.clone() for k, v in tiny_llama(48, seed=2).state_dict().items()}
    small = distil_one_step(tmp_path / "acc", 8, 4, 32, save_strategy="steps", save_steps=1)
    _assert_weights(small.model, expected)

    # the per-micro-batch mean (what a loss that ignores num_items_in_batch gives) is a different step:
    # the 4 micro-batches hold different numbers of target tokens
    student, teacher = tiny_llama(32, seed=1), tiny_llama(48, seed=2).eval()
    data = [{"input_ids": s} for s in sequences(32, seed=11, shortest=2, longest=14)]
    for start in range(0, 32, 8):
        (distillation_loss(student, teacher, CausalLMCollator()(data[start : start + 8]), METHOD) / 4).backward()
    naive = max((LR * p.grad - (p.detach() - expected[n])).abs().max().item() for n, p in student.named_parameters())
    assert naive > 1e-4

    teacher = small.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    optimized = {id(p) for group in small.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in small.model.parameters()}
    assert not optimized & {id(p) for p in teacher.parameters()}

    checkpoint = tmp_path / "acc" / "checkpoint-1"
    saved = load_file(str(checkpoint / "model.safetensors"))
    student_state = small.model.state_dict()
    assert saved.keys() == student_state.keys()  # hidden 32 (student), not 48 (teacher)
    for key, value in saved.items():
        assert torch.equal(value, student_state[key]), key
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert sum(len(group["params"]) for group in state["param_groups"]) == len(student_state)
    all_files = {p.name for p in checkpoint.iterdir()}
    assert not any("teacher" in name for name in all_files), all_files


def test_the_trainer_reads_the_logit_cache_rows_of_each_example(tmp_path, one_thread):
    """k = vocabulary: the cached teacher gives the teacher model's step (up to float16 storage of the logits);
    the rows are found through the ``cache_offset`` column, which the trainer keeps although the model does not
    take it (``remove_unused_columns``)."""
    expected = _one_big_batch_step(16)
    # the cache's 16 tail samples are draws at T = 1; this method runs at T = 2: the rest bucket
    with pytest.warns(UserWarning, match="tail samples serve kd and ptloss at temperature 1"):
        cached = distil_one_step(tmp_path, per_device=8, accumulation=2, examples=16, cache_k=VOCAB)
    assert cached.teacher.stored_tail_samples == 16 and cached.teacher.tail_samples == 0
    assert cached.args.remove_unused_columns
    for name, p in cached.model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-3, atol=1e-5, msg=name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX system")
def test_two_processes_match_one(tmp_path, one_thread):
    """torchrun, 2 processes × micro-batch 4 × accumulation 2 = 1 process × 8 × 2: the same 16 examples, one step."""
    one = distil_one_step(tmp_path / "one", per_device=8, accumulation=2, examples=16)
    script = tmp_path / "two.py"
    script.write_text(
        textwrap.dedent(f"""
            import sys, torch, torch.distributed as dist
            from pathlib import Path
            from safetensors.torch import save_file
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from test_hf_trainer import distil_one_step
            trainer = distil_one_step(Path({str(tmp_path / "two")!r}), per_device=4, accumulation=2, examples=16)
            assert dist.get_world_size() == 2 and trainer.args.world_size == 2
            if dist.get_rank() == 0:
                save_file(trainer.model.state_dict(), {str(tmp_path / "two.safetensors")!r})
            trainer.accelerator.free_memory()  # its DDP wrapper holds the process group
            from kdlab.engine import end_process_group
            end_process_group()  # before exit, or gloo's threads may abort the process
            import os
            sys.stdout.flush()
            os._exit(0)  # the weights are written: no exit-time cleanup of any library can fail the comparison
        """)
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), str(script)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    two = load_file(str(tmp_path / "two.safetensors"))
    for name, value in one.model.state_dict().items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-6, msg=name)
