"""One call per command — what the CLI and users' scripts call: ``train``, ``distill``, ``fit_model``,
``evaluate``, ``load_model``, ``cache_logits``, ``select_ptloss`` (also as ``kdlab.train``, ``kdlab.distill``, ...).

Each takes a config (YAML path, dict or a run config) and hands it to its task (``kdlab.tasks``), which writes
the run directory of DESIGN §3.4: config.yaml (resolved), metrics.jsonl, checkpoints/, model.safetensors and,
last, summary.json — a run directory is complete exactly when summary.json exists. Training calls hold the
directory's lock and check it first (``kdlab.engine.runguard``); every call that builds a model from a config
runs under the import policy of ``kdlab.models.trust`` (``trust_remote_code``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from kdlab import tasks
from kdlab.config import RunConfig, load_config
from kdlab.engine.rundir import write_evaluation
from kdlab.engine.runguard import guard_run
from kdlab.errors import ConfigError
from kdlab.models.trust import import_policy, policy_environment

Config = str | Path | dict[str, Any] | RunConfig
FINISHED = "finished_before"  # a summary that --resume found finished (nothing done): its run directory


def _config_dir(config: Config) -> Path | None:
    """Where a config file lives: the user's own model modules are looked for there (and in the cwd)."""
    return Path(config).resolve().parent if isinstance(config, str | Path) else None


@contextmanager
def model_imports(config: Config | None, trust_remote_code: bool | None = None) -> Iterator[None]:
    """Build models under the import policy of ``kdlab.models.trust``: the user's own modules are looked for
    beside ``config`` (a file) and in the cwd; other code runs only with ``trust_remote_code``."""
    with import_policy(_config_dir(config) if config is not None else None, trust_remote_code):
        yield


def import_environment() -> dict[str, str]:
    """Environment variables that carry the import policy in force to a ``kdlab`` child process (sweep jobs)."""
    return policy_environment()


def _run(config: Config, overrides, *, distilling: bool, resume, overwrite, extend, trust, callbacks, student=None):
    with model_imports(config, trust):
        cfg = load_config(config, overrides)
        if student is not None:
            distilling = cfg.method.name != "ce"
        with guard_run(cfg, resume=resume, overwrite=overwrite, extend=extend) as finished:
            if finished is not None:
                return {**finished, FINISHED: cfg.out}
            task = tasks.get(cfg.task)
            resume = resume or extend
            more = {} if student is None else {"student": student}
            return task.run(cfg, distilling=distilling, resume=resume, overwrite=overwrite, callbacks=callbacks, **more)


def train(
    config: Config,
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    extend: bool = False,
    trust_remote_code: bool | None = None,
    callbacks=None,
) -> dict:
    """Train ``config.model`` with cross-entropy (e.g. a teacher); returns the run's summary.

    ``resume``: continue the unfinished run in ``config.out`` (same configuration; a finished one is returned
    as it is, with ``finished_before``: its directory). ``extend``: train a finished run on to a larger ``train.epochs``
    (its finished model is kept in ``finished-epoch-<N>/``). ``trust_remote_code``: allow a
    ``package.module:callable`` model from outside your own code (``kdlab.models.trust``).
    """
    return _run(
        config, overrides, distilling=False, resume=resume, overwrite=overwrite, extend=extend,
        trust=trust_remote_code, callbacks=callbacks,
    )  # fmt: skip


def distill(
    config: Config,
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    extend: bool = False,
    trust_remote_code: bool | None = None,
    callbacks=None,
) -> dict:
    """Train ``config.model`` from ``config.teacher`` with ``config.method``; returns the run's summary.

    ``callbacks``: callables receiving a ``kdlab.engine.StepInfo`` after every optimizer step; ``resume``,
    ``extend`` and ``trust_remote_code`` as for ``train``.
    """
    return _run(
        config, overrides, distilling=True, resume=resume, overwrite=overwrite, extend=extend,
        trust=trust_remote_code, callbacks=callbacks,
    )  # fmt: skip


def fit_model(
    config: Config,
    model: nn.Module,
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    trust_remote_code: bool | None = None,
    callbacks=None,
) -> dict:
    """Train this given ``model`` (e.g. a pruned one) with ``config``, starting from its current weights.

    ``method: ce`` fine-tunes with cross-entropy, any other method distils from ``config.teacher``. ``config.model``
    must describe ``model`` (same parameter names and shapes: a ``ConfigError`` otherwise) so that the run
    directory's config.yaml reloads it for ``kdlab evaluate`` and ``teacher.run``. Returns the run's summary.
    """
    return _run(
        config, overrides, distilling=True, resume=resume, overwrite=overwrite, extend=False,
        trust=trust_remote_code, callbacks=callbacks, student=model,
    )  # fmt: skip


