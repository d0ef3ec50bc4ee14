"""Decoupled KD (Zhao et al., CVPR 2022): target-class and non-target-class parts weighted apart.

Per sample, with b = [p_g, 1 - p_g] and p̂ the softmax over the non-target classes,
KL(p_t ‖ p_s) = KL(b_t ‖ b_s) + (1 - p_t,g) · KL(p̂_t ‖ p̂_s); DKD replaces the coupling weight
(1 - p_t,g) by a free beta. Computed in log space (no clamping), so one-hot teachers are exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import (
    check_pair,
    check_reduction,
    check_target,
    check_temperature,
    compute_dtype,
    raise_if_nonfinite,
)


def _kl_terms(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """sum p (log p - log q), with finite logs so that entries of p = 0 add exactly 0 (gradients included)."""
    return (p * (log_p - log_q)).sum(-1)


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Per-row (TCKD, NCKD), each already multiplied by T²; shapes = the logits without the class dim."""
    temperature = check_temperature(temperature)
    s, t = check_pair(student_logits, teacher_logits)
    if s.shape[-1] < 2:
        raise ValueError("dkd needs at least 2 classes")
    g = check_target(target, s.shape[:-1], s.shape[-1]).unsqueeze(-1)
    dtype = compute_dtype(s, t)
    zs, zt = s.to(dtype) / temperature, t.to(dtype) / temperature
    onehot = torch.zeros_like(zs, dtype=torch.bool).scatter_(-1, g, True)
    lse_s, lse_t = zs.logsumexp(-1), zt.logsumexp(-1)
    rest_s, rest_t = zs.masked_fill(onehot, -torch.inf), zt.masked_fill(onehot, -torch.inf)
    lse_rest_s, lse_rest_t = rest_s.logsumexp(-1), rest_t.logsumexp(-1)
    # binary (target, rest) distributions in log space
    log_b_s = torch.stack([zs.gather(-1, g).squeeze(-1) - lse_s, lse_rest_s - lse_s], dim=-1)
    log_b_t = torch.stack([zt.gather(-1, g).squeeze(-1) - lse_t, lse_rest_t - lse_t], dim=-1)
    lowest = torch.finfo(dtype).min
    log_b_s, log_b_t = log_b_s.clamp(min=lowest), log_b_t.clamp(min=lowest)  # a one-hot teacher gives log 0
    tckd = _kl_terms(log_b_t.exp(), log_b_t, log_b_s)
    # the target entry of the non-target distributions is -inf; set it to 0 (its probability is exactly 0)
    log_hat_s = (rest_s - lse_rest_s.unsqueeze(-1)).masked_fill(onehot, 0.0)
    log_hat_t = (rest_t - lse_rest_t.unsqueeze(-1)).masked_fill(onehot, 0.0)
    nckd = _kl_terms(log_hat_t.exp().masked_fill(onehot, 0.0), log_hat_t, log_hat_s)
    scale = temperature**2
    return tckd * scale, nckd * scale


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float | Tensor = 1.0,
    beta: float | Tensor = 8.0,
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> Tensor:
    """alpha · TCKD + beta · NCKD (mdistiller's defaults: alpha 1, beta 8, T 4).

    alpha/beta may be tensors broadcastable to the rows (per-sample weights). The epoch warm-up of the
    DKD paper belongs to the training method, not to this loss.
    """
    check_reduction(reduction)
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    rows = alpha * tckd + beta * nckd
    if reduction == "sum":
        out = rows.sum()
    elif reduction == "batchmean":
        out = rows.sum() / max(rows.numel(), 1)
    else:
        out = rows
    raise_if_nonfinite(out, student_logits=student_logits, teacher_logits=teacher_logits)
    return out
