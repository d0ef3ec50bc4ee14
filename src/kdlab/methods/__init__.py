"""Distillation methods, registered by name (``method: {name: kd, ...}`` in a config)."""

from . import (  # noqa: F401  (registration)
    ce,
    disk,
    dkd,
    fitnets,
    focal,
    jsd,
    kd,
    label_smoothing,
    poly1,
    ptloss,
    reaugkd,
    reverse_kl,
    rid,
    vid,
)
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
