"""The training engine: the loop (``fit``) and one call per command (``train``, ``distill``, ...)."""

from kdlab.errors import CacheError, TrainingError

from .loop import StepInfo
from .processes import end_process_group
from .run import cache_logits, distill, evaluate, fit_model, select_ptloss, train
from .speed import fast_student, fast_teacher
from .supervised import FitResult, Splits, fit

__all__ = [
    "CacheError",
    "FitResult",
    "Splits",
    "StepInfo",
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
