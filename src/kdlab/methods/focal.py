"""Focal-style KD: the KD cross-entropy re-weighted by (1 - p_s)^gamma."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.losses import focal_kd

from .base import register
from .schedule import Positive
from .weighted import WeightedKDMethod, WeightedParams


class FocalParams(WeightedParams):
    temperature: Positive = 1.0
    gamma: float = Field(2.0, ge=0)


@register("focal")
class FocalMethod(WeightedKDMethod):
    Params = FocalParams

    def distill_term(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
    ) -> Tensor:
        return focal_kd(student_logits, teacher_logits, self.params.gamma, temperature)
