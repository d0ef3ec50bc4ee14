"""The shape most KD methods share: alpha · CE(labels) + beta · (a distillation term).

alpha, beta and temperature may be schedules over the epoch (``methods.schedule``); ``kd_until_epoch: E``
is early-stopped KD's second form (Cho & Hariharan 2019): after epoch E the student trains on the
hard labels only (beta = 0, alpha = 1).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.losses import cross_entropy

from .base import Method, MethodParams, Outputs, StepState
from .schedule import NonNegative, Positive, value_at


class WeightedParams(MethodParams):
    alpha: NonNegative = Field(0.1, description="weight of the hard-label cross-entropy (number or schedule)")
    beta: NonNegative = Field(0.9, description="weight of the distillation term (number or schedule)")
    temperature: Positive = 4.0
    kd_until_epoch: int | None = Field(None, ge=0, description="after this epoch: CE only (alpha 1, beta 0)")


class WeightedKDMethod(Method):
    """Subclasses implement ``distill_term`` at the temperature in effect; the weights and CE part live here."""

    Params = WeightedParams

    def distill_term(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
    ) -> Tensor:
        raise NotImplementedError

    def current_values(self, state: StepState) -> dict[str, float]:
        p, epoch = self.params, state.epoch + 1
        values = {
            "alpha": value_at(p.alpha, epoch, state.epochs),
            "beta": value_at(p.beta, epoch, state.epochs),
            "temperature": value_at(p.temperature, epoch, state.epochs),
        }
        if p.kd_until_epoch is not None and epoch > p.kd_until_epoch:
            values.update(alpha=1.0, beta=0.0)
        return values

    def compute(
        self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        values = self.current_values(state)
        terms: dict[str, Tensor] = {}
        if values["alpha"] > 0:
            terms["ce"] = values["alpha"] * cross_entropy(student.logits, batch["y"])
        if values["beta"] > 0:
            assert teacher is not None and teacher.logits is not None
            terms[self.name] = values["beta"] * self.distill_term(
                student.logits, teacher.logits, batch["y"], values["temperature"]
            )
        return terms
