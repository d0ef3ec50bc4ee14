"""Evaluation: accuracy, NLL, calibration, and fidelity to the teacher."""

from .metrics import classification_metrics, expected_calibration_error

__all__ = ["classification_metrics", "expected_calibration_error"]
