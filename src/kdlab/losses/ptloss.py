"""PTLoss: KD with perturbed leading Maclaurin coefficients ("Do not blindly imitate the teacher").

The KD cross-entropy term -log p = sum_{m>=1} (1-p)^m / m. PTLoss adds eps_{k,m} to the first M
coefficients, so the student imitates a *proxy teacher* (see ``proxy_teacher``) instead of the teacher:

    l_PT = T² · [ KL(p_t ‖ p_s) + sum_k p_t,k sum_{m=1..M} eps_{k,m} (1 - p_s,k)^m ]

The rest of the series is kept exactly through the log term, and the polynomial is evaluated by
Horner's rule inside the fused kernel shared with ``kd_loss``.
"""

from __future__ import annotations

from torch import Tensor

from ._common import as_epsilon, check_pair, check_temperature, compute_dtype, pairwise_loss
from ._fused import kd_rows


def ptloss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    epsilon: Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Perturbed KD loss; ``epsilon`` of shape (M,) (shared by all classes) or (C, M) (per class).

    With epsilon = 0 it equals ``kd_loss`` at the same temperature. Any real epsilon is accepted here;
    the proxy-teacher view (and its guarantees) needs every coefficient 1/m + eps_{k,m} >= 0.
    """
    temperature = check_temperature(temperature)
    s, t = check_pair(student_logits, teacher_logits)
    eps = as_epsilon(epsilon, s.shape[-1], device=s.device, dtype=compute_dtype(s, t))
    return pairwise_loss(s, t, reduction, mask, lambda s_, t_, dtype: kd_rows(s_, t_, temperature, eps, dtype))


def poly1_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    epsilon: float = 1.0,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Poly-1 applied to KD: T² · [KL(p_t ‖ p_s) + eps · sum_k p_t,k (1 - p_s,k)], i.e. PTLoss with M = 1."""
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise ValueError(f"epsilon must be a number for poly1_kd, got {epsilon!r:.60}") from None
    return ptloss(student_logits, teacher_logits, [value], temperature, reduction, mask)
