"""A finished classification run's method predictor (``Method.predictor``; ReAugKD: the student + its knowledge
base) read back: its settings chosen on validation, its metrics and latency for ``kdlab evaluate``, and the
probabilities ``kdlab.api.predict_proba`` returns.

Generic on purpose: evaluation asks the run's method for a predictor and knows nothing of retrieval, so another
method that leaves an inference-time artefact plugs in the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.config import RunConfig
from kdlab.engine.supervised import tap
from kdlab.errors import ConfigError
from kdlab.eval.footprint import median_latency_ms, tile
from kdlab.methods import Predictor
from kdlab.methods import build as build_method
from kdlab.teacher.source import resolve_teacher


@torch.inference_mode()
def student_outputs(
    model: nn.Module, x: Tensor, names: tuple[str, ...], batch: int = 1024
) -> tuple[Tensor, dict[str, Tensor]]:
    """(N, C) float32 logits and the named features of ``model`` over ``x``, on the CPU."""
    was_training = model.training
    model.eval()
    probe = tap(model, names, detach=True)
    logits, pieces = [], {n: [] for n in names}
    try:
        if probe is not None:
            probe.__enter__()
        for start in range(0, len(x), batch):
            logits.append(model(x[start : start + batch]).float().cpu())
            for n in names:
                pieces[n].append(probe.features[n].float().cpu())  # type: ignore[union-attr]
    finally:
        if probe is not None:
            probe.__exit__(None, None, None)
        model.train(was_training)
    return torch.cat(logits), {n: torch.cat(p) for n, p in pieces.items()}


def run_predictor(run: Path, cfg: RunConfig, data) -> Predictor | None:
    """The run's method predictor, checked against this data's and the config's teacher's fingerprints (a teacher
    that can no longer be found is not compared), or None when the method leaves none."""
    try:
        method = build_method(cfg.method.name, cfg.method.params(), data.num_classes)
    except ConfigError:
        return None
    teacher = ""
    if cfg.teacher is not None:
        try:
            teacher = resolve_teacher(cfg.teacher).fingerprint()
        except (ConfigError, OSError):
            teacher = ""
    return method.predictor(run, {"data": data.fingerprint, "teacher": teacher})


def evaluate_predictor(
    predictor: Predictor, student: nn.Module, data, splits: tuple[str, ...], latency: bool
) -> dict[str, Any]:
    """Choose the predictor's settings on validation, then its metrics per split and its latency beside the
    student's alone (median ms at batch 1 and 256, the footprint's protocol)."""
    names = predictor.features
    logits, features = student_outputs(student, data.x_val, names)
    result: dict[str, Any] = {"choice": predictor.choose(logits, features, data.y_val), "splits": {}}
    for split in splits:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        logits, features = student_outputs(student, x, names)
        result["splits"][split] = predictor.metrics(logits, features, y)
    result["files"] = {str(f): f.stat().st_size for f in predictor.files}
    if latency:
        student.eval()

        def with_retrieval(x: Tensor) -> Tensor:
            return predictor.probabilities(*student_outputs(student, x, names))

        def alone(x: Tensor) -> Tensor:
            with torch.inference_mode():
                return torch.softmax(student(x), dim=1)

        result["latency_ms"] = {}
        for b in (1, 256):
            batch = tile(data.x_test[:1].cpu(), b)
            base, _ = median_latency_ms(alone, batch)
            augmented, _ = median_latency_ms(with_retrieval, batch)
            result["latency_ms"][f"batch_{b}"] = {
                "student": base,
                "with_retrieval": augmented,
                "overhead": augmented / base - 1.0,
            }
        result["threads"] = torch.get_num_threads()
    return result


def predict_proba(run: Path, cfg: RunConfig, raw: Tensor, retrieval: bool = True) -> Tensor:
    """(N, C) probabilities of the run's model on raw values (the run's preprocessing applied here), through its
    method's predictor (settings chosen on the run's validation split) unless ``retrieval=False`` or none."""
    from .classify import load_data, run_preprocess
    from .classify_eval import load_run_model

    data = load_data(cfg, run_preprocess(run))
    student = load_run_model(cfg, data, run / "model.safetensors").eval()
    x = data.preprocess.apply(raw)
    predictor = run_predictor(run, cfg, data) if retrieval else None
    if predictor is None:
        logits, _ = student_outputs(student, x, ())
        return torch.softmax(logits, dim=1)
    logits, features = student_outputs(student, data.x_val, predictor.features)
    predictor.choose(logits, features, data.y_val)
    logits, features = student_outputs(student, x, predictor.features)
    return predictor.probabilities(logits, features)
