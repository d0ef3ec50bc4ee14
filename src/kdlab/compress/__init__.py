"""Compression combined with distillation: pruning (``prune``), int8 quantization (``quantize``) and recovery
through the one loop (``recover``)."""

from . import quantize  # noqa: F401  (registers the int8 model format with kdlab.models.weights)
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
