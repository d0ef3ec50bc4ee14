"""nn.Module wrappers: hyper-parameters fixed at construction, one uniform call for every loss.

``loss(student_logits, teacher_logits=None, target=None, mask=None)``: each module says what it needs
through ``requires_teacher`` / ``requires_target``, so a training method can call any of them alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .ce import cross_entropy
from .dkd import dkd_loss
from .focal import focal_kd
from .kd import kd_loss, label_smoothing_kd
from .ptloss import poly1_kd, ptloss
from .registry import register


class _LossModule(nn.Module):
    requires_teacher = True
    requires_target = False

    def __init__(self, reduction: str = "batchmean") -> None:
        super().__init__()
        self.reduction = reduction

    def _needs(self, teacher_logits: Tensor | None, target: Tensor | None) -> None:
        name = type(self).__name__
        if self.requires_teacher and teacher_logits is None:
            raise ValueError(f"{name} needs teacher_logits")
        if self.requires_target and target is None:
            raise ValueError(f"{name} needs target (the hard labels)")


@register("kd")
class KDLoss(_LossModule):
    """Hinton KD: T² · KL(p_t ‖ p_s)."""

    def __init__(self, temperature: float = 4.0, reduction: str = "batchmean") -> None:
        super().__init__(reduction)
        self.temperature = temperature

    def forward(self, student_logits, teacher_logits=None, target=None, mask=None) -> Tensor:
        self._needs(teacher_logits, target)
        return kd_loss(student_logits, teacher_logits, self.temperature, self.reduction, mask)


@register("ptloss")
class PTLoss(_LossModule):
    """Perturbed KD loss; ``epsilon`` (M,) or (C, M) is a buffer, so it follows ``.to(device)``."""

    def __init__(self, epsilon, temperature: float = 1.0, reduction: str = "batchmean") -> None:
        super().__init__(reduction)
        self.register_buffer("epsilon", torch.as_tensor(epsilon, dtype=torch.float64).clone())
        self.temperature = temperature

    def forward(self, student_logits, teacher_logits=None, target=None, mask=None) -> Tensor:
        self._needs(teacher_logits, target)
        return ptloss(student_logits, teacher_logits, self.epsilon, self.temperature, self.reduction, mask)


@register("poly1")
class Poly1KD(_LossModule):
    """KD + eps · sum p_t (1 - p_s): PTLoss with M = 1."""

    def __init__(self, epsilon: float = 1.0, temperature: float = 1.0, reduction: str = "batchmean") -> None:
        super().__init__(reduction)
        self.epsilon, self.temperature = epsilon, temperature

    def forward(self, student_logits, teacher_logits=None, target=None, mask=None) -> Tensor:
        self._needs(teacher_logits, target)
        return poly1_kd(student_logits, teacher_logits, self.epsilon, self.temperature, self.reduction, mask)


@register("label_smoothing_kd")
class LabelSmoothingKD(_LossModule):
    """KD towards (1 - a)·p_t + a/C."""

    def __init__(self, smoothing: float = 0.1, temperature: float = 4.0, reduction: str = "batchmean") -> None:
        super().__init__(reduction)
        self.smoothing, self.temperature = smoothing, temperature

    def forward(self, student_logits, teacher_logits=None, target=None, mask=None) -> Tensor:
        self._needs(teacher_logits, target)
        return label_smoothing_kd(
            student_logits, teacher_logits, self.smoothing, self.temperature, self.reduction, mask
        )


@register("focal_kd")
class FocalKD(_LossModule):
    """KD cross-entropy re-weighted by (1 - p_s)^gamma."""

    def __init__(self, gamma: float = 2.0, temperature: float = 1.0, reduction: str = "batchmean") -> None:
        super().__init__(reduction)
        self.gamma, self.temperature = gamma, temperature

    def forward(self, student_logits, teacher_logits=None, target=None, mask=None) -> Tensor:
        self._needs(teacher_logits, target)
        return focal_kd(student_logits, teacher_logits, self.gamma, self.temperature, self.reduction, mask)


@register("dkd")
class DKDLoss(_LossModule):
    """Decoupled KD: alpha · TCKD + beta · NCKD (needs the hard labels)."""

    requires_target = True

    def __init__(
        self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, reduction: str = "batchmean"
    ) -> None:
        super().__init__(reduction)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def forward(self, student_logits, teacher_logits=None, target=None, mask=None) -> Tensor:
        self._needs(teacher_logits, target)
        if mask is not None:
            raise ValueError("dkd does not take a mask; select the rows before calling it")
        return dkd_loss(student_logits, teacher_logits, target, self.alpha, self.beta, self.temperature, self.reduction)


@register("ce")
class CrossEntropy(_LossModule):
    """Hard-label cross-entropy (ignores the teacher); rows with target == ignore_index do not count."""

    requires_teacher = False
    requires_target = True

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int = -100, reduction: str = "batchmean") -> None:
        super().__init__(reduction)
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index

    def forward(self, student_logits, teacher_logits=None, target=None, mask=None) -> Tensor:
        self._needs(teacher_logits, target)
        if mask is not None:
            target = target.masked_fill(~mask, self.ignore_index)
        return cross_entropy(student_logits, target, self.reduction, self.label_smoothing, self.ignore_index)
