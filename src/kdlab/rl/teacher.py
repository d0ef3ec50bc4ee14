"""The teacher of a policy distillation: the best policy of a finished ``task: rl`` run (its model.safetensors).

Checked before the student's run directory is touched: the teacher must be a finished rl run on the same
environment; its network shape comes from its own config.yaml, so any learner size can teach any student.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from stable_baselines3.common.policies import BasePolicy

from kdlab.config import RunConfig, load_config
from kdlab.errors import ConfigError

from .algorithms import build_policy


def load_policy(run: Path) -> tuple[RunConfig, BasePolicy]:
    """A finished rl run's config and its best policy (``model.safetensors``), in eval mode."""
    if not (run / "summary.json").is_file() or not (run / "model.safetensors").is_file():
        raise ConfigError(f"{run} is not a finished task: rl run (no summary.json / model.safetensors)")
    cfg = load_config(run / "config.yaml")
    if cfg.task != "rl":
        raise ConfigError(f"{run} is a task: {cfg.task} run, not task: rl")
    hidden = cfg.rl.distill.hidden if cfg.rl.mode == "distill" else cfg.rl.hidden
    policy = build_policy(cfg.rl, hidden)
    try:
        policy.load_state_dict(load_file(str(run / "model.safetensors")))
    except (RuntimeError, OSError) as err:
        raise ConfigError(f"{run / 'model.safetensors'} does not fit its config: {str(err).splitlines()[0]}") from None
    policy.set_training_mode(False)
    return cfg, policy


def load_teacher(cfg: RunConfig) -> BasePolicy:
    teacher = cfg.teacher
    if teacher is None or teacher.run is None:
        raise ConfigError("rl.mode: distill needs teacher.run: a finished task: rl run directory")
    teacher_cfg, policy = load_policy(Path(teacher.run))
    if teacher_cfg.rl.env.id != cfg.rl.env.id:
        raise ConfigError(f"teacher.run learned {teacher_cfg.rl.env.id}, this run's environment is {cfg.rl.env.id}")
    return policy
