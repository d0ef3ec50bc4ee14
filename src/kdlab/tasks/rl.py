"""``task: rl``: policies on Gymnasium environments (``kdlab.rl``), reached through the task registry.

The task has its own loop (rounds of environment steps, not epochs over a data set), so ``run`` hands the
config to ``kdlab.rl``; ``kdlab train`` runs ``rl.mode: single`` or ``dpd``, ``kdlab distill`` runs ``dpd`` or
``distill``. ``kdlab.rl`` (gymnasium, stable-baselines3) is imported only when a run needs it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError

from .base import Task, register


def _rl():
    if importlib.util.find_spec("stable_baselines3") is None or importlib.util.find_spec("gymnasium") is None:
        raise ConfigError("task: rl needs the rl extra: pip install 'kdlab[rl]'")
    import kdlab.rl

    return kdlab.rl


def run_config(config: Any, overrides: list[str] | None = None, *, resume: bool = False, overwrite: bool = False):
    """``kdlab rl CONFIG``: any ``rl.mode`` (``kdlab.rl.run``)."""
    return _rl().run(config, overrides, resume=resume, overwrite=overwrite)


@register
class RLTask(Task):
    name = "rl"

    def run(self, cfg, *, distilling, resume, overwrite, callbacks=None, student=None) -> dict[str, Any]:
        if student is not None:
            raise ConfigError("task: rl starts its policies from the config (no student model argument)")
        return _rl().run_rl(cfg, distilling=distilling, resume=resume, overwrite=overwrite, callbacks=callbacks)

    def evaluate(self, run: Path, cfg, splits, latency) -> dict[str, Any]:
        from kdlab.rl.envs import evaluate_policy_return
        from kdlab.rl.run import EVAL_SEED

        _, policy = _rl().load_policy(run)
        result = evaluate_policy_return(policy, cfg.rl.env, cfg.rl.eval_episodes, EVAL_SEED)
        return {"test": {"return": result["return_mean"], "return_std": result["return_std"]}}

    def summary_line(self, summary: dict[str, Any]) -> str | None:
        line = f"{summary['env']}: final return {summary['final_return']:.1f}, AUC {summary['auc']:.1f}"
        line += f" ({summary['env_steps']:,} environment steps)"
        if "teacher_return" in summary:
            line += f"; teacher {summary['teacher_return']:.1f} ({summary['teacher_parameters']:,} parameters)"
        return line
