"""Compression combined with distillation: pruning (``prune``) and recovery through the engine (``recover``)."""

from .channels import cnn_channels, forward_macs, structured_prune, structured_prune_cnn, structured_widths
from .prune import (
    ReapplyMasks,
    global_magnitude_prune,
    kept_units,
    linear_macs,
    prunable_weights,
    sparsity_report,
    step_targets,
    structured_prune_mlp,
)

__all__ = [
    "ReapplyMasks",
    "cnn_channels",
    "forward_macs",
    "global_magnitude_prune",
    "kept_units",
    "linear_macs",
    "prunable_weights",
    "sparsity_report",
    "step_targets",
    "structured_prune",
    "structured_prune_cnn",
    "structured_prune_mlp",
    "structured_widths",
]
