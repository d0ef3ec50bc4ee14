"""Resumable checkpoints: student weights (safetensors) + optimizer/scheduler/RNG/position, written atomically.

Each checkpoint is a directory written under a temporary name and renamed into place; the file
``checkpoints/latest`` (itself replaced atomically) names the newest complete one. A crash at any
moment therefore leaves either the old or the new checkpoint, never a half-written one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdlab.io import atomic_write_text


@dataclass
class Position:
    epoch: int  # epoch being trained (0-based)
    step_in_epoch: int  # micro-batches of that epoch already done
    global_step: int  # optimizer steps done
    metrics_offset: int  # bytes of metrics.jsonl written so far (resume truncates to it)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Student weights only, as safetensors, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(model_state(model), str(tmp), metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(
    root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, position: Position, keep: int = 1
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{position.global_step:09d}-e{position.epoch}-b{position.step_in_epoch}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        save_file(model_state(model), str(tmp / "model.safetensors"))
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "position": [position.epoch, position.step_in_epoch, position.global_step, position.metrics_offset],
        }
        torch.save(state, tmp / "state.pt")
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(root / "latest", name + "\n")
    older = sorted(p for p in root.glob("step-*") if p.name != name)  # names sort by step
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.pt").is_file() and (path / "model.safetensors").is_file() else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> Position:
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return Position(*state["position"])
