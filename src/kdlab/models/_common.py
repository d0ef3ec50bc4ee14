"""Pieces the model zoo shares: input-shape checks, flat-to-image reshaping, global pooling, initialisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def image_shape(model: str, in_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``in_shape``, or a ValueError saying that this model needs images."""
    if len(in_shape) != 3:
        raise ValueError(
            f"model {model!r} needs an image in_shape (C, H, W), got {tuple(in_shape)}; use 'mlp' for vectors"
        )
    c, h, w = (int(d) for d in in_shape)
    return c, h, w


def as_image(x: torch.Tensor, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """Give flattened or channel-less images (``(N, C*H*W)``, ``(N, H, W)``) back their ``in_shape``.

    Loaders of tabular data hand 8x8 digits over as 64 features; conv nets should still take them.
    4-D inputs pass through untouched (their spatial size may differ from in_shape: pooling is global).
    """
    if x.dim() != 4 and x.dim() >= 2 and math.prod(x.shape[1:]) == math.prod(in_shape):
        return x.reshape(x.shape[0], *in_shape)
    return x


class GlobalPool(nn.Module):
    """Global average pooling + flatten: ``(N, C, H, W) -> (N, C)``, the penultimate features to tap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """He init (fan_out) for convs, BN as identity; optional N(0, std) linears - the CIFAR zoo's scheme.

    Matching the reference initialisation keeps trained accuracies comparable with the literature.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution with 'same' padding."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared tensors counted once); ``trainable_only`` skips frozen ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
