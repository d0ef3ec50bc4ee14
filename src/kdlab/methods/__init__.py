"""Distillation methods, registered by name (``method: {name: kd, ...}`` in a config)."""

from . import ce, dkd, focal, kd, label_smoothing, poly1, ptloss  # noqa: F401  (registration)
from .base import Method, MethodParams, StepState, available, build, get_class, register

__all__ = ["Method", "MethodParams", "StepState", "available", "build", "get_class", "register"]
