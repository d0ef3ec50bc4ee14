"""Reverse KL for language models: T² · KL(student ‖ teacher) per token — mode-seeking (MiniLLM's
direction), fused with the output layer; ``beta · D + alpha · CE``, defaults alpha 0, beta 1, T 1."""

from __future__ import annotations

from .base import register
from .token import TokenMethod


@register("reverse_kl")
class ReverseKLMethod(TokenMethod):
    divergence = "reverse_kl"
