"""CIFAR-style ResNets (He et al. 2016, section 4.2) as in the CRD / mdistiller zoo: resnet20/56, resnet8x4/32x4.

Three stages of BasicBlocks after a 3x3 stem, depth = 6n + 2, widths ``(stem, stage1, stage2, stage3)``:
(16, 16, 32, 64) for resnetN, (32, 64, 128, 256) for the "x4" variants. Parameter counts equal the
reference code's (mdistiller ``models/cifar/resnet.py``); the stem takes ``in_shape[0]`` channels and
pooling is global, so 1x28x28 inputs work too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import GlobalPool, as_image, conv3x3, image_shape, init_weights
from .registry import register


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, then ReLU. ``preact`` (an Identity) exposes the sum before the ReLU.

    No in-place ops anywhere: a feature captured by a hook must not be overwritten by the next layer.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.preact = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.preact(out + self.shortcut(x)))


class CifarResNet(nn.Module):
    """ResNet for small images: stem ``stem``, stages ``layer1..layerK`` (stride 1, then 2), ``pool``, ``fc``."""

    feature_layers: tuple[str, ...]

    def __init__(
        self,
        num_classes: int,
        in_shape: Sequence[int] = (3, 32, 32),
        depth: int = 20,
        widths: Sequence[int] = (16, 16, 32, 64),
    ) -> None:
        super().__init__()
        channels, height, width = image_shape("resnet", in_shape)
        widths = tuple(int(w) for w in widths)
        stages = len(widths) - 1
        if stages < 1 or min(widths) < 1:
            raise ValueError(f"resnet widths must be (stem, stage1, ...) positive ints, got {widths!r}")
        if depth < 2 * stages + 2 or (depth - 2) % (2 * stages):
            raise ValueError(f"resnet depth must be {2 * stages}n + 2 (n >= 1) with {stages} stages, got {depth!r}")
        blocks = (depth - 2) // (2 * stages)
        self.in_shape = (channels, height, width)
        self.stem = nn.Sequential(conv3x3(channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self._stages = tuple(f"layer{i + 1}" for i in range(stages))
        previous = widths[0]
        for i, name in enumerate(self._stages):
            layers = [
                BasicBlock(previous if b == 0 else widths[i + 1], widths[i + 1], 2 if i and not b else 1)
                for b in range(blocks)
            ]
            self.add_module(name, nn.Sequential(*layers))
            previous = widths[i + 1]
        self.pool = GlobalPool()
        self.fc = nn.Linear(previous, num_classes)
        self.feature_layers = ("stem", *self._stages, "pool")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(as_image(x, self.in_shape))
        for name in self._stages:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x))


_THIN = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


@register("resnet")
def resnet(num_classes: int, in_shape: Sequence[int], depth: int = 20, widths: Sequence[int] = _THIN) -> CifarResNet:
    """Any depth/width, e.g. for teacher-size sweeps (capacity gap, teacher assistants)."""
    return CifarResNet(num_classes, in_shape, depth=depth, widths=widths)


def _fixed(name: str, depth: int, widths: tuple[int, ...]) -> None:
    def factory(num_classes: int, in_shape: Sequence[int]) -> CifarResNet:
        return CifarResNet(num_classes, in_shape, depth=depth, widths=widths)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"CIFAR ResNet depth {depth}, widths {widths}."
    register(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _fixed(f"resnet{_depth}", _depth, _THIN)
_fixed("resnet8x4", 8, _X4)
_fixed("resnet32x4", 32, _X4)
