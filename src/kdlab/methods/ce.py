"""Plain cross-entropy on hard labels (training a teacher, or the no-distillation baseline)."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import Tensor

from kdlab.losses import cross_entropy

from .base import TOKEN_TASKS, Method, MethodParams, Outputs, StepState, register
from .token import cross_entropy_terms


class CEParams(MethodParams):
    label_smoothing: float = Field(0.0, ge=0, le=1)


@register("ce")
class CEMethod(Method):
    """Classification: cross-entropy with optional label smoothing; language models: next-token cross-entropy
    through the fused output layer (no parameters)."""

    Params = CEParams
    needs_teacher = False
    tasks = ("classify", *TOKEN_TASKS)

    @classmethod
    def params_for(cls, task: str) -> type[MethodParams]:
        return MethodParams if task in TOKEN_TASKS else CEParams

    def describe(self) -> str:
        return "ce" if self.token_level else super().describe()

    def compute(
        self, batch: dict[str, Any], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        if student.hidden is not None:
            return cross_entropy_terms(batch, student)
        return {"ce": cross_entropy(student.logits, batch["y"], label_smoothing=self.params.label_smoothing)}
