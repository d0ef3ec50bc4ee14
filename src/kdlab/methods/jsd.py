"""Generalised Jensen-Shannon divergence for language models (GKD's default): per token,
T² · [β KL(q ‖ m) + (1 − β) KL(p ‖ m)] with m = β q + (1 − β) p (``jsd_beta``), fused with the output layer."""

from __future__ import annotations

from pydantic import Field

from .base import register
from .token import TokenMethod, TokenParams


class JSDParams(TokenParams):
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="weight of the teacher side of the mixture")


@register("jsd")
class JSDMethod(TokenMethod):
    divergence = "jsd"
    Params = JSDParams
    token_params = JSDParams
