"""``fit``: the classification step through the one loop, on a user's own modules and tensors — and the run
directory it writes (metrics.jsonl, checkpoints/, model.safetensors, method modules, then summary.json)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from kdlab.config import AugmentConfig, OptimizerConfig, SchedulerConfig, TrainConfig
from kdlab.errors import ConfigError
from kdlab.methods import Method

from .checkpoint import save_weights
from .loop import StepInfo, run_loop
from .pid_log import PIDLog, pid_pair
from .rundir import SUMMARY, new_accelerator, versions, write_summary
from .supervised import ClassifyStep, FitResult, Splits


def save_method_modules(modules: dict[str, nn.Module], out_dir: Path) -> None:
    """``<out>/method/<name>.safetensors`` per module a method owns: beside the student, never inside it."""
    for name, module in modules.items():
        save_weights(module, out_dir / "method" / f"{name}.safetensors")


def train_splits(
    student: nn.Module,
    data: Splits,
    method: Method,
    cfg: TrainConfig,
    *,
    out_dir: Path,
    seed: int,
    teacher: nn.Module | None,
    cached_logits: dict[str, Tensor] | None,
    augment_cfg: AugmentConfig,
    resume: bool,
    accelerator: Accelerator,
    callbacks: list[Callable[[StepInfo], None]] | None,
    fingerprints: dict[str, str] | None = None,
) -> FitResult:
    """The classification step through the one loop; writes metrics.jsonl, checkpoints/, model.safetensors and
    the method's modules, not summary.json (the caller's, written last)."""
    acc = accelerator
    if method.needs_teacher and teacher is None and cached_logits is None:
        raise ConfigError(f"method {method.name!r} needs a teacher: add a 'teacher' section")
    step = ClassifyStep(
        student,
        data,
        method,
        cfg,
        acc,
        seed=seed,
        teacher=teacher,
        cached_logits=cached_logits,
        augment_cfg=augment_cfg,
        out_dir=out_dir,
        fingerprints=fingerprints,
    )
    method.setup(step.setup_context())
    pair = pid_pair(cfg, method, teacher is not None or cached_logits is not None, len(data.y_val))
    if pair is not None:  # train.pid_every: an epoch-end callback of the loop, before the caller's see the step
        main = acc.is_main_process
        callbacks = [PIDLog(step, pair, cfg, resume=resume, main=main, seed=seed), *(callbacks or [])]
    result, trainable = run_loop(
        step, method, cfg, accelerator=acc, out_dir=out_dir, seed=seed, resume=resume, callbacks=callbacks
    )
    if acc.is_main_process:
        save_weights(trainable.student, out_dir / "model.safetensors")
        save_method_modules(dict(trainable.method.items()), out_dir)
    acc.wait_for_everyone()
    evaluations = result.evaluations
    return FitResult(
        val=evaluations["val"],
        test=evaluations["test"],
        epochs=result.epochs,
        train_seconds=result.train_seconds,
        samples_per_second=result.items_per_second,
        steps=result.steps,
        history=result.history,
        train=evaluations.get("train_eval", {}),
    )


def fit_summary(result: FitResult, method: Method, acc: Accelerator, seed: int, data: Splits) -> dict[str, Any]:
    """What every classification run's summary.json holds (the task adds its config's names and checks)."""
    return {
        "complete": True,
        "method": method.describe(),
        "test_accuracy": result.test.get("accuracy"),
        "test": result.test,
        "val": result.val,
        "train_eval": result.train,
        "epochs": result.epochs,
        "optimizer_steps": result.steps,
        "train_seconds": result.train_seconds,
        "samples_per_second": result.samples_per_second,
        "world_size": acc.num_processes,
        "threads": torch.get_num_threads(),
        "seed": seed,
        "data": {"train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test)},
        "versions": versions(),
    }


def fit(
    student: nn.Module,
    data: Splits,
    method: Method | str,
    cfg: TrainConfig | None = None,
    optimizer_cfg: OptimizerConfig | None = None,
    scheduler_cfg: SchedulerConfig | None = None,
    *,
    out_dir: str | Path,
    seed: int = 0,
    teacher: nn.Module | None = None,
    cached_logits: dict[str, Tensor] | None = None,
    augment_cfg: AugmentConfig | None = None,
    resume: bool = False,
    accelerator: Accelerator | None = None,
    callbacks: list[Callable[[StepInfo], None]] | None = None,
) -> FitResult:
    """Train ``student`` on your own tensors with ``method`` (a ``Method`` or a registered name with its
    defaults); write the run directory ``out_dir``: metrics.jsonl, checkpoints/, model.safetensors (and
    ``method/<name>.safetensors`` for modules the method owns) and, last, summary.json. ``cfg`` defaults to
    ``TrainConfig()``; ``optimizer_cfg``/``scheduler_cfg`` to ``cfg.optimizer``/``cfg.scheduler``."""
    if not isinstance(out_dir, str | Path):
        raise ConfigError(f"fit: out_dir must be a str or Path, got {type(out_dir).__name__}")
    out = Path(out_dir)
    if isinstance(method, str):
        from kdlab.methods import build

        method = build(method, {}, data.num_classes)
    cfg = cfg or TrainConfig()
    cfg = cfg.model_copy(
        update={"optimizer": optimizer_cfg or cfg.optimizer, "scheduler": scheduler_cfg or cfg.scheduler}
    )
    acc = accelerator or new_accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / SUMMARY).unlink(missing_ok=True)
    result = train_splits(
        student,
        data,
        method,
        cfg,
        out_dir=out,
        seed=seed,
        teacher=teacher,
        cached_logits=cached_logits,
        augment_cfg=augment_cfg or AugmentConfig(),
        resume=resume,
        accelerator=acc,
        callbacks=callbacks,
    )
    summary = fit_summary(result, method, acc, seed, data)
    write_summary(out, summary, acc)
    return result
