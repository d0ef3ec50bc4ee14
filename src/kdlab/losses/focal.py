"""Focal-style KD: the KD cross-entropy re-weighted by (1 - p_s)^gamma (a PTLoss-paper baseline)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_temperature, pairwise_loss


def focal_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    gamma: float = 2.0,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """T² · [ sum_k p_t,k (1 - p_s,k)^gamma (-log p_s,k) - H(p_t) ].

    The teacher entropy H(p_t) is a constant for the student; subtracting it makes gamma = 0 equal
    ``kd_loss`` exactly. (1 - p_s) is floored at 1e-12 so gradients stay finite when p_s = 1.
    """
    temperature = check_temperature(temperature)
    if not float(gamma) >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    g = float(gamma)

    def rows(s: Tensor, t: Tensor, dtype: torch.dtype) -> Tensor:
        log_p = torch.log_softmax(s.to(dtype) / temperature, dim=-1)
        log_q = torch.log_softmax(t.to(dtype) / temperature, dim=-1)
        q = log_q.exp()
        weight = (-torch.expm1(log_p)).clamp_min(1e-12).pow(g) if g > 0 else 1.0
        return (torch.xlogy(q, q) - q * weight * log_p).sum(-1) * temperature**2

    return pairwise_loss(student_logits, teacher_logits, reduction, mask, rows)
