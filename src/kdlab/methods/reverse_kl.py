"""Reverse KL for language models: T² · KL(student ‖ teacher) per token — mode-seeking (MiniLLM's
direction), fused with the output layer; ``beta · D + alpha · CE``, defaults alpha 0, beta 1, T 1."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import Method, Outputs, StepState, register
from .token import TokenLevel, TokenParams


@register("reverse_kl")
class ReverseKLMethod(TokenLevel, Method):
    tasks = ("causal_lm",)
    divergence = "reverse_kl"
    Params = TokenParams
    token_params = TokenParams

    def compute(
        self, batch: dict[str, Any], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        return self.token_terms(batch, student, teacher, state)

    def describe(self) -> str:
        return self.describe_token()
