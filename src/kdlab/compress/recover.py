"""``kdlab compress``: prune a finished run's model, then recover it by training (CE = fine-tune, or distillation).

Iterative pruning prunes to each cumulative target of ``step_targets`` and recovers ``train.epochs`` after each;
intermediate steps run in a temporary directory, the last one writes a normal run directory at ``out`` whose
config.yaml describes the (possibly smaller) model, so ``kdlab evaluate`` and ``teacher.run`` load it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from kdlab.config import ConfigError, RunConfig, load_config
from kdlab.engine.run import SUMMARY, build_student, fit_model, load_data
from kdlab.io import atomic_write_json
from kdlab.methods import build as build_method

from .channels import forward_macs, structured_prune, structured_widths
from .prune import ReapplyMasks, global_magnitude_prune, sparsity_report, step_targets


def _source_model(cfg: RunConfig, data) -> tuple[RunConfig, nn.Module]:
    """The source run's config and its trained model (one-line ``ConfigError`` for anything unusable)."""
    source = Path(cfg.compress.source)
    if not (source / "config.yaml").is_file() or not (source / "model.safetensors").is_file():
        raise ConfigError(
            f"compress.source {source} is not a finished kdlab run directory (config.yaml and model.safetensors needed)"
        )
    src_cfg = load_config(source / "config.yaml")
    try:
        model = build_student(src_cfg, data)
        model.load_state_dict(load_file(str(source / "model.safetensors")))
    except (RuntimeError, ValueError, TypeError) as err:
        raise ConfigError(
            f"compress.source {source}: its model does not load for {cfg.data.name}: {str(err).splitlines()[0]}"
        ) from None
    return src_cfg, model


def compress(config, overrides: list[str] | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Prune ``compress.source``'s model to ``compress.prune.sparsity`` and recover; returns the run's summary."""
    cfg = load_config(config, overrides)
    if cfg.compress is None:
        raise ConfigError("compress needs a 'compress' section (compress.source: RUN_DIR, compress.prune: {...})")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"run directory {out} is not empty; pass --overwrite or choose another out")
    p = cfg.compress.prune
    data = load_data(cfg)
    src_cfg, model = _source_model(cfg, data)
    widths = structured_widths(model)
    if p.kind == "structured" and widths is None:
        raise ConfigError(
            f"compress.prune.kind=structured supports kdlab's mlp and cnn only, the source is {src_cfg.model.name!r}"
        )
    method = build_method(cfg.method.name, cfg.method.params(), data.num_classes)
    distilling = cfg.method.name != "ce"
    teacher = cfg.teacher
    if distilling and method.needs_teacher and teacher is None:  # default teacher: the unpruned source model
        teacher = {"run": str(Path(cfg.compress.source))}
    before = {**sparsity_report(model), "macs": forward_macs(model, data.in_shape)}
    steps: list[dict[str, Any]] = []
    targets = step_targets(p.sparsity, p.steps, p.schedule)
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kdlab-compress-") as tmp:
        for k, target in enumerate(targets, start=1):
            model_kwargs = dict(src_cfg.model.kwargs)
            if p.kind == "structured":
                model, shape = structured_prune(model.cpu(), target, p.norm, widths[1])
                model_kwargs.update(shape)
            else:
                global_magnitude_prune(model.cpu(), target)
            last = k == len(targets)
            raw = cfg.model_dump(mode="json")
            raw["model"] = {"name": src_cfg.model.name, "kwargs": model_kwargs}
            raw["teacher"] = (
                teacher if isinstance(teacher, dict) or teacher is None else teacher.model_dump(mode="json")
            )
            if not last:
                raw["out"], raw["name"] = str(Path(tmp) / f"step-{k}"), f"{cfg.name}-step-{k}"
                raw["train"]["keep_epoch_checkpoints"], raw["train"]["keep_checkpoints_every"] = [], None
            step_cfg = load_config(raw)
            callbacks = [ReapplyMasks(model)] if p.kind == "unstructured" else None
            summary = fit_model(step_cfg, model, overwrite=last and overwrite, callbacks=callbacks)
            model = model.cpu()
            report = {**sparsity_report(model), "macs": forward_macs(model, data.in_shape)}
            entry = {"step": k, "target_sparsity": target, "test_accuracy": summary["test_accuracy"], **report}
            if p.kind == "structured":
                entry[widths[0]] = model_kwargs[widths[0]]
            steps.append(entry)
    source_summary = Path(cfg.compress.source) / SUMMARY
    source_accuracy = json.loads(source_summary.read_text()).get("test_accuracy") if source_summary.is_file() else None
    summary.update(
        {
            "nonzero_parameters": steps[-1]["nonzero_parameters"],
            "sparsity": steps[-1]["sparsity"],
            "compress": {
                "source": str(cfg.compress.source),
                "source_test_accuracy": source_accuracy,
                "prune": p.model_dump(mode="json"),
                "before": before,
                "after": {key: steps[-1][key] for key in before},
                "steps": steps,
            },
        }
    )
    atomic_write_json(out / SUMMARY, summary)
    return summary
