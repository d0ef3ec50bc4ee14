"""The task registry (``task:`` in a config): each task in one module, registered by name."""

from . import causal_lm, classify, cooperative, rl, text_classify  # noqa: F401  (registration)
from .base import Task, available, get, register

__all__ = ["Task", "available", "get", "register"]
