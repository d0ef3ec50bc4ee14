"""The training engine: the loop (``fit``) and one call per command (``train``, ``distill``, ...)."""

from .logit_cache import CacheError
from .loop import FitResult, Splits, TrainingError, fit
from .run import cache_logits, distill, evaluate, fit_model, select_ptloss, train

__all__ = [
    "CacheError",
    "FitResult",
    "Splits",
    "TrainingError",
    "cache_logits",
    "distill",
    "evaluate",
    "fit",
    "fit_model",
    "select_ptloss",
    "train",
]
