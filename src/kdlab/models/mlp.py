"""Multi-layer perceptron on flattened inputs: the baseline student for tabular data and tiny images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .registry import register


def _widths(hidden: int | Sequence[int]) -> tuple[int, ...]:
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"mlp hidden must be a sequence of positive integers (or () for none), got {hidden!r}")
    return widths


def check_dropout(model: str, dropout: float) -> float:
    """Dropout probability in [0, 1), or a ValueError naming the model."""
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{model} dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


@register("mlp")
class MLP(nn.Module):
    """Linear-ReLU(-dropout) blocks then a linear classifier ``fc``; ``hidden=()`` is logistic regression.

    Every hidden block is a submodule ``body.<i>`` whose output (after ReLU) is a feature to tap.
    """

    def __init__(
        self,
        num_classes: int,
        in_shape: Sequence[int],
        hidden: int | Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = _widths(hidden)
        p = check_dropout("mlp", dropout)
        self.in_shape = tuple(in_shape)
        previous = math.prod(self.in_shape)
        blocks: list[nn.Module] = []
        for width in widths:
            layers: list[nn.Module] = [nn.Linear(previous, width), nn.ReLU()]
            if p > 0:
                layers.append(nn.Dropout(p))
            blocks.append(nn.Sequential(*layers))
            previous = width
        self.body = nn.Sequential(*blocks)
        self.fc = nn.Linear(previous, num_classes)
        self.feature_layers: tuple[str, ...] = tuple(f"body.{i}" for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x.flatten(1)))
