"""The one training loop of every gradient task: explicit, top to bottom, on ``accelerate.Accelerator``.

What a batch is, how student and teacher are run and how a loss is normalised belong to the task, given as a
``TaskStep`` (``kdlab.engine.supervised`` for tensors → classes, the causal-LM task for token blocks); what a
loss is belongs to the method. The loop owns everything else, written once: the student and the method's own
modules prepared together (DDP, mixed precision), explicit gradient accumulation (an epoch's last, shorter
window handled exactly), the fp16 gradient scaler, clipping, the NaN policy, alternating phases
(``Method.trains``), checkpoints at optimizer-step boundaries (a resume replays the same arithmetic),
callbacks, the progress bar and metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor, nn

from kdlab.config import TrainConfig
from kdlab.errors import ConfigError, TrainingError
from kdlab.methods import Method, Outputs, StepState

from . import batches
from .checkpoint import Position, latest_checkpoint, load_checkpoint, save_checkpoint, save_weights
from .metrics_log import MetricsLog
from .optim import build_optimizer, build_scheduler


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each optimizer step (checkpoint, if due, already written)."""

    epoch: int
    step_in_epoch: int
    global_step: int
    terms: dict[str, float]
    epoch_end: bool = False  # the epoch's last optimizer step: the weights its evaluation will see


@dataclass
class LoopResult:
    """What the loop measured; ``evaluations`` maps a split to the task's metrics of the final student."""

    evaluations: dict[str, dict[str, float]]
    epochs: int
    train_seconds: float
    items_per_second: float  # samples (classification) or target tokens (language models) per second
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)


class TaskStep(Protocol):
    """What a gradient task gives the loop. ``student`` is the raw network; the loop wraps it with the method's
    modules (``Trainable``) and prepares the pair; ``forward`` receives that prepared module."""

    label: str
    rows: int  # training rows (examples, token blocks) of an epoch
    student: nn.Module

    def batch(self, index: Tensor, epoch: int, step: int, window_rows: int) -> dict[str, Tensor]: ...

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Outputs, Outputs | None]: ...

    def objective(self, terms: dict[str, Tensor], batch: dict[str, Tensor], window_rows: int) -> tuple[Tensor, float]:
        """The tensor to backpropagate — normalised so that a window's gradient is the mean over its
        ``window_rows`` global rows (every process together), whatever the sizes of its micro-batches — and the
        factor that turns a term into this micro-batch's mean loss (for the logs)."""
        ...

    def count(self, batch: dict[str, Tensor]) -> int: ...

    def evaluate(self, splits: tuple[str, ...]) -> dict[str, dict[str, float]]: ...

    def describe_epoch(self, evaluations: dict[str, dict[str, float]]) -> str: ...


def row_lengths(task: TaskStep) -> Tensor:
    """The training rows' lengths, for ``train.group_by_length`` (a task with inputs of varying length has them)."""
    lengths = getattr(task, "lengths", None)
    if lengths is None:
        raise ConfigError("train.group_by_length is for inputs of varying length (task: text_classify)")
    return lengths


class Trainable(nn.Module):
    """The student and the method's modules as one module: what Accelerate prepares, so DDP averages the
    gradients of both; its forward is the student's. ``state_dict`` of the student alone is what is saved."""

    def __init__(self, student: nn.Module, method_modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.method = nn.ModuleDict(method_modules)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"student": [p for p in self.student.parameters() if p.requires_grad]}
        for name, module in self.method.items():
            groups[name] = [p for p in module.parameters() if p.requires_grad]
        return groups


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


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


