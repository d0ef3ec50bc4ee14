"""Hinton KD: alpha · CE + beta · T² · KL(teacher ‖ student) (defaults as mdistiller's KD baseline); for language
models the same divergence per token, fused with the output layer (``token``; defaults alpha 0, beta 1, T 1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kdlab.losses import kd_loss

from .base import Outputs, StepState, register
from .token import TokenLevel
from .weighted import WeightedKDMethod


@register("kd")
class KDMethod(TokenLevel, WeightedKDMethod):
    tasks = ("classify", "causal_lm")
    divergence = "kd"

    def compute(
        self, batch: dict[str, Any], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        if student.hidden is not None:
            return self.token_terms(batch, student, teacher, state)
        return super().compute(batch, student, teacher, state)

    def describe(self) -> str:
        return self.describe_token() if self.task == "causal_lm" else super().describe()

    def distill_term(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
    ) -> Tensor:
        return kd_loss(student_logits, teacher_logits, temperature)
