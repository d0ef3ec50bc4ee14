"""Reinforcement learning (``task: rl``): policy distillation and dual policy distillation on Gymnasium.

``kdlab.rl.run(config)`` (or ``kdlab rl CONFIG``) runs one config: a single learner (Stable-Baselines3 PPO, or
TD3/SAC for continuous actions), DPD's two learners teaching each other where the peer's value is higher (Lai
et al., IJCAI 2020), or a teacher policy distilled into a smaller student. Needs the ``rl`` extra (gymnasium,
stable-baselines3).
"""

from __future__ import annotations

from typing import Any

from .imitation import divergence, dpd_step, imitation_step, normalise, raw_weights
from .run import run_rl
from .teacher import load_policy

__all__ = ["divergence", "dpd_step", "imitation_step", "load_policy", "normalise", "raw_weights", "run", "run_rl"]


def run(
    config: Any, overrides: list[str] | None = None, *, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Run a ``task: rl`` config (path, dict or config) in any mode; returns the summary (``kdlab rl``)."""
    from kdlab.config import load_config
    from kdlab.engine.runguard import guard_run
    from kdlab.errors import ConfigError

    cfg = load_config(config, overrides)
    if cfg.task != "rl":
        raise ConfigError(f"kdlab rl runs task: rl configs; this one is task: {cfg.task}")
    with guard_run(cfg, resume=resume, overwrite=overwrite) as finished:
        if finished is not None:
            return {**finished, "finished_before": cfg.out}
        return run_rl(cfg, distilling=cfg.rl.mode != "single", resume=resume, overwrite=overwrite)
