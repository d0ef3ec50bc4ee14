"""The shape most KD methods share: alpha · CE(labels) + beta · (a distillation term)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.losses import cross_entropy

from .base import Method, MethodParams, StepState


class WeightedParams(MethodParams):
    alpha: float = Field(0.1, ge=0, description="weight of the hard-label cross-entropy")
    beta: float = Field(0.9, ge=0, description="weight of the distillation term")
    temperature: float = Field(4.0, gt=0)


class WeightedKDMethod(Method):
    """Subclasses implement ``distill_term``; the weights and CE part live here once."""

    Params = WeightedParams

    def distill_term(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(
        self, batch: dict[str, Tensor], student_logits: Tensor, teacher_logits: Tensor | None, state: StepState
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.params.alpha > 0:
            terms["ce"] = self.params.alpha * cross_entropy(student_logits, batch["y"])
        if self.params.beta > 0:
            terms[self.name] = self.params.beta * self.distill_term(student_logits, teacher_logits, batch["y"])
        return terms
