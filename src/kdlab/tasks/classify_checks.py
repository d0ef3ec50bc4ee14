"""Checks that turn a silent wrong answer into a sentence: the teacher before distilling, the run after training.

A teacher fed inputs it was not trained on (raw features standardised, pixels on another scale) still produces
logits, and a distillation from it runs to the end with exit 0; a method whose defaults do not suit the task can
collapse a student to chance; a teacher made fast (bf16, int8, compiled) can give other targets than the teacher
it stands for. All are cheap to see: the teacher's accuracy on the validation split before training, the fast
teacher's agreement with the exact one on the same rows, the student's validation curve after it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.engine.speed import check_faithful, faithfulness, fast_teacher, switches_on
from kdlab.errors import ConfigError

TEACHER_NEAR_CHANCE = 0.25  # of the way from the majority-class rate to 1: a teacher below it is suspect
STUDENT_NEAR_CHANCE = 0.1  # a finished student below it is near chance
BELOW_RECORDED = 0.05  # accuracy points below the teacher's recorded accuracy that warn
TEACHER_CHECK_ROWS = 5000  # of the validation split (or of train, when there is no validation split)


@torch.no_grad()
def check_outputs(model, data, what: str) -> None:
    """A model whose output does not have one logit per class of the data (a user module that ignores
    ``num_classes``, a teacher trained on another label set) is one line, before anything is trained."""
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        out = model(data.x_train[:2].to(device))
    except RuntimeError as err:
        raise ConfigError(
            f"{what} does not take this data's inputs {tuple(data.in_shape)}: {str(err).splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[1] != data.num_classes:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"{what} outputs {shape} for 2 inputs, the data has {data.num_classes} classes "
            f"({', '.join(data.class_names[:5])}{', ...' if data.num_classes > 5 else ''})"
        )


def chance_level(y: Tensor, num_classes: int) -> float:
    """The accuracy of always predicting the most frequent class of ``y``."""
    if len(y) == 0:
        return 1.0 / num_classes
    return float(torch.bincount(y.cpu(), minlength=num_classes).max()) / len(y)


def recorded_accuracy(teacher_cfg, directory: Path | None) -> float | None:
    """What the teacher is known to score: ``teacher.expected_accuracy``, else a teacher run's own validation
    accuracy (its summary.json)."""
    if teacher_cfg.expected_accuracy is not None:
        return float(teacher_cfg.expected_accuracy)
    if directory is None:
        return None
    try:
        summary = json.loads((directory / "summary.json").read_text())
        value = summary.get("val", {}).get("accuracy")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def check_teacher(
    logits: Tensor, y: Tensor, num_classes: int, *, split: str, recorded: float | None, mode: str
) -> dict[str, Any]:
    """The teacher's accuracy on ``split`` against chance and its recorded accuracy; warn or raise (``mode``)."""
    accuracy = float((logits.argmax(-1).cpu() == y.cpu()).float().mean()) if len(y) else float("nan")
    chance = chance_level(y, num_classes)
    result: dict[str, Any] = {"split": split, "rows": len(y), "accuracy": accuracy, "chance": chance}
    if recorded is not None:
        result["recorded"] = recorded
    problem = None
    if len(y) and accuracy < chance + TEACHER_NEAR_CHANCE * (1 - chance):
        problem = f"the teacher scores {accuracy:.1%} on {split} (chance: {chance:.1%})"
    elif len(y) and recorded is not None and accuracy < recorded - BELOW_RECORDED:
        problem = f"the teacher scores {accuracy:.1%} on {split}, {recorded:.1%} recorded"
    result["status"] = "ok" if problem is None else "warning"
    if problem is not None:
        message = (
            f"{problem}: is its input preprocessed as it was trained? (teacher.standardize for a teacher from "
            "weights; teacher.check: off to silence)"
        )
        result["message"] = message
        if mode == "error":
            raise ConfigError(message)
        warnings.warn(message, stacklevel=2)
    return result


def guarded_fast_teacher(
    teacher_cfg, data, teacher: nn.Module, temperature: float, acc
) -> tuple[nn.Module, dict | None]:
    """The teacher behind its speed switches and, when any is on, the faithfulness report: top-1 agreement and KD
    loss against the exact (fp32, unswitched) teacher on up to ``TEACHER_CHECK_ROWS`` validation rows (training
    rows without a validation split); ``ConfigError`` below ``teacher.min_agreement``."""
    t = teacher_cfg
    switches = dict(channels_last=t.channels_last, precision=t.precision, compile=t.compile, quantize=t.quantize)
    on = switches_on(**switches)
    if not on:
        return fast_teacher(teacher), None
    split = "val" if len(data.y_val) else "train"
    x = getattr(data, f"x_{split}")[:TEACHER_CHECK_ROWS]
    exact = _plain_logits(teacher.to(acc.device), x, acc.device)  # before channels_last changes it in place
    fast = fast_teacher(teacher, **switches).to(acc.device)
    report = faithfulness(exact, _plain_logits(fast, x, acc.device), temperature)
    return fast, check_faithful({**report, "split": split, "switches": on}, t.min_agreement)


@torch.inference_mode()
def _plain_logits(model: nn.Module, x: Tensor, device: torch.device, batch: int = 256) -> Tensor:
    """Logits outside any autocast (``train.mixed_precision`` must not make the exact teacher inexact); every
    process computes the same few thousand rows, no gather needed."""
    with torch.autocast(device.type, enabled=False):
        return torch.cat([model(x[i : i + batch].to(device)).float() for i in range(0, len(x), batch)])


def run_health(history: list[dict[str, Any]], chance: float) -> list[str]:
    """Sentences about a finished run that looks broken: a training loss that stopped being finite, a validation
    accuracy near chance or far below its best epoch. (A growing loss alone is not a sign: ramps and phases make
    some methods' totals grow.)"""
    notes: list[str] = []
    losses = [sum(v for k, v in r.items() if k.startswith("train/")) for r in history]
    if losses and not all(map(_finite, losses)):
        notes.append("the training loss was not finite in some epochs")
    accuracies = [r["val/accuracy"] for r in history if _finite(r.get("val/accuracy"))]
    if accuracies:
        last, best = accuracies[-1], max(accuracies)
        if last < chance + STUDENT_NEAR_CHANCE * (1 - chance):
            notes.append(
                f"validation accuracy {last:.1%} is near chance ({chance:.1%}): the method's settings (or the "
                "learning rate) may not suit this task"
            )
        elif best - last > 0.2:
            notes.append(f"validation accuracy collapsed from {best:.1%} to {last:.1%}")
    return notes


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")
