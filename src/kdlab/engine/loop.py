"""The training loop: explicit, top to bottom, on ``accelerate.Accelerator``.

The student is prepared by Accelerate (DDP, mixed precision); the teacher is frozen, moved to the device
and run under ``torch.inference_mode`` — never wrapped, never checkpointed — or replaced by cached logits.
Batches come from in-memory tensors (see ``batches``); gradient accumulation is explicit so an epoch's
last, shorter window is handled exactly; checkpoints are taken at optimizer-step boundaries, so a resume
replays the same arithmetic.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor, nn

from kdlab.config import AugmentConfig, ConfigError, OptimizerConfig, SchedulerConfig, TrainConfig
from kdlab.eval import classification_metrics
from kdlab.methods import Method, StepState

from . import batches
from .checkpoint import Position, latest_checkpoint, load_checkpoint, save_checkpoint, save_weights
from .metrics_log import MetricsLog
from .optim import build_optimizer, build_scheduler
from .predict import predict
from .speed import fast_student


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); reported as one line naming the term and step."""


@dataclass
class Splits:
    """Whole data splits as tensors (features, int64 labels) for your own data; ``kdlab.data.DataSplits``
    and anything else with these fields works too."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each optimizer step (checkpoint, if due, already written)."""

    epoch: int
    step_in_epoch: int
    global_step: int
    terms: dict[str, float]


