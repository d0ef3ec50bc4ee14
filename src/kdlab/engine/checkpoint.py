"""Resumable checkpoints: student weights (safetensors), the method's own modules (``method.safetensors``) and
state, optimizer/scheduler/RNG/position, written atomically.

Each checkpoint is a directory written under a temporary name and renamed into place; the file
``checkpoints/latest`` (itself replaced atomically) names the newest complete one. A crash at any
moment therefore leaves either the old or the new checkpoint, never a half-written one.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kdlab.errors import TrainingError
from kdlab.io import TEMP_SUFFIX, atomic_write_text, set_default_mode


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        save_file(model_state(model), str(tmp), metadata=metadata)
        set_default_mode(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def modules_state(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The weights of named modules as one flat safetensors mapping, ``<module>.<parameter>``."""
    return {f"{name}.{k}": v for name, module in modules.items() for k, v in model_state(module).items()}


def load_modules_state(modules: Mapping[str, nn.Module], state: dict[str, torch.Tensor]) -> None:
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def save_checkpoint(
    root: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: Position,
    method: _Stateful | None = None,
    method_modules: Mapping[str, nn.Module] | None = None,
    keep: int = 1,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{position.global_step:09d}-e{position.epoch}-b{position.step_in_epoch}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-", suffix=TEMP_SUFFIX))
    try:
        save_file(model_state(model), str(tmp / "model.safetensors"))
        if method_modules:
            save_file(modules_state(method_modules), str(tmp / "method.safetensors"))
        state = {
            "method": method.state_dict() if method is not None else {},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "position": [position.epoch, position.step_in_epoch, position.global_step, position.metrics_offset],
        }
        torch.save(state, tmp / "state.pt")
        for written in (tmp, *tmp.iterdir()):
            set_default_mode(written)
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


def _unreadable(path: Path, err: Exception) -> TrainingError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, pickle.UnpicklingError):
        return TrainingError(
            f"checkpoint {path / 'state.pt'} holds objects other than tensors and numbers, which kdlab never "
            f"unpickles (torch.load weights_only=True: {first}); pass --overwrite to start the run again"
        )
    return TrainingError(
        f"checkpoint {path} is unreadable (truncated or corrupt: {type(err).__name__}: {first}); "
        "pass --overwrite to start the run again"
    )


def verify_checkpoint(path: Path) -> None:
    """Read a checkpoint's headers and state without keeping it (``mmap``: no copy of the tensors), so that a
    resume refuses a truncated or unsafe checkpoint before it touches the run directory."""
    try:
        for name in ("model.safetensors", "method.safetensors"):
            if (path / name).is_file():
                with safe_open(str(path / name), framework="pt"):
                    pass
        torch.load(path / "state.pt", map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise _unreadable(path, err) from None


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    method: _Stateful | None = None,
    method_modules: Mapping[str, nn.Module] | None = None,
) -> Position:
    try:
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        if method_modules:
            load_modules_state(method_modules, load_file(str(path / "method.safetensors")))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or holding objects that weights_only refuses
        raise _unreadable(path, err) from None
    if method is not None:
        method.load_state_dict(state.get("method", {}))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return Position(*state["position"])
