"""Optimizer and a per-step learning-rate schedule (linear warm-up, then cosine, step or constant)."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdlab.config import OptimizerConfig, SchedulerConfig


def build_optimizer(model: nn.Module | dict[str, list[nn.Parameter]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """One optimizer over a model's trainable parameters, or over named groups (the student and each module a
    method owns: one parameter group each, in that order, with the group's name in its ``name`` key)."""
    if isinstance(model, nn.Module):
        params: list = [p for p in model.parameters() if p.requires_grad]
    else:
        params = [{"params": group, "name": name} for name, group in model.items() if group]
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: SchedulerConfig) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    total = max(steps_per_epoch * epochs, 1)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        epoch = step / max(steps_per_epoch, 1)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, cfg: SchedulerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, epochs, cfg))