@dataclass
class FitResult:
    val: dict[str, float]
    test: dict[str, float]
    epochs: int
    train_seconds: float
    samples_per_second: float
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train: dict[str, float] = field(default_factory=dict)  # the last epoch's metrics on the train_eval rows


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _augment(x: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    from kdlab.data import augment, gaussian_noise, mixup

    if cfg.crop_padding or cfg.hflip:
        x = augment(x, crop_padding=cfg.crop_padding, hflip=cfg.hflip, generator=generator)
    x = mixup(x, cfg.mixup_alpha, generator)
    return gaussian_noise(x, cfg.noise_std, generator)


def train_eval_rows(n: int, size: int, seed: int) -> Tensor:
    """The fixed training rows whose fidelity is logged every epoch: a seeded sample of ``size``, sorted."""
    if size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def evaluate_split(
    student: nn.Module,
    x: Tensor,
    y: Tensor,
    teacher_logits: Tensor | None,
    num_classes: int,
    batch_size: int,
    accelerator: Accelerator,
) -> dict[str, float]:
    logits = predict(student, x, num_classes, batch_size, accelerator)
    return classification_metrics(logits, y, teacher_logits)


def terms_are_finite(terms: dict[str, Tensor], acc: Accelerator, nan_policy: str, where: str) -> bool:
    """Whether every loss term is finite on every process (all take the same decision, or DDP would hang);
    with ``nan_policy == "stop"`` a non-finite term raises ``TrainingError`` naming it instead."""
    bad_terms = torch.stack([~v.detach().isfinite().all() for v in terms.values()]).float()
    if acc.num_processes > 1:
        bad_terms = acc.reduce(bad_terms, "sum")
    finite = bad_terms == 0
    if bool(finite.all()):
        return True
    bad = next(name for name, ok in zip(terms, finite.tolist(), strict=True) if not ok)
    if nan_policy == "stop":
        raise TrainingError(
            f"loss term {bad!r} is not finite at {where}; lower the learning rate or set train.nan_policy=skip"
        )
    return False


def fit(
    student: nn.Module,
    data: Splits,
    method: Method,
    cfg: TrainConfig,
    optimizer_cfg: OptimizerConfig,
    scheduler_cfg: SchedulerConfig,
    *,
    out_dir: Path,
    seed: int = 0,
    teacher: nn.Module | None = None,
    cached_logits: dict[str, Tensor] | None = None,
    augment_cfg: AugmentConfig | None = None,
    resume: bool = False,
    accelerator: Accelerator | None = None,
    callbacks: list[Callable[[StepInfo], None]] | None = None,
) -> FitResult:
    """Train ``student`` with ``method``; write metrics.jsonl, checkpoints/ and model.safetensors in ``out_dir``."""
    acc = accelerator or Accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision)
    set_seed(seed)
    augment_cfg = augment_cfg or AugmentConfig()
    world, rank = acc.num_processes, acc.process_index
    if cfg.batch_size % world:
        raise ConfigError(f"train.batch_size={cfg.batch_size} must be divisible by the {world} processes")
    if method.needs_teacher and teacher is None and cached_logits is None:
        raise ConfigError(f"method {method.name!r} needs a teacher: add a 'teacher' section")
    micro_steps = batches.steps_per_epoch(len(data.y_train), cfg.batch_size)
    if micro_steps == 0:
        raise ConfigError(f"train.batch_size={cfg.batch_size} exceeds the {len(data.y_train)} training rows")
    windows = [min(cfg.grad_accum, micro_steps - s) for s in range(0, micro_steps, cfg.grad_accum)]
    student = acc.prepare(fast_student(student, channels_last=cfg.channels_last))  # DDP, device; same Parameters
    step_student = torch.compile(student) if cfg.compile else student
    raw_student = acc.unwrap_model(student)
    optimizer = build_optimizer(raw_student, optimizer_cfg)
    scheduler = build_scheduler(optimizer, len(windows), cfg.epochs, scheduler_cfg)
    scaler = acc.scaler  # a GradScaler for fp16 on GPU, else None
    autocast = acc.autocast if acc.mixed_precision != "no" else contextlib.nullcontext
    if teacher is not None:
        teacher = teacher.to(acc.device).eval().requires_grad_(False)
    device_data = {
        k: getattr(data, k).to(acc.device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    }
    cached = {k: v.to(acc.device) for k, v in (cached_logits or {}).items()}
    need_teacher = method.needs_teacher
    if augment_cfg.enabled and "train" in cached:
        raise ConfigError("cached teacher logits cannot follow augmented training inputs; pass a live teacher")

    def teacher_logits(split: str, x: Tensor, index: Tensor | None) -> Tensor | None:
        if split in cached:
            return cached[split] if index is None else cached[split][index]
        if teacher is None:
            return None
        if index is None:
            return predict(teacher, x, data.num_classes, cfg.eval_batch_size, acc)
        with torch.inference_mode(), autocast():
            out = teacher(x).float()
        return out.clone()  # a normal tensor, so losses may save it for backward

    def evaluate(split: str, split_teacher_logits: Tensor | None) -> dict[str, float]:
        x, y = device_data[f"x_{split}"], device_data[f"y_{split}"]
        return evaluate_split(raw_student, x, y, split_teacher_logits, data.num_classes, cfg.eval_batch_size, acc)

    position = Position(0, 0, 0, 0)
    checkpoints = out_dir / "checkpoints"
    resume_from = latest_checkpoint(checkpoints) if resume else None
    if resume_from is not None:
        position = load_checkpoint(resume_from, raw_student, optimizer, scheduler)
    log = MetricsLog(out_dir / "metrics.jsonl", acc, position.metrics_offset if resume_from else None)
    val_teacher = teacher_logits("val", device_data["x_val"], None) if need_teacher else None
    fit_rows = train_eval_rows(len(data.y_train), cfg.train_eval_size, seed).to(acc.device)
    if len(fit_rows):  # fidelity on (un-augmented) training rows too: the train/test fidelity gap per epoch
        device_data["x_train_eval"] = device_data["x_train"][fit_rows]
        device_data["y_train_eval"] = device_data["y_train"][fit_rows]
    fit_teacher = None
    if need_teacher and len(fit_rows):
        fit_teacher = (
            cached["train"][fit_rows]
            if "train" in cached
            else teacher_logits("train_eval", device_data["x_train_eval"], None)
        )

    def evaluate_train() -> dict[str, float]:
        return evaluate("train_eval", fit_teacher) if len(fit_rows) else {}

    history: list[dict[str, Any]] = []
    seen, start_time, global_step = 0, time.perf_counter(), position.global_step
    progress = _progress(cfg.progress and acc.is_main_process)
    with progress:
        task = progress.add_task(
            f"{method.name}", total=(cfg.epochs - position.epoch) * micro_steps - position.step_in_epoch, info=""
        )
        for epoch in range(position.epoch, cfg.epochs):
            student.train()
            permutation = batches.epoch_permutation(len(data.y_train), seed, epoch)
            first = position.step_in_epoch if epoch == position.epoch else 0
            sums: dict[str, float] = {}
            counted = 0
            epoch_start = time.perf_counter()
            for step in range(first, micro_steps):
                window = windows[step // cfg.grad_accum]
                sync = (step + 1) % cfg.grad_accum == 0 or step == micro_steps - 1
                index = batches.batch_indices(permutation, step, cfg.batch_size, rank, world).to(acc.device)
                x, y = device_data["x_train"][index], device_data["y_train"][index]
                if augment_cfg.enabled:
                    x = _augment(x, augment_cfg, batches.batch_generator(seed, epoch, step, rank))
                batch = {"x": x, "y": y, "index": index}
                t_logits = teacher_logits("train", x, index) if need_teacher else None
                state = StepState(epoch, global_step, cfg.epochs, epoch + step / micro_steps)
                with contextlib.nullcontext() if sync else acc.no_sync(student):
                    with autocast():
                        s_logits = step_student(x)
                    terms = method.compute(batch, s_logits.float(), t_logits, state)
                    loss = sum(terms.values())
                    if not terms_are_finite(
                        terms, acc, cfg.nan_policy, f"epoch {epoch + 1}, step {step + 1} (optimizer step {global_step})"
                    ):
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    (loss / window if scaler is None else scaler.scale(loss / window)).backward()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                counted += 1
                seen += len(y) * world
                if sync:
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(raw_student.parameters(), cfg.max_grad_norm)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    global_step += 1
                    if global_step % cfg.log_every_steps == 0:
                        log.log(
                            {
                                "step": global_step,
                                "epoch": epoch + 1,
                                "lr": scheduler.get_last_lr()[0],
                                **{f"train/{k}": float(v.detach()) for k, v in terms.items()},
                            },
                            global_step,
                        )
                    if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                        _checkpoint(
                            acc,
                            checkpoints,
                            raw_student,
                            optimizer,
                            scheduler,
                            Position(epoch, step + 1, global_step, log.offset()),
                        )
                    for callback in callbacks or []:
                        callback(
                            StepInfo(epoch, step + 1, global_step, {k: float(v.detach()) for k, v in terms.items()})
                        )
                progress.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {float(loss.detach()):.4f}")
            val = evaluate("val", val_teacher)
            train_eval = evaluate_train()
            record = {
                "epoch": epoch + 1,
                "step": global_step,
                "lr": scheduler.get_last_lr()[0],
                **{f"train/{k}": v / max(counted, 1) for k, v in sums.items()},
                **{f"val/{k}": v for k, v in val.items()},
                **{
                    f"method/{k}": v
                    for k, v in method.current_values(StepState(epoch, global_step, cfg.epochs, epoch)).items()
                },
                **{f"train_eval/{k}": v for k, v in train_eval.items()},
                "epoch_seconds": time.perf_counter() - epoch_start,
            }
            log.log(record, global_step)
            history.append(record)
            progress.update(task, info=f"epoch {epoch + 1}/{cfg.epochs} val acc {val['accuracy']:.4f}")
            if cfg.keeps_epoch(epoch + 1) and acc.is_main_process:
                save_weights(raw_student, checkpoints / f"epoch-{epoch + 1}.safetensors")
            _checkpoint(
                acc, checkpoints, raw_student, optimizer, scheduler, Position(epoch + 1, 0, global_step, log.offset())
            )
    train_seconds = time.perf_counter() - start_time
    test_teacher = teacher_logits("test", device_data["x_test"], None) if need_teacher else None
    test = evaluate("test", test_teacher)
    if not history:  # nothing trained in this call (a finished run resumed): the last epoch's metrics are not here
        val = evaluate("val", val_teacher)
        train_eval = evaluate_train()
    if acc.is_main_process:
        save_weights(raw_student, out_dir / "model.safetensors")
    acc.wait_for_everyone()
    return FitResult(
        val=val,
        test=test,
        epochs=cfg.epochs,
        train_seconds=train_seconds,
        samples_per_second=seen / max(train_seconds, 1e-9),
        steps=global_step,
        history=history,
        train=train_eval,
    )


def _checkpoint(acc: Accelerator, root: Path, model: nn.Module, optimizer, scheduler, position: Position) -> None:
    if acc.is_main_process:
        save_checkpoint(root, model, optimizer, scheduler, position)
    acc.wait_for_everyone()
