"""kdlab.losses: distillation losses as pure functions on logits, nn.Module wrappers and a registry.

Every function takes raw logits of shape (N, C) or (N, ..., C), computes in float32 (float64 for
float64 inputs) even under autocast, and reduces with 'batchmean' (sum over classes, mean over rows),
'sum' or 'none'.
"""

from ._fused import get_backend, set_backend
from .ce import cross_entropy
from .dkd import dkd_loss, dkd_terms
from .focal import focal_kd
from .fused_linear import fused_linear_distill
from .kd import kd_loss, label_smoothing_kd
from .modules import CrossEntropy, DKDLoss, FocalKD, KDLoss, LabelSmoothingKD, Poly1KD, PTLoss
from .proxy import proxy_teacher
from .ptloss import poly1_kd, ptloss
from .registry import available, get, register
from .relational import relational_loss, supcon_loss
from .scaffold import budget_constraint, hardness, hinted_kd_loss, masked_teacher_target, topk_label_mask
from .sparse_teacher import SparseTeacher, sparse_teacher_from_logits

__all__ = [
    "CrossEntropy",
    "DKDLoss",
    "FocalKD",
    "KDLoss",
    "LabelSmoothingKD",
    "PTLoss",
    "Poly1KD",
    "SparseTeacher",
    "available",
    "budget_constraint",
    "cross_entropy",
    "dkd_loss",
    "dkd_terms",
    "focal_kd",
    "fused_linear_distill",
    "get",
    "get_backend",
    "hardness",
    "hinted_kd_loss",
    "kd_loss",
    "label_smoothing_kd",
    "masked_teacher_target",
    "poly1_kd",
    "proxy_teacher",
    "ptloss",
    "register",
    "relational_loss",
    "set_backend",
    "sparse_teacher_from_logits",
    "supcon_loss",
    "topk_label_mask",
]
