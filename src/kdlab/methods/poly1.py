"""Poly-1 applied to KD (PTLoss with M = 1): KL + epsilon · sum_k p_t,k (1 - p_s,k)."""

from __future__ import annotations

from torch import Tensor

from kdlab.losses import poly1_kd

from .base import register
from .schedule import Positive
from .weighted import WeightedKDMethod, WeightedParams


class Poly1Params(WeightedParams):
    temperature: Positive = 1.0
    epsilon: float = 1.0


@register("poly1")
class Poly1Method(WeightedKDMethod):
    Params = Poly1Params

    def distill_term(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
    ) -> Tensor:
        return poly1_kd(student_logits, teacher_logits, self.params.epsilon, temperature)
