"""Per-row value and analytic gradient of the token-level divergences, on already tempered logits.

Every kernel takes (R, C) student and teacher logits z_s, z_t (divided by T already, float32/64) and returns
the per-row value f (without T²) and d f / d z_s. KD and PTLoss reuse the shared kernel of ``kd_loss`` and
``ptloss`` (``_fused._compute``); reverse KL and JSD are written here. With p = softmax(z_s), q = softmax(z_t):

* reverse KL, f = Σ p (log p − log q):            df/dz = p · (d − f),          d = log p − log q
* JSD_β, m = β q + (1 − β) p,
  f = β KL(q ‖ m) + (1 − β) KL(p ‖ m):            df/dz = p · (g − <p, g>),     g = (1 − β) · log(p / m)

(for JSD, ∂f/∂p_k = (1 − β) log(p_k / m_k): the terms from m cancel). Both are checked against autograd
in the tests. Logits of −inf are clamped to a large negative number so 0 · log 0 stays 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._fused import _compute

LOSSES = ("kd", "ptloss", "reverse_kl", "jsd")
NEG_LOGIT = -1e30  # stands in for -inf: exp gives exactly 0, differences stay finite


def _log_softmax(z: Tensor) -> Tensor:
    return torch.log_softmax(z.clamp(min=NEG_LOGIT), dim=-1)


def reverse_kl_rows(zs: Tensor, zt: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    log_p = _log_softmax(zs)
    d = log_p - _log_softmax(zt)
    p = log_p.exp_()
    value = torch.linalg.vecdot(p, d)
    if not need_grad:
        return value, None
    return value, d.sub_(value.unsqueeze(-1)).mul_(p)


def jsd_rows(zs: Tensor, zt: Tensor, beta: float, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    log_p = _log_softmax(zs)
    log_q = _log_softmax(zt)
    log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log1p(-beta))
    p = log_p.exp()
    q = log_q.exp()
    g = log_p.sub_(log_m)  # log(p / m)
    value = beta * torch.linalg.vecdot(q, log_q.sub_(log_m)) + (1 - beta) * torch.linalg.vecdot(p, g)
    if not need_grad:
        return value, None
    g.mul_(1 - beta)
    return value, g.sub_(torch.linalg.vecdot(p, g).unsqueeze(-1)).mul_(p)


def divergence_rows(
    loss: str, zs: Tensor, zt: Tensor, epsilon: Tensor | None, beta: float, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """(R,) values and (R, C) d value / d zs of ``loss`` on tempered logits (no T² factor)."""
    if loss == "kd":
        return _compute(zs, zt, 1.0, None, need_grad)
    if loss == "ptloss":
        return _compute(zs, zt, 1.0, epsilon, need_grad)
    if loss == "reverse_kl":
        return reverse_kl_rows(zs, zt, need_grad)
    if loss == "jsd":
        return jsd_rows(zs, zt, beta, need_grad)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
