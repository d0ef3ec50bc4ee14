"""Hinton KD: alpha · CE + beta · T² · KL(teacher ‖ student) (defaults as mdistiller's KD baseline); for language
models the same divergence per token, fused with the output layer (``token``; defaults alpha 0, beta 1, T 1)."""

from __future__ import annotations

from torch import Tensor

from kdlab.losses import kd_loss

from .base import TOKEN_TASKS, register
from .token import TokenLevel
from .weighted import WeightedKDMethod


@register("kd")
class KDMethod(TokenLevel, WeightedKDMethod):
    tasks = ("classify", *TOKEN_TASKS)
    divergence = "kd"

    def distill_term(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
    ) -> Tensor:
        return kd_loss(student_logits, teacher_logits, temperature)
