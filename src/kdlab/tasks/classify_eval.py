"""A finished classification run, read back: ``kdlab evaluate``'s metrics and the model for raw inputs.

Both use the run's saved preprocessing (``preprocess.json``), so they see exactly what training saw, from any
working directory (the run's config.yaml holds absolute paths).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab import models
from kdlab.config import RunConfig
from kdlab.data.preprocess import RawInputModel
from kdlab.engine.predict import predict
from kdlab.engine.rundir import new_accelerator
from kdlab.errors import CacheError, ConfigError
from kdlab.losses import proxy_teacher
from kdlab.models.weights import load_weights

from .classify import build_student, load_data, run_preprocess, teacher_and_cache
from .classify_predictor import evaluate_predictor, run_predictor


def evaluate_classify(run: Path, cfg: RunConfig, splits: tuple[str, ...], latency: bool) -> dict[str, Any]:
    """Metrics of a finished run's model on every split: accuracy, NLL, ECE (+ reliability curve), confusion
    matrices, and — with the run's teacher — top-1 agreement and KL(teacher ‖ student); for ptloss runs also
    the fidelity to the proxy teacher; for a method that leaves a predictor (ReAugKD) its metrics per split
    (``<split>.predictor``: accuracy with and without retrieval, the KB's kNN accuracy), the settings it chose
    on validation and its latency beside the student's (``predictor``); its ``footprint`` (file size,
    parameters, non-zeros, CPU latency at batch 1 and 256 unless ``latency=False``)."""
    from kdlab.eval import full_evaluation
    from kdlab.eval.footprint import footprint

    data = load_data(cfg, run_preprocess(run))
    student = load_run_model(cfg, data, run / "model.safetensors")
    acc = new_accelerator(cpu=True)
    teacher, cached = None, None
    if cfg.teacher is not None:
        try:
            teacher, cached, _ = teacher_and_cache(cfg, data)
        except (ConfigError, CacheError):
            teacher, cached = None, None
    if teacher is not None:
        teacher = teacher.to(acc.device)
    epsilon = _proxy_epsilon(cfg, run, data.num_classes) if teacher is not None or cached else None
    batch = cfg.train.eval_batch_size
    temperature = cfg.method.params().get("temperature", 1.0)
    result: dict[str, Any] = {}
    for split in splits:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        t_logits = None
        if cached:
            t_logits = cached[split]
        elif teacher is not None:
            t_logits = predict(teacher, x, data.num_classes, batch, acc)
        proxy = None
        if epsilon is not None and t_logits is not None:
            try:
                proxy = proxy_teacher(torch.softmax(t_logits.double().cpu() / temperature, -1), epsilon)
            except ValueError:  # an epsilon outside 1/m + eps >= 0 trains fine but has no proxy teacher
                epsilon = None  # the same for every split: do not try again
        logits = predict(student, x, data.num_classes, batch, acc)
        result[split] = full_evaluation(logits, y, t_logits, proxy, proxy_temperature=temperature)
    result["parameters"] = models.count_parameters(student)
    result["teacher"] = cfg.teacher is not None and (teacher is not None or cached is not None)
    result["footprint"] = footprint(student, data.x_test[:1], files=[run / "model.safetensors"], latency=latency)
    predictor = run_predictor(run, cfg, data)
    if predictor is not None:  # a method's inference-time predictor (ReAugKD: student + knowledge base)
        extra = evaluate_predictor(predictor, student, data, splits, latency)
        for split, metrics in extra.pop("splits").items():
            result[split]["predictor"] = metrics
        result["predictor"] = extra
        result["footprint"]["predictor_file_bytes"] = sum(extra["files"].values())
    return result


def load_raw_model(run: Path, cfg: RunConfig) -> nn.Module:
    """The run's model on CPU in eval mode, taking raw values (its preprocessing inside: ``RawInputModel``)."""
    data = load_data(cfg, run_preprocess(run))
    model = load_run_model(cfg, data, run / "model.safetensors")
    return RawInputModel(model, data.preprocess, tuple(data.in_shape)).eval()


def load_run_model(cfg: RunConfig, data, weights: Path) -> nn.Module:
    """A run's model on CPU: its float weights, or the int8 model ``kdlab compress`` saved (the scheme is in the
    safetensors metadata; rebuilt by the loader ``kdlab.compress`` registers with ``kdlab.models.weights``)."""
    student = build_student(cfg, data)
    try:
        return load_weights(student, weights)
    except ConfigError:
        raise
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"{weights} does not load into {cfg.model.name!r}: {str(err).splitlines()[0]}") from None


def _proxy_epsilon(cfg: RunConfig, run: Path, num_classes: int) -> torch.Tensor | None:
    """The epsilon a ptloss run trained with (given, or the one its selection chose); None for other methods."""
    if cfg.method.name != "ptloss":
        return None
    epsilon = cfg.method.params().get("epsilon", [0.0])
    if epsilon == "auto":
        selection = run / "ptloss_selection.json"
        if not selection.is_file():
            return None
        epsilon = json.loads(selection.read_text())["epsilon"]
    return torch.tensor(epsilon, dtype=torch.float64)
