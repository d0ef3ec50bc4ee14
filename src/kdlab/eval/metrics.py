"""Metrics of a classifier and of its fidelity to a teacher, computed in float64 on full outputs."""

from __future__ import annotations

import torch
from torch import Tensor


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins: sum_b (n_b / N) |accuracy_b - confidence_b|.

    A prediction with confidence c falls in bin ceil(c * n_bins) - 1 (bins are (lo, hi], the first [0, hi]).
    """
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).double()
    bins = (confidence.double() * n_bins).ceil().long().clamp(1, n_bins) - 1
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, confidence.double())
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, correct)
    return float((acc_sum - conf_sum).abs().sum() / max(len(labels), 1))


def classification_metrics(
    logits: Tensor, labels: Tensor, teacher_logits: Tensor | None = None, n_bins: int = 15
) -> dict[str, float]:
    """accuracy, nll, ece; with a teacher also top-1 agreement and mean KL(teacher ‖ student) at T = 1."""
    logits = logits.detach().double().cpu()
    labels = labels.detach().cpu().long()
    log_p = torch.log_softmax(logits, dim=-1)
    out = {
        "accuracy": float((log_p.argmax(-1) == labels).double().mean()),
        "nll": float(-log_p.gather(1, labels[:, None]).mean()),
        "ece": expected_calibration_error(log_p.exp(), labels, n_bins),
    }
    if teacher_logits is not None:
        log_q = torch.log_softmax(teacher_logits.detach().double().cpu(), dim=-1)
        q = log_q.exp()
        out["agreement"] = float((log_q.argmax(-1) == log_p.argmax(-1)).double().mean())
        out["kl_teacher"] = float(torch.where(q > 0, q * (log_q - log_p), 0.0).sum(-1).mean())
    return out
