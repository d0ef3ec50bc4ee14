"""DiSK's losses (Kag et al., ICLR 2023, "Scaffolding a student to instill knowledge"), as pure functions.

A guide g(x) ∈ [0, 1] props up the student's tempered prediction on a mask of classes — the teacher's top-K plus the
true label — so that on examples the student cannot fit, the distillation loss stops pushing it hard. A budget
limits how much help is given where the student errs. Everything here is arithmetic on logits, labels and the
guide's (N,) values; which network makes g, how the phases alternate and how the multiplier moves belong to the
method (``kdlab.methods.disk``).

Notation (per row): t teacher logits, s student logits, y the label, M the mask, τ_t / τ_s the temperatures.

    q   = M ⊙ softmax((t/τ_t) ⊙ M + min_c(t_c) · (1 − M))         the teacher's target on the mask
    p̃   = softmax(s/τ_s) + g · M                                    the scaffolded (un-normalised) student
    L   = τ_s · τ_t · Σ_c −q_c log p̃_c                              the hinted KD loss
    h   = min(CE(s, argmax t), c_max)                               how hard the row is for the student
    c   = Σ_i g_i h_i / #{i: argmax s_i ≠ y_i}                      the budget constraint (c ≤ ε)

With g ≡ 0, K = C and τ_s = τ_t = T, L = T² · H(softmax(t/T), softmax(s/T)): Hinton's KD plus the teacher's
entropy (a constant), so the student's gradient is KD's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_pair, check_reduction, check_target, check_temperature, compute_dtype, reduce_rows


def _check_guide(guide: Tensor, rows: int) -> Tensor:
    if not isinstance(guide, Tensor) or not guide.is_floating_point():
        raise ValueError(f"guide must be a floating-point tensor of shape ({rows},) or ({rows}, 1), got {guide!r:.60}")
    flat = guide.reshape(-1)
    if flat.shape[0] != rows:
        raise ValueError(f"guide must hold one value per row ({rows}), got shape {tuple(guide.shape)}")
    return flat


def topk_label_mask(teacher_logits: Tensor, target: Tensor, top_k: int) -> Tensor:
    """(N, C) bool: the teacher's ``top_k`` classes of each row plus its true label (``top_k`` ≥ C: every class)."""
    if int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    num_classes = teacher_logits.shape[-1]
    target = check_target(target, teacher_logits.shape[:-1], num_classes)
    mask = torch.zeros_like(teacher_logits, dtype=torch.bool)
    top = teacher_logits.topk(min(int(top_k), num_classes), dim=-1).indices
    mask.scatter_(-1, top, True)
    mask.scatter_(-1, target.unsqueeze(-1), True)
    return mask


def masked_teacher_target(teacher_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """q = M ⊙ softmax((t/τ) on the mask, min_c t_c off it): the teacher's tempered distribution, its mass off the
    mask dropped (not renormalised). The off-mask logits sit at the row's smallest raw logit (as the authors'
    ``use_prob = 50`` variant), so they take little of the softmax's mass."""
    temperature = check_temperature(temperature)
    t = teacher_logits.to(compute_dtype(teacher_logits))
    floor = t.min(dim=-1, keepdim=True).values
    return torch.softmax(torch.where(mask, t / temperature, floor), dim=-1) * mask


def hinted_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    guide: Tensor,
    top_k: int,
    student_temperature: float = 3.5,
    teacher_temperature: float = 4.0,
    reduction: str = "batchmean",
) -> Tensor:
    """τ_s · τ_t · Σ_c −q_c log(softmax(s/τ_s)_c + g · M_c): KD against the masked teacher target with the student's
    prediction scaffolded by the guide ``g`` (shape (N,) or (N, 1), values in [0, 1]) on the mask M (top-K of the
    teacher ∪ the label). Larger g lowers the loss on the mask, so gradients through ``guide`` drive it up and the
    student's gradient on that row shrinks. log p̃ is computed as logaddexp(log_softmax, log g): exact for g = 0."""
    s, t = check_pair(student_logits, teacher_logits)
    check_reduction(reduction)
    tau_s, tau_t = check_temperature(student_temperature), check_temperature(teacher_temperature)
    dtype = compute_dtype(s, t, guide)
    s2, t2 = s.reshape(-1, s.shape[-1]).to(dtype), t.reshape(-1, t.shape[-1]).to(dtype)
    g = _check_guide(guide, s2.shape[0]).to(dtype)
    mask = topk_label_mask(t2, target.reshape(-1), top_k)
    q = masked_teacher_target(t2, mask, tau_t)
    log_p = torch.log_softmax(s2 / tau_s, dim=-1)
    log_g = torch.log(g.clamp_min(torch.finfo(dtype).tiny)).unsqueeze(-1)  # g = 0: log_p exactly, no NaN gradient
    log_scaffolded = torch.where(mask, torch.logaddexp(log_p, log_g), log_p)
    rows = tau_s * tau_t * -(q * log_scaffolded).sum(dim=-1)
    return reduce_rows(rows, reduction, s.shape[:-1], None, rows.shape[0])


def hardness(student_logits: Tensor, teacher_logits: Tensor, max_ce: float = 5.0) -> Tensor:
    """(N,) h = min(CE(s, argmax t), c_max): the student's cross-entropy against the teacher's top class, capped so a
    hopeless row does not dominate the budget."""
    s, t = check_pair(student_logits, teacher_logits)
    s2 = s.reshape(-1, s.shape[-1]).to(compute_dtype(s))
    top = t.reshape(-1, t.shape[-1]).argmax(dim=-1)
    ce = torch.nn.functional.cross_entropy(s2, top, reduction="none")
    return ce.clamp(max=float(max_ce))


def budget_constraint(guide: Tensor, hardness_values: Tensor, student_logits: Tensor, target: Tensor) -> Tensor:
    """c = Σ_i g_i h_i / n_err, n_err = the student's top-1 mistakes in the batch (at least 1): the help given,
    weighted by hardness, per example the student gets wrong. The budget asks c ≤ ε."""
    g = _check_guide(guide, hardness_values.reshape(-1).shape[0])
    errors = (student_logits.reshape(-1, student_logits.shape[-1]).argmax(dim=-1) != target.reshape(-1)).sum()
    return (g * hardness_values.reshape(-1).to(g.dtype)).sum() / errors.clamp_min(1).to(g.dtype)
