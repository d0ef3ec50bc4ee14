"""Plain cross-entropy on hard labels (training a teacher, or the no-distillation baseline)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.losses import cross_entropy

from .base import Method, MethodParams, Outputs, StepState, register


class CEParams(MethodParams):
    label_smoothing: float = Field(0.0, ge=0, le=1)


@register("ce")
class CEMethod(Method):
    Params = CEParams
    needs_teacher = False

    def compute(
        self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        return {"ce": cross_entropy(student.logits, batch["y"], label_smoothing=self.params.label_smoothing)}
