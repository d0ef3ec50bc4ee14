"""``kdlab compress``: prune a finished run's model, then recover it by training (CE = fine-tune, or distillation).

Iterative pruning prunes to each cumulative target of ``step_targets`` and recovers ``train.epochs`` after each;
intermediate steps run in a temporary directory, the last one writes a normal run directory at ``out`` whose
config.yaml describes the (possibly smaller) model, so ``kdlab evaluate`` and ``teacher.run`` load it.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

import kdlab
from kdlab.api import fit_model
from kdlab.config import RunConfig, dump_config, load_config
from kdlab.engine.rundir import SUMMARY
from kdlab.errors import ConfigError
from kdlab.eval.metrics import classification_metrics
from kdlab.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from kdlab.methods import build as build_method
from kdlab.models import count_parameters
from kdlab.tasks.classify import build_student, load_data

from .channels import forward_macs, structured_prune, structured_widths
from .prune import ReapplyMasks, global_magnitude_prune, sparsity_report, step_targets
from .quantize import convert_qat, describe, prepare_qat, ptq_int8, save_quantized

FLOAT_WEIGHTS = "model-float.safetensors"  # a quantized run's float (QAT: fake-quant) weights before conversion


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
    p, q = cfg.compress.prune, cfg.compress.quantize
    data = load_data(cfg)
    src_cfg, model = _source_model(cfg, data)
    widths = structured_widths(model)
    if p is not None and p.kind == "structured" and widths is None:
        raise ConfigError(
            f"compress.prune.kind=structured supports kdlab's mlp and cnn only, the source is {src_cfg.model.name!r}"
        )
    method = build_method(cfg.method.name, cfg.method.params(), data.num_classes)
    distilling = cfg.method.name != "ce"
    teacher = cfg.teacher
    if distilling and method.needs_teacher and teacher is None:  # default teacher: the unpruned source model
        teacher = {"run": str(Path(cfg.compress.source))}
    if p is None:  # quantize only
        return quantize_stage(cfg, model, data, src_cfg.model.model_dump(mode="json"), teacher, overwrite=overwrite)
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
            last = k == len(targets) and (q is None or q.mode == "ptq")  # QAT trains once more at `out`
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
    if q is not None:  # prune first, then quantize
        pruned = {"name": src_cfg.model.name, "kwargs": model_kwargs}
        keep_zeros = p.kind == "unstructured"
        return quantize_stage(cfg, model, data, pruned, teacher, overwrite=True, keep_zeros=keep_zeros, prior=summary)
    atomic_write_json(out / SUMMARY, summary)
    return summary


def quantize_stage(
    cfg: RunConfig,
    model: nn.Module,
    data,
    model_cfg: dict[str, Any],
    teacher,
    *,
    overwrite: bool,
    keep_zeros: bool = False,
    prior: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """int8-quantize ``model`` (``compress.quantize``) into the run directory ``cfg.out``; returns its summary.

    ``ptq``: quantize as it is, no training. ``qat``: fake-quantize, train ``train.epochs`` with ``method`` through
    the engine (``ce`` = QAT fine-tune; ``kd``/``ptloss``/... = quantization-aware distillation from ``teacher``),
    then convert. ``model.safetensors`` is the int8 model (int8 weights + float32 scales; the scheme in the file's
    metadata, so ``kdlab evaluate`` rebuilds it), ``model-float.safetensors`` the float (QAT: fake-quant) weights
    before conversion; the summary's test metrics are the int8 model's. ``prior``: the summary of the pruning stage
    (ptq: already a run directory at ``out``; qat: trained in a temporary directory); ``keep_zeros``: re-zero
    pruned weights after every QAT step.
    """
    q = cfg.compress.quantize
    out = Path(cfg.out)
    raw = cfg.model_dump(mode="json")
    raw["model"] = model_cfg
    raw["teacher"] = teacher if isinstance(teacher, dict) or teacher is None else teacher.model_dump(mode="json")
    run_cfg = load_config(raw)
    model = model.cpu()
    if q.mode == "qat":
        float_model = prepare_qat(model, q.scheme)
        callbacks = [ReapplyMasks(float_model)] if keep_zeros else None
        summary = fit_model(run_cfg, float_model, overwrite=overwrite, callbacks=callbacks)
        float_model = float_model.cpu().eval()
        quantized = convert_qat(float_model)
    else:
        float_model = model.eval()
        summary = dict(prior) if prior is not None else _ptq_summary(run_cfg, float_model, data, overwrite)
        quantized = ptq_int8(float_model, scheme=q.scheme)
    (out / SUMMARY).unlink(missing_ok=True)  # the directory is complete again once the int8 summary is written
    atomic_write_bytes(out / FLOAT_WEIGHTS, save({k: v.contiguous() for k, v in float_model.state_dict().items()}))
    save_quantized(quantized, out / "model.safetensors", q.scheme)
    x, y = data.x_test, data.y_test
    with torch.inference_mode():
        float_logits = torch.cat([float_model(x[i : i + 1024]) for i in range(0, len(x), 1024)])
        int8_logits = torch.cat([quantized(x[i : i + 1024]) for i in range(0, len(x), 1024)])
    test = classification_metrics(int8_logits, y)
    float_test = classification_metrics(float_logits, y)
    vs_float = classification_metrics(int8_logits, y, float_logits)  # the float model as the "teacher"
    earlier = prior if prior is not None else summary  # the pruning stage's block, or the PTQ run's
    info = dict(earlier.get("compress") or {"source": str(cfg.compress.source)})
    summary.update({k: earlier[k] for k in ("sparsity", "nonzero_parameters") if k in earlier})
    info["quantize"] = {
        **q.model_dump(mode="json"),
        "float_test_accuracy": float_test["accuracy"],
        "int8_test_accuracy": test["accuracy"],
        "agreement_with_float": vs_float["agreement"],
        "kl_float_int8": vs_float["kl_teacher"],
        "float_file_bytes": (out / FLOAT_WEIGHTS).stat().st_size,
        "int8_file_bytes": (out / "model.safetensors").stat().st_size,
        **describe(quantized),
    }
    summary.update({"test_accuracy": test["accuracy"], "test": test, "quantized": q.scheme, "compress": info})
    atomic_write_json(out / SUMMARY, summary)
    return summary


def _ptq_summary(run_cfg: RunConfig, model: nn.Module, data, overwrite: bool) -> dict[str, Any]:
    """A fresh run directory (config.yaml) and the summary fields a trained run would have, for PTQ of a source."""
    out = Path(run_cfg.out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"run directory {out} is not empty; pass --overwrite or choose another out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(run_cfg))
    return {
        "name": run_cfg.name,
        "complete": True,
        "method": "post-training quantization (no training)",
        "model": run_cfg.model.name,
        "teacher": None,
        "epochs": 0,
        "optimizer_steps": 0,
        "train_seconds": 0.0,
        "wall_seconds": 0.0,
        "parameters": count_parameters(model),
        "seed": run_cfg.seed,
        "data": {"name": data.name, "fingerprint": data.fingerprint, "test": len(data.y_test)},
        "versions": {"kdlab": kdlab.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "compress": {"source": str(run_cfg.compress.source)},
    }
