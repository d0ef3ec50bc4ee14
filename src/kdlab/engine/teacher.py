"""Loading a frozen teacher: from a finished run directory, or from a model definition plus weights."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from kdlab import models
from kdlab.config import ConfigError, ModelConfig, TeacherConfig


@dataclass
class TeacherSource:
    model_cfg: ModelConfig
    weights: Path
    directory: Path  # where a logit cache lives by default

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        with open(self.weights, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def resolve_teacher(cfg: TeacherConfig) -> TeacherSource:
    if cfg.run is not None:
        run = Path(cfg.run)
        config_file = run / "config.yaml"
        if not config_file.is_file():
            raise ConfigError(f"teacher.run: {run} is not a kdlab run directory (no config.yaml)")
        raw = yaml.safe_load(config_file.read_text()) or {}
        model_cfg = ModelConfig.model_validate(raw.get("model", {}))
        if cfg.checkpoint_epoch is not None:
            weights = run / "checkpoints" / f"epoch-{cfg.checkpoint_epoch}.safetensors"
        else:
            weights = run / "model.safetensors"
        directory = run
    else:
        model_cfg, weights = cfg.model, Path(cfg.weights)
        directory = weights.parent
    if not weights.is_file():
        hint = " (was the teacher run finished, and that epoch kept?)" if cfg.run else ""
        raise ConfigError(f"teacher weights not found: {weights}{hint}")
    return TeacherSource(model_cfg=model_cfg, weights=weights, directory=directory)


def load_teacher(source: TeacherSource, num_classes: int, in_shape: tuple[int, ...]) -> nn.Module:
    """The teacher in eval mode with gradients off (it is never trained, wrapped by DDP or checkpointed)."""
    teacher = models.create(source.model_cfg.name, num_classes, in_shape, **source.model_cfg.kwargs)
    try:
        state = load_file(str(source.weights))
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"teacher weights {source.weights} are unreadable: {err}") from None
    try:
        teacher.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(
            f"teacher weights {source.weights} do not fit model {source.model_cfg.name!r}: {first}"
        ) from None
    return teacher.eval().requires_grad_(False)
