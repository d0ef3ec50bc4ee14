"""``task: cooperative`` — cooperative distillation between heterogeneous learners (Livanos, Davidson & Wong,
AAAI 2024): trees, nearest neighbours and networks teach each other through counterfactual virtual instances.

A task with its own driver (``run``), not a gradient method: see ``run.py`` for a round, ``counterfactual.py``
for the searches, ``pool.py`` for the data, deficiency sets and feature maps, ``learners.py`` for the learners.
"""

from __future__ import annotations

from typing import Any

from kdlab.config import CooperativeConfig, RunConfig
from kdlab.errors import ConfigError

from ..base import Task, register


@register
class CooperativeTask(Task):
    name = "cooperative"

    def run(
        self,
        cfg: RunConfig,
        *,
        distilling: bool,
        resume: bool,
        overwrite: bool,
        callbacks: list[Any] | None = None,
        student: Any = None,
    ) -> dict[str, Any]:
        from .run import run_cooperative

        if not isinstance(cfg, CooperativeConfig):
            raise ConfigError(f"task cooperative got a {type(cfg).__name__}")
        if resume:
            raise ConfigError("task: cooperative keeps no checkpoints to resume; run it again with --overwrite")
        if student is not None or callbacks:
            raise ConfigError("task: cooperative takes its learners from the config (no student, no callbacks)")
        return run_cooperative(cfg, overwrite=overwrite)

    def summary_line(self, summary: dict[str, Any]) -> str | None:
        """Test accuracy per learner and stage (alone, each round, the baselines), one line per learner."""
        lines = []
        for name, stages in summary.get("learners", {}).items():
            lines.append(f"{name}: " + ", ".join(f"{stage} {acc:.4f}" for stage, acc in stages.items()))
        return "test accuracy — " + "; ".join(lines) if lines else None
