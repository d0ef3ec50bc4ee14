"""Generalised Jensen-Shannon divergence for language models (GKD's default): per token,
T² · [β KL(q ‖ m) + (1 − β) KL(p ‖ m)] with m = β q + (1 − β) p (``jsd_beta``), fused with the output layer."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import Tensor

from .base import Method, Outputs, StepState, register
from .token import TokenLevel, TokenParams


class JSDParams(TokenParams):
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="weight of the teacher side of the mixture")


@register("jsd")
class JSDMethod(TokenLevel, Method):
    tasks = ("causal_lm",)
    divergence = "jsd"
    Params = JSDParams
    token_params = JSDParams

    def compute(
        self, batch: dict[str, Any], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        return self.token_terms(batch, student, teacher, state)

    def describe(self) -> str:
        return self.describe_token()
