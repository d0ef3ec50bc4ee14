"""VGG with batch norm for CIFAR as in the CRD / mdistiller zoo: vgg8 (config "S") and vgg11/13/16/19.

Five stages (``stem``, ``layer1..layer4``) of conv(+bias)-BN-ReLU; 2x2 max-pools ``down0..down2`` between
the first four, ``down3`` only for inputs of 64 px or more (as the reference); global average pooling
and a linear ``fc`` over 512 channels. Parameter counts equal mdistiller ``models/cifar/vgg.py``
(``vgg8_bn``, ``vgg13_bn``, ...), which its CIFAR model dict registers as ``vgg8``, ``vgg13``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import GlobalPool, as_image, conv3x3, image_shape, init_weights
from .registry import register

# Output channels of each conv, per stage.
CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}

_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def _stage(in_ch: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [conv3x3(in_ch, width, bias=True), nn.BatchNorm2d(width), nn.ReLU()]
        in_ch = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-BN: ``stem``, ``layer1..layer4`` (outputs after ReLU), ``pool``, ``fc``."""

    feature_layers: tuple[str, ...] = (*_STAGES, "pool")

    def __init__(self, num_classes: int, in_shape: Sequence[int] = (3, 32, 32), depth: int = 8) -> None:
        super().__init__()
        channels, height, width = image_shape("vgg", in_shape)
        if depth not in CONFIGS:
            raise ValueError(f"vgg depth must be one of {sorted(CONFIGS)}, got {depth!r}")
        self.in_shape = (channels, height, width)
        previous = channels
        for i, (name, widths) in enumerate(zip(_STAGES, CONFIGS[depth], strict=True)):
            self.add_module(name, _stage(previous, widths))
            previous = widths[-1]
            if i < 4:
                # ceil_mode keeps tiny maps (8x8 digits) at >= 1x1
                down = nn.MaxPool2d(2, ceil_mode=True) if i < 3 or height >= 64 else nn.Identity()
                self.add_module(f"down{i}", down)
        self.pool = GlobalPool()
        self.fc = nn.Linear(previous, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_image(x, self.in_shape)
        x = self.down0(self.stem(x))
        x = self.down1(self.layer1(x))
        x = self.down2(self.layer2(x))
        x = self.layer4(self.down3(self.layer3(x)))
        return self.fc(self.pool(x))


@register("vgg")
def vgg(num_classes: int, in_shape: Sequence[int], depth: int = 8) -> VGG:
    """VGG-BN of depth 8, 11, 13, 16 or 19."""
    return VGG(num_classes, in_shape, depth=depth)


def _fixed(depth: int) -> None:
    def factory(num_classes: int, in_shape: Sequence[int]) -> VGG:
        return VGG(num_classes, in_shape, depth=depth)

    factory.__name__ = factory.__qualname__ = f"vgg{depth}"
    factory.__doc__ = f"VGG-{depth} with batch norm."
    register(f"vgg{depth}")(factory)


for _depth in CONFIGS:
    _fixed(_depth)
