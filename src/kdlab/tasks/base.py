"""What a task is: the socket every kind of job plugs into (``classify``, ``causal_lm``; later ``text_classify``,
``cooperative``, ``rl``).

A task owns its config sections (``kdlab.config``: the run config is a union discriminated by ``task``), its
data, how a batch becomes model outputs (a ``TaskStep`` for the engine's one loop — or its own driver for a
task that is not a gradient loop), its evaluation, its teacher cache and its summary. Commands reach a task
only through this registry: nothing outside it asks which task a config is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kdlab.config import RunConfig
from kdlab.errors import ConfigError


class Task:
    name: ClassVar[str] = ""

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
        """Train (``distilling=False``: plain cross-entropy) or distil ``cfg``; write the run directory and return
        its summary. ``student``: start from this model instead of a fresh ``cfg.model`` (where supported)."""
        raise NotImplementedError

    def evaluate(self, run: Path, cfg: RunConfig, splits: tuple[str, ...], latency: bool) -> dict[str, Any]:
        raise ConfigError(f"kdlab evaluate does not support task {self.name!r}")

    def load_model(self, run: Path, cfg: RunConfig) -> Any:
        """A finished run's model, ready for the inputs a user has (its preprocessing inside), in eval mode."""
        raise ConfigError(f"kdlab.load_model does not support task {self.name!r}")

    def predict_proba(self, run: Path, cfg: RunConfig, raw: Any, retrieval: bool = True) -> Any:
        """Probabilities of a finished run on raw inputs, through the method's predictor where it left one."""
        raise ConfigError(f"kdlab.predict_proba does not support task {self.name!r}")

    def cache_logits(self, cfg: RunConfig) -> Path:
        raise ConfigError(f"kdlab cache-logits does not support task {self.name!r}")

    def describe_cache(self, path: Path) -> str | None:
        """One line about a cache this task wrote (None: nothing to add)."""
        return None

    def select_ptloss(self, cfg: RunConfig, output: Path | None) -> tuple[Any, Path]:
        raise ConfigError(f"kdlab select-ptloss does not support task {self.name!r}")

    def check(self, cfg: RunConfig) -> None:
        """Validate what a run would validate first (its method), before a chain or sweep runs anything."""

    def summary_line(self, summary: dict[str, Any]) -> str | None:
        """A line of numbers the CLI's classification table has no column for (None: nothing)."""
        return None


_TASKS: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: the task becomes available to configs as ``task: <cls.name>``."""
    if not cls.name or cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} has no name or is already registered")
    _TASKS[cls.name] = cls()
    return cls


def available() -> list[str]:
    return sorted(_TASKS)


def get(name: str) -> Task:
    if name not in _TASKS:
        raise ConfigError(f"config: task: unknown task {name!r}; available: {', '.join(available())}")
    return _TASKS[name]
