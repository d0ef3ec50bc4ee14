"""Run, resume or skip: what `chain` and `sweep` do with a run directory that may already exist.

A directory holding a complete run (summary.json) of the same configuration is skipped; an unfinished run
of the same configuration resumes from its last checkpoint (or restarts if it has none); a run of another
configuration is an error unless overwriting. ``train.progress`` is cosmetic and not compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml

from kdlab import api, tasks
from kdlab.config import RunConfig
from kdlab.engine.checkpoint import latest_checkpoint
from kdlab.engine.rundir import SUMMARY
from kdlab.errors import ConfigError

Action = Literal["skip", "resume", "fresh", "overwrite"]


def _comparable(raw: dict[str, Any]) -> dict[str, Any]:
    raw = json.loads(json.dumps(raw))
    (raw.get("train") or {}).pop("progress", None)
    return raw


def same_config(out: Path, cfg: RunConfig) -> bool:
    path = out / "config.yaml"
    if not path.is_file():
        return False
    try:
        stored = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return False
    return _comparable(stored) == _comparable(cfg.model_dump(mode="json"))


def plan(cfg: RunConfig, *, overwrite: bool = False) -> Action:
    """What to do with ``cfg.out``; raises ConfigError if it holds another configuration's run."""
    out = Path(cfg.out)
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    if overwrite:
        return "overwrite"
    if not same_config(out, cfg):
        raise ConfigError(f"{out} holds a run of a different configuration; pass --overwrite or remove it")
    if (out / SUMMARY).is_file():
        return "skip"
    return "resume" if latest_checkpoint(out / "checkpoints") is not None else "overwrite"


def check_method(cfg: RunConfig) -> None:
    """Validate the method's parameters now (before a chain or sweep runs anything), as the run would."""
    if cfg.teacher is None and cfg.method.name != "ce":
        raise ConfigError(f"method {cfg.method.name!r} needs a 'teacher' section (without one the run trains with CE)")
    tasks.get(cfg.task).check(cfg)


def read_summary(out: Path) -> dict[str, Any]:
    return json.loads((Path(out) / SUMMARY).read_text())


def run_or_skip(cfg: RunConfig, *, distilling: bool, overwrite: bool = False) -> tuple[dict[str, Any], Action]:
    """The run's summary, training only what is not finished yet; also returns what was done."""
    action = plan(cfg, overwrite=overwrite)
    if action == "skip":
        return read_summary(Path(cfg.out)), action
    run = api.distill if distilling else api.train
    summary = run(cfg, resume=action == "resume", overwrite=action == "overwrite")
    return summary, action
