"""Hinton KD: alpha · CE + beta · T² · KL(teacher ‖ student) (defaults as mdistiller's KD baseline)."""

from __future__ import annotations

from torch import Tensor

from kdlab.losses import kd_loss

from .base import register
from .weighted import WeightedKDMethod


@register("kd")
class KDMethod(WeightedKDMethod):
    def distill_term(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
    ) -> Tensor:
        return kd_loss(student_logits, teacher_logits, temperature)
