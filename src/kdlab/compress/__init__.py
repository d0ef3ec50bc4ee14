"""Compression combined with distillation: pruning (``prune``) and recovery through the engine (``recover``)."""

from .prune import (
    ReapplyMasks,
    global_magnitude_prune,
    linear_macs,
    prunable_weights,
    sparsity_report,
    step_targets,
    structured_prune_mlp,
)

__all__ = [
    "ReapplyMasks",
    "global_magnitude_prune",
    "linear_macs",
    "prunable_weights",
    "sparsity_report",
    "step_targets",
    "structured_prune_mlp",
]