def run_loop(
    task: TaskStep,
    method: Method,
    cfg: TrainConfig,
    *,
    accelerator: Accelerator,
    out_dir: Path,
    seed: int,
    resume: bool = False,
    callbacks: list[Callable[[StepInfo], None]] | None = None,
) -> tuple[LoopResult, Trainable]:
    """Train ``task.student`` (and ``method.modules()``) for ``cfg.epochs``; write metrics.jsonl and checkpoints/.

    Returns the result and the unwrapped ``Trainable`` (the caller saves the student and the method's modules).
    """
    acc = accelerator
    set_seed(seed)
    world, rank = acc.num_processes, acc.process_index
    if cfg.batch_size % world:
        raise ConfigError(f"train.batch_size={cfg.batch_size} must be divisible by the {world} processes")
    sizes = batches.batch_sizes(task.rows, cfg.batch_size, world, drop_last=cfg.drop_last)
    micro_steps = len(sizes)
    if micro_steps == 0:
        raise ConfigError(
            f"train.batch_size={cfg.batch_size} exceeds the {task.rows} training rows and train.drop_last is set "
            f"(or fewer than 2 rows per process are left for a partial batch)"
        )
    windows = [sum(sizes[s : s + cfg.grad_accum]) for s in range(0, micro_steps, cfg.grad_accum)]  # rows each
    model = acc.prepare(Trainable(task.student, method.modules()))  # DDP, device; the same Parameters
    step_model = torch.compile(model) if cfg.compile else model
    trainable: Trainable = acc.unwrap_model(model)
    groups = trainable.parameter_groups()
    # an alternating method leaves a phase's other groups without gradients, which DDP cannot reduce
    touch_every_parameter = method.phased and acc.num_processes > 1
    optimizer = build_optimizer(groups, cfg.optimizer)
    scheduler = build_scheduler(optimizer, len(windows), cfg.epochs, cfg.scheduler)
    scaler = acc.scaler  # a GradScaler for fp16 (on GPU; None on CPU and for bf16)
    autocast = acc.autocast if acc.mixed_precision != "no" else contextlib.nullcontext
    checkpoints = out_dir / "checkpoints"
    position = Position(0, 0, 0, 0)
    resume_from = latest_checkpoint(checkpoints) if resume else None
    if resume_from is not None:
        position = load_checkpoint(resume_from, trainable.student, optimizer, scheduler, method, trainable.method)
    log = MetricsLog(out_dir / "metrics.jsonl", acc, position.metrics_offset if resume_from else None)

    def checkpoint(epoch: int, step_in_epoch: int) -> None:
        if acc.is_main_process:
            state = Position(epoch, step_in_epoch, global_step, log.offset())
            save_checkpoint(checkpoints, trainable.student, optimizer, scheduler, state, method, trainable.method)
        acc.wait_for_everyone()

    history: list[dict[str, Any]] = []
    evaluations: dict[str, dict[str, float]] = {}
    seen, start_time, global_step = 0, time.perf_counter(), position.global_step
    with progress_bar(cfg.progress and acc.is_main_process) as progress:
        done = position.epoch * micro_steps + position.step_in_epoch
        bar = progress.add_task(task.label, total=cfg.epochs * micro_steps, completed=done, info="")
        for epoch in range(position.epoch, cfg.epochs):
            model.train()
            permutation = batches.epoch_permutation(task.rows, seed, epoch)
            if cfg.group_by_length:
                permutation = batches.group_by_length(permutation, row_lengths(task), cfg.batch_size, seed, epoch)
            first = position.step_in_epoch if epoch == position.epoch else 0
            sums: dict[str, float] = {}
            counted = 0  # micro-batches of this epoch trained in this call (a resumed epoch starts later)
            epoch_start = time.perf_counter()
            for step in range(first, micro_steps):
                window_rows = windows[step // cfg.grad_accum]
                sync = (step + 1) % cfg.grad_accum == 0 or step == micro_steps - 1
                index = batches.batch_indices(permutation, step, cfg.batch_size, sizes[step], rank, world)
                batch = task.batch(index.to(acc.device), epoch, step, window_rows)
                state = StepState(epoch, global_step, cfg.epochs, epoch + step / micro_steps)
                with contextlib.nullcontext() if sync else acc.no_sync(model):
                    with autocast():
                        student_out, teacher_out = task.forward(step_model, batch)
                    terms = method.compute(batch, student_out, teacher_out, state)
                    where = f"epoch {epoch + 1}, step {step + 1} (optimizer step {global_step})"
                    if not terms_are_finite(terms, acc, cfg.nan_policy, where):
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    loss, log_scale = task.objective(terms, batch, window_rows)
                    if touch_every_parameter:  # DDP waits for every parameter's gradient: a phase's idle ones get 0
                        loss = loss + 0.0 * sum(p.sum() for p in trainable.parameters())
                    (loss if scaler is None else scaler.scale(loss)).backward()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach()) * log_scale
                counted += 1
                seen += task.count(batch)
                if sync:
                    active = method.trains(state)
                    if active is not None:  # an alternating phase: the other groups keep their weights
                        for name in groups.keys() - set(active):
                            for p in groups[name]:
                                p.grad = None
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(trainable.parameters(), cfg.max_grad_norm)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    global_step += 1
                    logged = {k: float(v.detach()) * log_scale for k, v in terms.items()}
                    if global_step % cfg.log_every_steps == 0:
                        record = {"step": global_step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0]}
                        log.log({**record, **{f"train/{k}": v for k, v in logged.items()}}, global_step)
                    if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                        checkpoint(epoch, step + 1)
                    for callback in callbacks or []:
                        callback(StepInfo(epoch, step + 1, global_step, logged, step == micro_steps - 1))
                shown = sum(float(v.detach()) for v in terms.values()) * log_scale
                progress.update(bar, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {shown:.4f}")
            last_epoch = epoch + 1 == cfg.epochs
            evaluating = last_epoch or (epoch + 1) % cfg.eval_every == 0  # the final weights are always measured
            evaluations = task.evaluate(("val", "train_eval")) if evaluating else {}
            method_values = method.current_values(StepState(epoch, global_step, cfg.epochs, epoch))
            record = {
                "epoch": epoch + 1,
                "step": global_step,
                "lr": scheduler.get_last_lr()[0],
                **{f"train/{k}": v / max(counted, 1) for k, v in sums.items()},
                **{f"val/{k}": v for k, v in evaluations.get("val", {}).items()},
                **{f"method/{k}": v for k, v in method_values.items()},
                **{f"{s}/{k}": v for s, metrics in evaluations.items() if s != "val" for k, v in metrics.items()},
                "epoch_seconds": time.perf_counter() - epoch_start,
            }
            log.log(record, global_step)
            history.append(record)
            if evaluating:
                progress.update(bar, info=f"epoch {epoch + 1}/{cfg.epochs} {task.describe_epoch(evaluations)}")
            if cfg.keeps_epoch(epoch + 1) and acc.is_main_process:
                save_weights(trainable.student, checkpoints / f"epoch-{epoch + 1}.safetensors")
            checkpoint(epoch + 1, 0)
    train_seconds = time.perf_counter() - start_time
    if not history:  # nothing trained in this call (a finished run resumed): the last epoch's metrics are not here
        evaluations = task.evaluate(("val", "train_eval"))
    evaluations = {**evaluations, **task.evaluate(("test",))}
    result = LoopResult(
        evaluations=evaluations,
        epochs=cfg.epochs,
        train_seconds=train_seconds,
        items_per_second=seen / max(train_seconds, 1e-9),
        steps=global_step,
        history=history,
    )
    return result, trainable
