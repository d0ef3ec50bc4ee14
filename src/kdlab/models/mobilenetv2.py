"""MobileNetV2 for CIFAR as in the CRD / mdistiller zoo (``models/cifar/mobilenetv2.py``).

Defaults are the zoo's "MobileNetV2" student, ``mobile_half``: width multiplier 0.5, expansion 6. As
there: a stride-2 stem, ReLU (not ReLU6), an expansion 1x1 conv even where t = 1, a 1280-channel
head for width <= 1, global average pooling; parameter counts equal the reference code's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import GlobalPool, as_image, conv3x3, image_shape, init_weights
from .registry import register


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_ch), nn.ReLU()]


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection; identity shortcut when the shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_ch, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """``stem``, ``blocks.0..blocks.6`` (the seven bottleneck stages), ``head`` (1x1 conv), ``pool``, ``fc``.

    ``feature_layers`` are the stages the reference returns as features (after stages 1, 2, 4, 6).
    """

    feature_layers: tuple[str, ...] = ("stem", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "pool")

    def __init__(
        self,
        num_classes: int,
        in_shape: Sequence[int] = (3, 32, 32),
        width_mult: float = 0.5,
        expand_ratio: int = 6,
    ) -> None:
        super().__init__()
        channels, height, width = image_shape("mobilenetv2", in_shape)
        if width_mult <= 0 or int(16 * width_mult) < 1 or expand_ratio < 1:
            raise ValueError(
                f"mobilenetv2 needs width_mult >= 1/16 and expand_ratio >= 1, got {width_mult!r}, {expand_ratio!r}"
            )
        t = expand_ratio
        settings = (
            (1, 16, 1, 1),
            (t, 24, 2, 1),
            (t, 32, 3, 2),
            (t, 64, 4, 2),
            (t, 96, 3, 1),
            (t, 160, 3, 2),
            (t, 320, 1, 1),
        )
        self.in_shape = (channels, height, width)
        previous = int(32 * width_mult)
        self.stem = nn.Sequential(conv3x3(channels, previous, stride=2), nn.BatchNorm2d(previous), nn.ReLU())
        stages: list[nn.Module] = []
        for expansion, out, repeats, stride in settings:
            out_ch = int(out * width_mult)
            blocks = []
            for r in range(repeats):
                blocks.append(InvertedResidual(previous, out_ch, stride if r == 0 else 1, expansion))
                previous = out_ch
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head = nn.Sequential(*_conv_bn_relu(previous, last, 1))
        self.pool = GlobalPool()
        self.fc = nn.Linear(last, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(as_image(x, self.in_shape)))
        return self.fc(self.pool(self.head(x)))


@register("mobilenetv2")
def mobilenetv2(
    num_classes: int, in_shape: Sequence[int], width_mult: float = 0.5, expand_ratio: int = 6
) -> MobileNetV2:
    """CIFAR MobileNetV2; the defaults are the zoo's ``mobile_half``."""
    return MobileNetV2(num_classes, in_shape, width_mult=width_mult, expand_ratio=expand_ratio)


@register("mobile_half")
def mobile_half(num_classes: int, in_shape: Sequence[int]) -> MobileNetV2:
    """The zoo's name for MobileNetV2 with width 0.5, expansion 6 (CRD's "MobileNetV2" student)."""
    return MobileNetV2(num_classes, in_shape, width_mult=0.5, expand_ratio=6)
