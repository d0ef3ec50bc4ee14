"""Distillation methods, registered by name (``method: {name: kd, ...}`` in a config)."""

from . import ce, dkd, fitnets, focal, jsd, kd, label_smoothing, poly1, ptloss, reaugkd, reverse_kl, rid, vid  # noqa: F401
from .base import (
    Method,
    MethodParams,
    Outputs,
    Predictor,
    Requires,
    SetupContext,
    StepState,
    available,
    build,
    get_class,
    register,
    supporting,
)

__all__ = [
    "Method",
    "MethodParams",
    "Outputs",
    "Predictor",
    "Requires",
    "SetupContext",
    "StepState",
    "available",
    "build",
    "get_class",
    "register",
    "supporting",
]
