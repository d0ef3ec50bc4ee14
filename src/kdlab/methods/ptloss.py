"""PTLoss: KD with perturbed Maclaurin coefficients, epsilon given as (M,) or (C, M) numbers."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from kdlab.losses import ptloss

from .base import register
from .weighted import WeightedKDMethod, WeightedParams


class PTLossParams(WeightedParams):
    temperature: float = Field(1.0, gt=0)
    epsilon: list[float] | list[list[float]] = Field(default_factory=lambda: [0.0])


@register("ptloss")
class PTLossMethod(WeightedKDMethod):
    Params = PTLossParams

    def __init__(self, params: PTLossParams, num_classes: int) -> None:
        super().__init__(params, num_classes)
        self.epsilon = torch.tensor(params.epsilon, dtype=torch.float32)

    def distill_term(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        return ptloss(student_logits, teacher_logits, self.epsilon.to(student_logits.device), self.params.temperature)
