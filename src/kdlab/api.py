"""One call per command — what the CLI and users' scripts call: ``train``, ``distill``, ``fit_model``,
``evaluate``, ``load_model``, ``cache_logits``, ``select_ptloss`` (also as ``kdlab.train``, ``kdlab.distill``, ...).

Each takes a config (YAML path, dict or a run config) and hands it to its task (``kdlab.tasks``), which writes
the run directory of DESIGN §3.4: config.yaml (resolved), metrics.jsonl, checkpoints/, model.safetensors and,
last, summary.json — a run directory is complete exactly when summary.json exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdlab import tasks
from kdlab.config import RunConfig, load_config
from kdlab.engine.rundir import write_evaluation
from kdlab.errors import ConfigError

Config = str | Path | dict[str, Any] | RunConfig


def train(
    config: Config, overrides: list[str] | None = None, *, resume: bool = False, overwrite: bool = False, callbacks=None
) -> dict:
    """Train ``config.model`` with cross-entropy (e.g. a teacher); returns the run's summary."""
    cfg = load_config(config, overrides)
    return tasks.get(cfg.task).run(cfg, distilling=False, resume=resume, overwrite=overwrite, callbacks=callbacks)


def distill(
    config: Config, overrides: list[str] | None = None, *, resume: bool = False, overwrite: bool = False, callbacks=None
) -> dict:
    """Train ``config.model`` from ``config.teacher`` with ``config.method``; returns the run's summary.

    ``callbacks``: callables receiving a ``kdlab.engine.StepInfo`` after every optimizer step.
    """
    cfg = load_config(config, overrides)
    return tasks.get(cfg.task).run(cfg, distilling=True, resume=resume, overwrite=overwrite, callbacks=callbacks)


def fit_model(
    config: Config,
    model: nn.Module,
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks=None,
) -> dict:
    """Train this given ``model`` (e.g. a pruned one) with ``config``, starting from its current weights.

    ``method: ce`` fine-tunes with cross-entropy, any other method distils from ``config.teacher``. ``config.model``
    must describe ``model`` (same parameter names and shapes: a ``ConfigError`` otherwise) so that the run
    directory's config.yaml reloads it for ``kdlab evaluate`` and ``teacher.run``. Returns the run's summary.
    """
    cfg = load_config(config, overrides)
    distilling = cfg.method.name != "ce"
    task = tasks.get(cfg.task)
    return task.run(cfg, distilling=distilling, resume=resume, overwrite=overwrite, callbacks=callbacks, student=model)


def cache_logits(config: Config, overrides: list[str] | None = None) -> Path:
    """Run the teacher once over train/val/test and store its outputs for later runs; returns the cache's path."""
    cfg = load_config(config, overrides)
    if cfg.teacher is None:
        raise ConfigError("cache-logits needs a 'teacher' section")
    return tasks.get(cfg.task).cache_logits(cfg)


def describe_cache(config: Config, path: Path) -> str | None:
    """One line about the cache ``cache_logits`` wrote for this config's task (None: nothing to add)."""
    return tasks.get(load_config(config).task).describe_cache(path)


def select_ptloss(config: Config, overrides: list[str] | None = None, output: str | Path | None = None):
    """``kdlab select-ptloss``: choose ptloss's epsilon for the config's teacher and data; returns the selection
    and the directory written.

    The config's ``method`` must be ptloss (its candidates/order/per_class/scale/selection_seed/
    selection_metric are used; epsilon is treated as auto). Files go to ``output`` (default:
    ``<out>-ptloss-selection/``) so that the run directory itself stays free for ``distill``.
    """
    cfg = load_config(config, overrides)
    if cfg.method.name != "ptloss":
        raise ConfigError(f"select-ptloss needs method.name: ptloss, got {cfg.method.name!r}")
    if cfg.teacher is None:
        raise ConfigError("select-ptloss needs a 'teacher' section")
    return tasks.get(cfg.task).select_ptloss(cfg, Path(output) if output else None)


def evaluate(
    run_dir: str | Path, splits: tuple[str, ...] = ("train", "val", "test"), *, latency: bool = True
) -> dict[str, Any]:
    """Metrics of a finished run's model on every split (its task decides which: for classification accuracy,
    NLL, ECE, confusion matrices, fidelity to the teacher; for language models perplexity and agreement) and its
    footprint. Written to evaluation.json and, under "evaluation", into summary.json."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file() or not (run / "model.safetensors").is_file():
        raise ConfigError(f"{run} is not a finished kdlab run directory (config.yaml and model.safetensors needed)")
    cfg = load_config(run / "config.yaml")
    return write_evaluation(run, tasks.get(cfg.task).evaluate(run, cfg, splits, latency))


def load_model(run_dir: str | Path) -> nn.Module:
    """A finished run's model on CPU in eval mode, for the values you have: a classifier takes raw features (a
    CSV's numbers, 0..255 pixels) — the run's saved preprocessing is its first operation."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file() or not (run / "model.safetensors").is_file():
        raise ConfigError(f"{run} is not a finished kdlab run directory (config.yaml and model.safetensors needed)")
    cfg = load_config(run / "config.yaml")
    return tasks.get(cfg.task).load_model(run, cfg)


def summary_line(summary: dict[str, Any]) -> str | None:
    """The task's extra line for the CLI's summary table (e.g. a language model's perplexity)."""
    return tasks.get(summary.get("task", "classify")).summary_line(summary)
