"""Embedding losses of ReAugKD (Zhang et al., ACL 2023): a supervised contrastive loss that shapes the teacher's
projected embedding space, and the relational loss that makes the student's similarities to teacher entries
follow the teacher's own — what lets a student query the teacher's knowledge base at inference.

Both take embeddings (rows are examples) and normalise them to unit length themselves, so a cosine similarity is
an inner product; both compute in float32 (float64 for float64 inputs) even under autocast.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ._common import check_reduction, check_temperature


def _full(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _check_rows(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a (N, D) tensor of embeddings, got {getattr(x, 'shape', type(x))}")


def supcon_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the "L_out" form), mean over anchors with a positive.

    For anchor i with positives P(i) = {p ≠ i : y_p = y_i} and z = normalise(embeddings):
        ℓ_i = −1/|P(i)| · Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) )
    Anchors without a positive in the batch contribute nothing (0 when none has one, so a batch of singletons
    gives no gradient instead of NaN)."""
    _check_rows("embeddings", embeddings)
    tau = check_temperature(temperature)
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must have shape ({len(embeddings)},), got {tuple(labels.shape)}")
    z = F.normalize(_full(embeddings), dim=1)
    logits = z @ z.T / tau
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # a ≠ i in the denominator
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(1)
    has = counts > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(1)[has] / counts[has]
    return per_anchor.mean()


def relational_loss(
    teacher_queries: Tensor,
    student_queries: Tensor,
    keys: Tensor,
    teacher_temperature: float = 0.5,
    student_temperature: float = 0.5,
    reduction: str = "batchmean",
) -> Tensor:
    """KL(A_i ‖ B_i) between the teacher–teacher and the student–teacher similarity distributions over ``keys``:

        A_i = softmax_j( cos(u_i, k_j) / τ_t ),   B_i = softmax_j( cos(v_i, k_j) / τ_s )

    ``teacher_queries`` u (N, D) and ``student_queries`` v (N, D) are the same N examples seen by the (projected)
    teacher and the student; ``keys`` are teacher entries, shared (M, D) — the batch's own teacher embeddings —
    or per query (N, M, D) — each example's entries retrieved from the knowledge base. Gradients reach the
    student's queries; the teacher side is a target. Reductions as every kdlab loss (batchmean: sum over keys,
    mean over rows)."""
    _check_rows("teacher_queries", teacher_queries)
    _check_rows("student_queries", student_queries)
    check_reduction(reduction)
    t_tau, s_tau = check_temperature(teacher_temperature), check_temperature(student_temperature)
    if teacher_queries.shape != student_queries.shape:
        raise ValueError(
            f"teacher and student queries must have the same shape, got {tuple(teacher_queries.shape)} and "
            f"{tuple(student_queries.shape)} (project one side to the other's size)"
        )
    if keys.dim() not in (2, 3) or keys.shape[-1] != teacher_queries.shape[1]:
        raise ValueError(f"keys must be (M, {teacher_queries.shape[1]}) or (N, M, D), got {tuple(keys.shape)}")
    u = F.normalize(_full(teacher_queries), dim=-1).detach()
    v = F.normalize(_full(student_queries), dim=-1)
    k = F.normalize(_full(keys), dim=-1).detach()
    if k.dim() == 2:
        teacher_sim, student_sim = u @ k.T, v @ k.T
    else:
        teacher_sim, student_sim = torch.einsum("nd,nmd->nm", u, k), torch.einsum("nd,nmd->nm", v, k)
    log_a = torch.log_softmax(teacher_sim / t_tau, dim=-1)
    log_b = torch.log_softmax(student_sim / s_tau, dim=-1)
    per_row = (log_a.exp() * (log_a - log_b)).sum(-1)
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.mean()
