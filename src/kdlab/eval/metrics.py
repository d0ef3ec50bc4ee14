"""Metrics of a classifier and of its fidelity to a teacher, computed in float64 on full outputs."""

from __future__ import annotations

import torch
from torch import Tensor


def _bins(confidence: Tensor, n_bins: int) -> Tensor:
    """Bin of each confidence: ceil(c * n_bins) - 1, i.e. bins (lo, hi], the first [0, hi]."""
    return (confidence.double() * n_bins).ceil().long().clamp(1, n_bins) - 1


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins: sum_b (n_b / N) |accuracy_b - confidence_b|.

    A prediction with confidence c falls in bin ceil(c * n_bins) - 1 (bins are (lo, hi], the first [0, hi]).
    """
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).double()
    bins = _bins(confidence, n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, confidence.double())
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, correct)
    return float((acc_sum - conf_sum).abs().sum() / max(len(labels), 1))


def reliability_curve(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, list[float]]:
    """Per confidence bin (the ECE's bins): edges, mean confidence, accuracy and count (empty bins: NaN, 0).

    sum_b count_b / N * |accuracy_b - confidence_b| over non-empty bins is the ECE.
    """
    probs = probs.detach().double().cpu()
    labels = labels.detach().cpu().long()
    confidence, predicted = probs.max(dim=-1)
    bins = _bins(confidence, n_bins)
    count = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, confidence)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, (predicted == labels).double())
    nan = torch.full_like(count, float("nan"))
    return {
        "lower": [b / n_bins for b in range(n_bins)],
        "upper": [(b + 1) / n_bins for b in range(n_bins)],
        "confidence": torch.where(count > 0, conf_sum / count.clamp_min(1), nan).tolist(),
        "accuracy": torch.where(count > 0, acc_sum / count.clamp_min(1), nan).tolist(),
        "count": [int(c) for c in count.tolist()],
    }


def fidelity(student_log_probs: Tensor, teacher_probs: Tensor) -> dict[str, float]:
    """Top-1 agreement and mean KL(teacher ‖ student) between two distributions given as log-probs / probs.

    Terms with teacher probability 0 contribute 0 (the convention 0 · log 0 = 0).
    """
    log_p = student_log_probs.detach().double().cpu()
    q = teacher_probs.detach().double().cpu()
    log_q = q.log()
    return {
        "agreement": float((q.argmax(-1) == log_p.argmax(-1)).double().mean()),
        "kl": float(torch.where(q > 0, q * (log_q - log_p), 0.0).sum(-1).mean()),
    }


def confusion_matrix(rows: Tensor, cols: Tensor, num_classes: int) -> list[list[int]]:
    """counts[i][j] = number of examples with ``rows == i`` and ``cols == j`` (e.g. teacher vs student predictions)."""
    rows, cols = rows.detach().cpu().long(), cols.detach().cpu().long()
    flat = torch.bincount(rows * num_classes + cols, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes).tolist()


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


def label_agreement_scores(predicted: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """F1 (of class 1 for two classes, as GLUE's MRPC/QQP; macro over classes otherwise) and Matthews correlation
    (GLUE's CoLA): the scores that stay honest when the classes are imbalanced."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    if len(labels) == 0:
        return {}
    y, p = labels.numpy(), predicted.numpy()
    average = "binary" if num_classes == 2 else "macro"
    return {
        "f1": float(
            f1_score(
                y,
                p,
                average=average,
                labels=list(range(num_classes)) if average == "macro" else None,
                zero_division=0.0,
            )
        ),
        "mcc": float(matthews_corrcoef(y, p)),
    }


def full_evaluation(
    logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor | None = None,
    proxy_probs: Tensor | None = None,
    proxy_temperature: float = 1.0,
    n_bins: int = 15,
) -> dict:
    """Everything ``kdlab evaluate`` reports for one split: the scalar metrics, the student's reliability
    curve, and the confusion matrices (true labels vs student; teacher vs student predictions).

    ``proxy_probs``: PTLoss's proxy teacher for these rows (computed for the tempered teacher); its fidelity
    is measured against the student's distribution at the same temperature, which is what ptloss fits.
    """
    logits = logits.detach().double().cpu()
    labels = labels.detach().cpu().long()
    num_classes = logits.shape[-1]
    out: dict = dict(classification_metrics(logits, labels, teacher_logits, n_bins))
    predicted = logits.argmax(-1)
    out.update(label_agreement_scores(predicted, labels, num_classes))
    out["reliability"] = reliability_curve(torch.softmax(logits, -1), labels, n_bins)
    out["confusion_labels"] = confusion_matrix(labels, predicted, num_classes)
    if teacher_logits is not None:
        teacher_logits = teacher_logits.detach().double().cpu()
        out["teacher_accuracy"] = float((teacher_logits.argmax(-1) == labels).double().mean())
        out["confusion_teacher"] = confusion_matrix(teacher_logits.argmax(-1), predicted, num_classes)
        out["teacher_reliability"] = reliability_curve(torch.softmax(teacher_logits, -1), labels, n_bins)
    if proxy_probs is not None:
        proxy = fidelity(torch.log_softmax(logits / proxy_temperature, -1), proxy_probs)
        out["proxy_agreement"], out["kl_proxy"] = proxy["agreement"], proxy["kl"]
    return out
