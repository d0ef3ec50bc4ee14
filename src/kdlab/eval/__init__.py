"""Evaluation: accuracy, NLL, calibration, and fidelity to the teacher; plots and the HTML report."""

from .metrics import (
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    fidelity,
    full_evaluation,
    reliability_curve,
)

__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "fidelity",
    "full_evaluation",
    "reliability_curve",
]
