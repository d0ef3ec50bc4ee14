"""``SequenceDistillationTrainer``: ``transformers.Trainer`` distilling a sequence classifier with a kdlab method.

The classification twin of ``DistillationTrainer`` (causal LMs): the student is any
``AutoModelForSequenceClassification``; the teacher is another one, frozen, in eval mode, on the training device,
run under ``torch.inference_mode`` — an attribute of the trainer, so it is in neither the optimizer nor a
checkpoint, and DDP never wraps it. The loss is a kdlab classification method (``kd``, ``ptloss`` with a given
epsilon, ``poly1``, ``label_smoothing``, ``focal``, ``dkd``, ``ce``...) on the two models' logits, the same
objects ``kdlab distill`` uses with ``task: text_classify``.

Teacher and student may tokenise differently: ``tokenize_pair`` writes the teacher's ids beside the student's
(``teacher_input_ids``, ...), ``PairCollator`` pads each with its own tokenizer, and the teacher reads its own
columns. Without them the teacher reads the student's (then the tokenizers must agree: checked when both are given).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from kdlab.config import MethodConfig
from kdlab.errors import ConfigError
from kdlab.methods import Method, Outputs, StepState, build

PREFIX = "teacher_"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def classification_method(method: Method | MethodConfig | Mapping[str, Any] | str, num_labels: int) -> Method:
    """A kdlab classification method that reads logits only (no features, no modules of its own, no setup)."""
    if isinstance(method, Method):
        built = method
    else:
        if isinstance(method, str):
            spec: dict[str, Any] = {"name": method}
        elif isinstance(method, MethodConfig):
            spec = {"name": method.name, **method.params()}
        else:
            spec = dict(method)
        name = spec.pop("name", "kd")
        if name == "ptloss" and spec.get("epsilon", "auto") == "auto":
            raise ConfigError("method 'ptloss' needs epsilon here (choose one with `kdlab select-ptloss`)")
        built = build(name, spec, num_labels)
    needs = built.requires()
    if built.token_level or needs.student_features or needs.teacher_features or built.modules():
        raise ConfigError(f"method {built.name!r} needs more than logits: use `kdlab distill` with task text_classify")
    return built


def tokenize_pair(
    student_tokenizer: Any, teacher_tokenizer: Any, texts: list[str], pairs: list[str] | None = None, **kwargs: Any
) -> dict[str, list]:
    """The student's encoding plus the teacher's, prefixed ``teacher_`` (for ``Dataset.map(batched=True)``)."""
    kwargs.setdefault("truncation", True)
    out = dict(student_tokenizer(texts, pairs, **kwargs))
    for key, value in teacher_tokenizer(texts, pairs, **kwargs).items():
        out[PREFIX + key] = value
    return out


class PairCollator:
    """Dynamic padding of the student's and the teacher's columns, each with its own tokenizer."""

    def __init__(self, student_tokenizer: Any, teacher_tokenizer: Any) -> None:
        self.student, self.teacher = student_tokenizer, teacher_tokenizer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        mine = [{k: v for k, v in f.items() if k in MODEL_INPUTS} for f in features]
        theirs = [{k[len(PREFIX) :]: v for k, v in f.items() if k.startswith(PREFIX)} for f in features]
        batch = dict(self.student.pad(mine, return_tensors="pt"))
        if theirs and theirs[0]:
            batch.update({PREFIX + k: v for k, v in self.teacher.pad(theirs, return_tensors="pt").items()})
        if "label" in features[0] or "labels" in features[0]:
            batch["labels"] = torch.tensor([f.get("labels", f.get("label")) for f in features], dtype=torch.long)
        return batch


class SequenceDistillationTrainer(Trainer):
    """``Trainer(model=student, ...)`` plus ``teacher=`` (a sequence classifier) and ``method=``."""

    def __init__(
        self,
        model: nn.Module | None = None,
        args: Any = None,
        *,
        teacher: nn.Module,
        method: Method | MethodConfig | Mapping[str, Any] | str = "kd",
        teacher_tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None or teacher is None:
            raise ValueError("SequenceDistillationTrainer needs the student as model= and a teacher=")
        labels = int(model.config.num_labels)
        if int(teacher.config.num_labels) != labels:
            raise ValueError(
                f"the label sets must match: the teacher has {teacher.config.num_labels} labels, the student {labels}"
            )
        self.method = classification_method(method, labels)
        self.teacher_reads_own = teacher_tokenizer is not None
        sizes = [getattr(m.config, "vocab_size", None) for m in (model, teacher)]
        if not self.teacher_reads_own and sizes[0] != sizes[1]:
            raise ValueError(
                f"teacher and student vocabularies differ ({sizes[1]} and {sizes[0]} tokens): give "
                "teacher_tokenizer= and the teacher's own columns (kdlab.hf.tokenize_pair, PairCollator)"
            )
        super().__init__(model=model, args=args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the teacher's columns: ``remove_unused_columns`` would drop them (the student does not take them)."""
        super()._set_signature_columns_if_needed()
        for key in MODEL_INPUTS:
            if PREFIX + key not in self._signature_columns:
                self._signature_columns.append(PREFIX + key)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        labels = inputs["labels"]
        theirs = {k[len(PREFIX) :]: v for k, v in inputs.items() if k.startswith(PREFIX)}
        mine = {k: v for k, v in inputs.items() if k in MODEL_INPUTS}
        if self.teacher_reads_own and not theirs:
            raise ValueError("teacher_tokenizer= was given but the batch has no teacher_input_ids (tokenize_pair)")
        outputs = model(**mine)
        with torch.inference_mode():
            teacher_logits = self.teacher(**(theirs or mine)).logits.float()
        progress = float(self.state.epoch or 0.0)
        epochs = max(round(self.args.num_train_epochs), 1)
        state = StepState(epoch=int(progress), step=self.state.global_step, epochs=epochs, progress=progress)
        terms = self.method.compute(
            {"y": labels}, Outputs(logits=outputs.logits.float()), Outputs(logits=teacher_logits.clone()), state
        )
        loss = sum(terms.values())
        return (loss, outputs) if return_outputs else loss
