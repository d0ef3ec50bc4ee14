"""Wide ResNets (Zagoruyko & Komodakis 2016) as in the CRD / mdistiller zoo: wrn_16_2, wrn_40_2, ...

Pre-activation blocks (BN-ReLU-conv), depth = 6n + 4, widths 16, 16k, 32k, 64k; parameter counts equal
mdistiller ``models/cifar/wrn.py``. Stage outputs ``layer1..layer3`` are pre-activation features (as the
reference returns them); ``head`` is the final BN-ReLU and ``pool`` the penultimate features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import GlobalPool, as_image, conv3x3, image_shape, init_weights
from .mlp import check_dropout
from .registry import register


class WideBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-(dropout)-conv; the 1x1 shortcut (when shapes change) sees the activated input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(activated)))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(nn.Module):
    """WRN-depth-k: ``stem`` conv, ``layer1..layer3``, ``head`` (BN-ReLU), ``pool``, ``fc``."""

    feature_layers: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "pool")

    def __init__(
        self,
        num_classes: int,
        in_shape: Sequence[int] = (3, 32, 32),
        depth: int = 16,
        widen_factor: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width = image_shape("wrn", in_shape)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"wrn depth must be 6n + 4 with n >= 1, got {depth!r}")
        if widen_factor < 1:
            raise ValueError(f"wrn widen_factor must be >= 1, got {widen_factor!r}")
        p = check_dropout("wrn", dropout)
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.in_shape = (channels, height, width)
        self.stem = conv3x3(channels, widths[0])
        for i in range(3):
            layers = [
                WideBlock(widths[i] if b == 0 else widths[i + 1], widths[i + 1], 2 if i and not b else 1, p)
                for b in range(blocks)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.head = nn.Sequential(nn.BatchNorm2d(widths[3]), nn.ReLU())
        self.pool = GlobalPool()
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(as_image(x, self.in_shape))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(self.head(x)))


@register("wrn")
def wrn(
    num_classes: int, in_shape: Sequence[int], depth: int = 16, widen_factor: int = 2, dropout: float = 0.0
) -> WideResNet:
    """Any WRN-depth-k."""
    return WideResNet(num_classes, in_shape, depth=depth, widen_factor=widen_factor, dropout=dropout)


def _fixed(depth: int, widen_factor: int) -> None:
    name = f"wrn_{depth}_{widen_factor}"

    def factory(num_classes: int, in_shape: Sequence[int], dropout: float = 0.0) -> WideResNet:
        return WideResNet(num_classes, in_shape, depth=depth, widen_factor=widen_factor, dropout=dropout)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"WRN-{depth}-{widen_factor}."
    register(name)(factory)


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _fixed(_depth, _k)
