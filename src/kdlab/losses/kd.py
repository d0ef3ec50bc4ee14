"""Classic knowledge distillation (Hinton et al., 2015) and its label-smoothed teacher variant."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import check_temperature, pairwise_loss
from ._fused import kd_rows


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over classes.

    The direction is teacher ‖ student (the student covers the teacher's mass); the T² factor keeps the
    gradient's scale independent of T. ``reduction``: 'batchmean' (mean over rows), 'sum' or 'none'
    (per row); ``mask`` (bool, shape of the logits without the class dim) drops rows such as padding.
    """
    temperature = check_temperature(temperature)
    return pairwise_loss(
        student_logits,
        teacher_logits,
        reduction,
        mask,
        lambda s, t, dtype: kd_rows(s, t, temperature, None, dtype),
    )


def label_smoothing_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    smoothing: float = 0.1,
    temperature: float = 4.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """KD towards the teacher mixed with the uniform distribution: T² · KL((1-a)·p_t + a/C ‖ p_s).

    One of the teacher perturbations the PTLoss paper compares against.
    """
    temperature = check_temperature(temperature)
    if not 0.0 <= float(smoothing) <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing!r}")
    a = float(smoothing)

    def rows(s: Tensor, t: Tensor, dtype: torch.dtype) -> Tensor:
        log_teacher = torch.log_softmax(t.to(dtype) / temperature, dim=-1)
        if a > 0:
            uniform = math.log(a / t.shape[-1])
            log_teacher = (
                torch.logaddexp(log_teacher + math.log1p(-a), torch.full_like(log_teacher, uniform))
                if a < 1
                else torch.full_like(log_teacher, uniform)
            )
        # normalised log-probabilities times T are logits whose tempered softmax is the smoothed teacher
        return kd_rows(s, log_teacher * temperature, temperature, None, dtype)

    return pairwise_loss(student_logits, teacher_logits, reduction, mask, rows)
