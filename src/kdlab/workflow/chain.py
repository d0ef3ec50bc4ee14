"""``kdlab chain``: distil through a sequence of models (teacher → assistant(s) → student, TAKD).

A chain file names an output directory, a ``base`` config shared by every stage, and the stages; each
stage is a normal run directory ``<out>/<stage name>`` whose teacher is the previous stage's run (a stage
may add ``teacher: {checkpoint_epoch: E}``). The first stage is trained with cross-entropy, or distilled
from its own ``teacher`` section if it has one. Running the chain again skips finished stages, resumes an
interrupted one, and re-runs every stage after one that had to be (re)trained.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdlab.config import RunConfig, apply_overrides, load_config
from kdlab.errors import ConfigError
from kdlab.io import atomic_write_json

from .reuse import Action, check_method, plan, run_or_skip


class ChainStage(BaseModel):
    """``name`` plus any run-config keys (merged over ``base``)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ChainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = "runs/chain"
    base: dict[str, Any] = Field(default_factory=dict)
    stages: list[ChainStage] = Field(min_length=1)


REPLACED = ("model", "method")  # a stage's model or method replaces the base's whole (no mixed parameters)


def merge(base: dict[str, Any], update: dict[str, Any], replaced: tuple[str, ...] = ()) -> dict[str, Any]:
    """Deep merge: mappings are merged key by key (except ``replaced`` keys), anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in replaced:
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"chain file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"chain file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"chain file {path} must contain a mapping at the top level")
    return raw


def stage_configs(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> list[RunConfig]:
    """Every stage's full run config, validated before anything runs (a typo fails the whole chain early)."""
    try:
        chain_cfg = ChainConfig.model_validate(_read(source))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "chain"
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"chain: unknown key {where!r} (expected out, base, stages)") from None
        raise ConfigError(f"chain: {where}: {first['msg']}") from None
    names = [s.name for s in chain_cfg.stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"chain: stage names must be unique, got {names}")
    configs: list[RunConfig] = []
    for i, stage in enumerate(chain_cfg.stages):
        own = dict(stage.model_extra or {})
        raw = merge(chain_cfg.base, own, REPLACED)
        raw = apply_overrides(raw, overrides)
        if i > 0:
            teacher = dict(own.get("teacher") or {})
            if set(teacher) - {"checkpoint_epoch"}:
                raise ConfigError(
                    f"chain stage {stage.name!r}: its teacher is the previous stage; only teacher.checkpoint_epoch "
                    "may be set"
                )
            raw["teacher"] = {**teacher, "run": str(Path(chain_cfg.out) / names[i - 1])}
        raw["out"] = str(Path(chain_cfg.out) / stage.name)
        raw.setdefault("name", stage.name)
        try:
            configs.append(load_config(raw))
            check_method(configs[-1])
        except ConfigError as err:
            raise ConfigError(f"chain stage {stage.name!r}: {err}") from None
    return configs


def chain(
    source: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    overwrite: bool = False,
    on_stage=None,
) -> list[dict[str, Any]]:
    """Run the stages in order; returns their summaries (each with ``chain_action``: skip/resume/fresh/overwrite).

    ``on_stage(index, cfg, action)`` is called before each stage. ``<out>/chain.json`` lists the stages.
    """
    configs = stage_configs(source, overrides)
    for cfg in configs:  # a directory holding another configuration's run stops the chain before anything runs
        plan(cfg, overwrite=overwrite)
    retrain_rest = overwrite
    summaries: list[dict[str, Any]] = []
    for i, cfg in enumerate(configs):
        # a stage whose teacher was just (re)trained must be retrained too, even if it finished before
        action: Action = plan(cfg, overwrite=retrain_rest)
        if on_stage is not None:
            on_stage(i, cfg, action)
        summary, action = run_or_skip(cfg, distilling=cfg.teacher is not None, overwrite=retrain_rest)
        retrain_rest = retrain_rest or action != "skip"
        summaries.append({**summary, "chain_action": action, "out": cfg.out})
    root = Path(configs[0].out).parent
    atomic_write_json(root / "chain.json", {"stages": summaries})
    return summaries
