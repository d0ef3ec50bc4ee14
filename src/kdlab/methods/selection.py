"""Choosing PTLoss's epsilon through the proxy teacher, without training a student per candidate.

Sample K candidate epsilons (eps = 0, plain KD, always first), compute the proxy teacher of each on the
labelled validation split and score how close it is to the labels: a proxy closer to the truth makes a
better target for the student. Scores: ``l2`` (mean squared distance to the one-hot label, the default),
``tv`` (total variation, = 1 - q_y), ``nll``, plus the proxy's ECE and accuracy for the report. Cost: one
teacher pass (done by the caller) and K proxy solves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from kdlab.eval.metrics import expected_calibration_error
from kdlab.losses import proxy_teacher
from kdlab.losses._common import check_temperature

METRICS = ("l2", "tv", "nll")


def sample_epsilons(
    candidates: int = 64, order: int = 5, num_classes: int | None = None, scale: float = 1.0, seed: int = 0
) -> Tensor:
    """(K, M) shared or (K, C, M) per-class candidates, eps_m uniform in [-scale/m, scale/m], row 0 = 0.

    ``scale`` <= 1 keeps every perturbed coefficient 1/m + eps_m >= 0 (the proxy teacher's range).
    """
    if candidates < 1 or order < 1:
        raise ValueError(f"candidates and order must be >= 1, got {candidates} and {order}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1] so that 1/m + eps_m >= 0, got {scale}")
    generator = torch.Generator().manual_seed(seed)
    shape = (candidates, order) if num_classes is None else (candidates, num_classes, order)
    inv_m = 1.0 / torch.arange(1, order + 1, dtype=torch.float64)
    draws = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale * inv_m
    draws[0] = 0.0
    return draws


def proxy_scores(proxy: Tensor, labels: Tensor) -> dict[str, float]:
    """Distances of a proxy distribution (N, C) to one-hot labels, and its calibration and accuracy."""
    q = proxy.double()
    q_y = q.gather(1, labels[:, None].long()).squeeze(1)
    return {
        "l2": float(((q**2).sum(-1) - 2 * q_y + 1).mean()),
        "tv": float((1 - q_y).mean()),
        "nll": float(-q_y.clamp_min(1e-300).log().mean()),
        "ece": expected_calibration_error(q, labels),
        "accuracy": float((q.argmax(-1) == labels).double().mean()),
    }


@dataclass
class EpsilonSelection:
    epsilon: Tensor
    index: int
    metric: str
    temperature: float
    candidates: Tensor
    scores: list[dict[str, float]] = field(default_factory=list)

    def ranked(self) -> list[int]:
        return sorted(range(len(self.scores)), key=lambda i: self.scores[i][self.metric])

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "temperature": self.temperature,
            "chosen_index": self.index,
            "epsilon": self.epsilon.tolist(),
            "candidates": [
                {"index": i, "epsilon": self.candidates[i].tolist(), **self.scores[i]} for i in range(len(self.scores))
            ],
        }


def select_ptloss_epsilon(
    teacher_logits_val: Tensor,
    labels_val: Tensor,
    *,
    temperature: float = 1.0,
    candidates: int = 64,
    order: int = 5,
    per_class: bool = False,
    scale: float = 1.0,
    seed: int = 0,
    metric: str = "l2",
    epsilons: Tensor | None = None,
) -> EpsilonSelection:
    """Score every candidate's proxy teacher on the validation labels; return the best and the whole table."""
    temperature = check_temperature(temperature)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if teacher_logits_val.dim() != 2 or labels_val.shape != teacher_logits_val.shape[:1]:
        raise ValueError(
            f"need teacher logits (N, C) and labels (N,), got {tuple(teacher_logits_val.shape)} "
            f"and {tuple(labels_val.shape)}"
        )
    num_classes = teacher_logits_val.shape[-1]
    if epsilons is None:
        epsilons = sample_epsilons(candidates, order, num_classes if per_class else None, scale, seed)
    probs = torch.softmax(teacher_logits_val.double().cpu() / temperature, dim=-1)
    labels = labels_val.cpu().long()
    scores = [proxy_scores(proxy_teacher(probs, eps), labels) for eps in epsilons]
    best = min(range(len(scores)), key=lambda i: scores[i][metric])
    return EpsilonSelection(epsilons[best], best, metric, temperature, epsilons, scores)