def cooperative(
    config: Config,
    overrides: list[str] | None = None,
    *,
    overwrite: bool = False,
    trust_remote_code: bool | None = None,
) -> dict:
    """Cooperative distillation (``task: cooperative``): learners of any kind teach each other through
    counterfactual instances (``kdlab.tasks.cooperative``); returns the run's summary. ``trust_remote_code``: allow
    an estimator outside ``sklearn.*`` or a model callable outside your own code."""
    return _run(
        config, overrides, distilling=True, resume=False, overwrite=overwrite, extend=False,
        trust=trust_remote_code, callbacks=None,
    )  # fmt: skip


def cache_logits(config: Config, overrides: list[str] | None = None, *, trust_remote_code: bool | None = None) -> Path:
    """Run the teacher once over train/val/test and store its outputs for later runs; returns the cache's path."""
    with model_imports(config, trust_remote_code):
        cfg = load_config(config, overrides)
        if cfg.teacher is None:
            raise ConfigError("cache-logits needs a 'teacher' section")
        return tasks.get(cfg.task).cache_logits(cfg)


def describe_cache(config: Config, path: Path) -> str | None:
    """One line about the cache ``cache_logits`` wrote for this config's task (None: nothing to add)."""
    return tasks.get(load_config(config).task).describe_cache(path)


def select_ptloss(
    config: Config,
    overrides: list[str] | None = None,
    output: str | Path | None = None,
    *,
    trust_remote_code: bool | None = None,
):
    """``kdlab select-ptloss``: choose ptloss's epsilon for the config's teacher and data; returns the selection
    and the directory written.

    The config's ``method`` must be ptloss (its candidates/order/per_class/scale/selection_seed/
    selection_metric are used; epsilon is treated as auto). Files go to ``output`` (default:
    ``<out>-ptloss-selection/``) so that the run directory itself stays free for ``distill``.
    """
    with model_imports(config, trust_remote_code):
        cfg = load_config(config, overrides)
        if cfg.method.name != "ptloss":
            raise ConfigError(f"select-ptloss needs method.name: ptloss, got {cfg.method.name!r}")
        if cfg.teacher is None:
            raise ConfigError("select-ptloss needs a 'teacher' section")
        return tasks.get(cfg.task).select_ptloss(cfg, Path(output) if output else None)


def evaluate(
    run_dir: str | Path,
    splits: tuple[str, ...] = ("train", "val", "test"),
    *,
    latency: bool = True,
    trust_remote_code: bool | None = None,
) -> dict[str, Any]:
    """Metrics of a finished run's model on every split (its task decides which: for classification accuracy,
    NLL, ECE, confusion matrices, fidelity to the teacher; for language models perplexity and agreement) and its
    footprint. Written to evaluation.json and, under "evaluation", into summary.json. The saved config's model
    is rebuilt under the same trust check as in training (own modules: the run directory and the cwd)."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file() or not (run / "model.safetensors").is_file():
        raise ConfigError(f"{run} is not a finished kdlab run directory (config.yaml and model.safetensors needed)")
    with model_imports(run / "config.yaml", trust_remote_code):
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


def predict_proba(run_dir: str | Path, raw: Any, *, retrieval: bool = True) -> Any:
    """A finished run's (N, C) probabilities on raw values (as ``load_model`` takes them). A ReAugKD run blends its
    knowledge base's retrieved soft labels with the student's (k and β chosen on the run's validation split);
    ``retrieval=False``: the student alone. Other methods: the student's softmax."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file() or not (run / "model.safetensors").is_file():
        raise ConfigError(f"{run} is not a finished kdlab run directory (config.yaml and model.safetensors needed)")
    with model_imports(run / "config.yaml"):
        cfg = load_config(run / "config.yaml")
        return tasks.get(cfg.task).predict_proba(run, cfg, raw, retrieval)


def summary_line(summary: dict[str, Any]) -> str | None:
    """The task's extra line for the CLI's summary table (e.g. a language model's perplexity)."""
    return tasks.get(summary.get("task", "classify")).summary_line(summary)
