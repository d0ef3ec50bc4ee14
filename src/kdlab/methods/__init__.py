"""Distillation methods, registered by name (``method: {name: kd, ...}`` in a config)."""

from . import ce, dkd, fitnets, focal, kd, label_smoothing, poly1, ptloss, vid  # noqa: F401  (registration)
from .base import (
    Method,
    MethodParams,
    Outputs,
    Requires,
    SetupContext,
    StepState,
    available,
    build,
    get_class,
    register,
)

__all__ = [
    "Method",
    "MethodParams",
    "Outputs",
    "Requires",
    "SetupContext",
    "StepState",
    "available",
    "build",
    "get_class",
    "register",
]
