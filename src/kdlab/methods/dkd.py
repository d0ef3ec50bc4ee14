"""Decoupled KD with mdistiller's schedule: ce_weight · CE + min(progress / warmup, 1) · (α·TCKD + β·NCKD)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.losses import cross_entropy, dkd_loss

from .base import Method, MethodParams, Outputs, StepState, register


class DKDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)  # 8 (CIFAR-100 recipes) collapses small students: see ptloss_fmnist.md
    temperature: float = Field(4.0, gt=0)
    warmup_epochs: float = Field(20.0, ge=0, description="linear ramp of the DKD term, in epochs")


@register("dkd")
class DKDMethod(Method):
    Params = DKDParams

    def compute(
        self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        p, student_logits = self.params, student.logits
        assert teacher is not None
        ramp = 1.0 if p.warmup_epochs == 0 else min(state.progress / p.warmup_epochs, 1.0)
        terms = {"dkd": ramp * dkd_loss(student_logits, teacher.logits, batch["y"], p.alpha, p.beta, p.temperature)}
        if p.ce_weight > 0:
            terms["ce"] = p.ce_weight * cross_entropy(student_logits, batch["y"])
        return terms
