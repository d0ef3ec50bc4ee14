"""The training engine: the loop (``fit``) and one call per command (``train``, ``distill``, ...)."""

from .logit_cache import CacheError
from .loop import FitResult, Splits, TrainingError, fit
from .processes import end_process_group
from .run import cache_logits, distill, evaluate, fit_model, select_ptloss, train
from .speed import fast_student, fast_teacher

__all__ = [
    "CacheError",
    "FitResult",
    "Splits",
    "TrainingError",
    "cache_logits",
    "distill",
    "end_process_group",
    "evaluate",
    "fast_student",
    "fast_teacher",
    "fit",
    "fit_model",
    "select_ptloss",
    "train",
]
