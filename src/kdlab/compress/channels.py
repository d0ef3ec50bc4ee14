"""Structured channel pruning of kdlab's ``cnn``, multiply-add counting, and one entry for structured pruning.

Removing a conv filter removes its output channel, the matching BatchNorm entries, and the next conv's (or the
classifier's) input channel: the rebuilt model has smaller dense tensors, so its FLOPs and CPU latency really drop.
Filters are ranked by the L1/L2 norm of their weights (Li et al. 2017, "Pruning Filters for Efficient ConvNets").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from kdlab.models import MLP, SmallCNN

from .prune import kept_units, structured_prune_mlp

Norm = Literal["l1", "l2"]


def cnn_convs(model: SmallCNN) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (conv, its BatchNorm) pairs of a kdlab cnn in forward order: two per block."""
    pairs = []
    for name in model._stages:
        block = getattr(model, name)
        pairs += [(block[0], block[1]), (block[3], block[4])]
    return pairs


def cnn_channels(model: SmallCNN) -> list[int]:
    """Output channels of every conv: what ``cnn``'s ``channels`` keyword takes to rebuild this shape."""
    return [conv.out_channels for conv, _ in cnn_convs(model)]


@torch.no_grad()
def structured_prune_cnn(
    model: SmallCNN, sparsity: float, norm: Norm = "l1", base_channels: Sequence[int] | None = None
) -> tuple[SmallCNN, list[int]]:
    """A new, smaller cnn without the conv filters of smallest weight norm; returns it and its channels.

    Each conv keeps ``max(1, round(c · (1 - sparsity)))`` of its ``base_channels`` filters (default: the current
    ones) with their BatchNorm scale, shift and running statistics; the next conv keeps only the matching input
    channels and the classifier the matching input features.
    """
    if not isinstance(model, SmallCNN):
        raise ValueError(f"structured_prune_cnn supports kdlab's cnn only, got {type(model).__name__}")
    pairs = cnn_convs(model)
    base = list(base_channels) if base_channels is not None else cnn_channels(model)
    if len(base) != len(pairs):
        raise ValueError(f"base_channels {base} do not match the cnn's {len(pairs)} convs")
    keeps = [kept_units(conv.weight, full, sparsity, norm) for (conv, _), full in zip(pairs, base, strict=True)]
    channels = [len(keep) for keep in keeps]
    dropout = next((m.p for m in model.modules() if isinstance(m, nn.Dropout)), 0.0)
    small = SmallCNN(
        model.fc.out_features, model.in_shape, blocks=len(model._stages), dropout=dropout, channels=channels
    )
    small = small.to(device=model.fc.weight.device, dtype=model.fc.weight.dtype)
    previous = torch.arange(model.in_shape[0])  # kept input channels of the current conv
    for (conv, bn), (new_conv, new_bn), keep in zip(pairs, cnn_convs(small), keeps, strict=True):
        new_conv.weight.copy_(conv.weight[keep][:, previous])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, name).copy_(getattr(bn, name)[keep])
        new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        previous = keep
    small.fc.weight.copy_(model.fc.weight[:, previous])
    small.fc.bias.copy_(model.fc.bias)
    small.train(model.training)
    return small, channels


def structured_widths(model: nn.Module) -> tuple[str, list[int]] | None:
    """``("hidden", widths)`` for an mlp, ``("channels", widths)`` for a cnn: the model keyword structured pruning
    rewrites; None for models it does not support."""
    if isinstance(model, MLP):
        return "hidden", [block[0].out_features for block in model.body]
    if isinstance(model, SmallCNN):
        return "channels", cnn_channels(model)
    return None


def structured_prune(
    model: nn.Module, sparsity: float, norm: Norm = "l1", base: Sequence[int] | None = None
) -> tuple[nn.Module, dict[str, list[int]]]:
    """Structured pruning of a kdlab mlp (hidden units) or cnn (conv channels); returns the smaller model and the
    model keywords (``hidden`` or ``channels``) that rebuild its shape, for the run's config.yaml."""
    if isinstance(model, MLP):
        small, widths = structured_prune_mlp(model, sparsity, norm, base)
        return small, {"hidden": widths}
    if isinstance(model, SmallCNN):
        small, widths = structured_prune_cnn(model, sparsity, norm, base)
        return small, {"channels": widths}
    raise ValueError(f"structured pruning supports kdlab's mlp and cnn, got {type(model).__name__}")


def forward_macs(model: nn.Module, in_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of one example through every Conv2d and Linear (counted with hooks).

    A conv costs ``out_channels · in_channels / groups · kh · kw`` per output pixel; a Linear ``in · out`` per row.
    """
    total = 0

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_pixel = module.out_channels * module.in_channels // module.groups * kh * kw
            total += per_pixel * output.shape[-2] * output.shape[-1]
        else:
            total += module.in_features * module.out_features * (output.numel() // output.shape[-1])

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    parameter = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total
