"""A small VGG-style conv net for small images (8x8 digits, 28x28 (Fashion-)MNIST, 32x32 CIFAR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import GlobalPool, as_image, conv3x3, image_shape, init_weights
from .mlp import check_dropout
from .registry import register


def _block(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    # ceil_mode keeps a 1x1 map at 1x1, so deep configurations still run on 8x8 inputs.
    return nn.Sequential(
        conv3x3(in_ch, mid_ch),
        nn.BatchNorm2d(mid_ch),
        nn.ReLU(),
        conv3x3(mid_ch, out_ch),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
    )


def _conv_widths(width: int, blocks: int, channels: Sequence[int] | None) -> list[int]:
    """Output channels of the 2·blocks convs: ``channels`` if given, else ``width · 2**i`` twice per block."""
    if channels is None:
        return [width * 2**i for i in range(blocks) for _ in range(2)]
    widths = [int(c) for c in channels]
    if len(widths) != 2 * blocks or min(widths) < 1:
        raise ValueError(f"cnn channels must be {2 * blocks} positive ints (2 convs x {blocks} blocks), got {channels}")
    return widths


@register("cnn")
class SmallCNN(nn.Module):
    """``blocks`` x (conv-BN-ReLU-conv-BN-ReLU-maxpool), channels ``width * 2**i``, global average pool, ``fc``.

    BN makes it train fast with plain SGD/Adam; global pooling makes the head independent of the image size.
    Stages are ``layer1..layerB``; ``pool`` gives the penultimate ``(N, width * 2**(B-1))`` features.
    ``channels`` (2·B output channels, one per conv, e.g. after structured pruning) replaces that schedule.
    """

    def __init__(
        self,
        num_classes: int,
        in_shape: Sequence[int] = (1, 28, 28),
        width: int = 32,
        blocks: int = 2,
        dropout: float = 0.0,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        in_ch, height, width_px = image_shape("cnn", in_shape)
        if width < 1 or blocks < 1:
            raise ValueError(f"cnn width and blocks must be >= 1, got width={width!r}, blocks={blocks!r}")
        p = check_dropout("cnn", dropout)
        self.in_shape = (in_ch, height, width_px)
        self._stages = tuple(f"layer{i + 1}" for i in range(blocks))
        widths = _conv_widths(width, blocks, channels)
        previous = in_ch
        for i, name in enumerate(self._stages):
            self.add_module(name, _block(previous, widths[2 * i], widths[2 * i + 1]))
            previous = widths[2 * i + 1]
        self.pool = GlobalPool()
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        self.fc = nn.Linear(previous, num_classes)
        self.feature_layers: tuple[str, ...] = (*self._stages, "pool")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_image(x, self.in_shape)
        for name in self._stages:
            x = getattr(self, name)(x)
        return self.fc(self.dropout(self.pool(x)))
