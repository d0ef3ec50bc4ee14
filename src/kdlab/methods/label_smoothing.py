"""KD towards the teacher smoothed with the uniform distribution."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.losses import label_smoothing_kd

from .base import register
from .weighted import WeightedKDMethod, WeightedParams


class LabelSmoothingParams(WeightedParams):
    smoothing: float = Field(0.1, ge=0, le=1)


@register("label_smoothing")
class LabelSmoothingMethod(WeightedKDMethod):
    Params = LabelSmoothingParams

    def distill_term(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
    ) -> Tensor:
        return label_smoothing_kd(student_logits, teacher_logits, self.params.smoothing, temperature)
