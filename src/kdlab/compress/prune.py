"""Pruning: global magnitude (unstructured) with ``torch.nn.utils.prune``, and structured MLP unit removal.

Unstructured pruning zeroes weights but keeps tensor shapes (smaller only once compressed or run on sparse
kernels); structured pruning rebuilds smaller ``nn.Linear`` layers, so the model really has fewer multiply-adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import prune

from kdlab.models import MLP, count_parameters

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The ``(module, "weight")`` pairs that pruning acts on: every Linear and Conv weight (biases, BN kept)."""
    return [(m, "weight") for m in model.modules() if isinstance(m, _PRUNABLE)]


def step_targets(sparsity: float, steps: int, schedule: Literal["geometric", "linear"] = "geometric") -> list[float]:
    """Cumulative sparsity after each of ``steps`` pruning steps, the last one exactly ``sparsity``.

    ``geometric`` removes the same fraction of the remaining weights each step (1 - (1 - s)^(k/n));
    ``linear`` the same fraction of the original weights (s k / n).
    """
    if not 0.0 <= sparsity < 1.0 or steps < 1:
        raise ValueError(f"sparsity must be in [0, 1) and steps >= 1, got {sparsity!r}, {steps!r}")
    if schedule == "linear":
        targets = [sparsity * k / steps for k in range(1, steps + 1)]
    else:
        targets = [1.0 - (1.0 - sparsity) ** (k / steps) for k in range(1, steps + 1)]
    targets[-1] = sparsity
    return targets


@torch.no_grad()
def global_magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the ``round(sparsity · N)`` smallest-magnitude weights over all prunable tensors together (in place).

    ``prune.remove`` makes it permanent, so the state dict holds plain tensors. Weights already zero rank first,
    so calling again with a higher cumulative target is iterative pruning.
    """
    params = prunable_weights(model)
    total = sum(m.weight.numel() for m, _ in params)
    amount = round(sparsity * total)
    if not params or amount == 0:
        return model
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in params:
        prune.remove(module, name)
    return model


class ReapplyMasks:
    """A training callback that re-zeroes the pruned weights after every optimizer step (sparsity is kept)."""

    def __init__(self, model: nn.Module) -> None:
        self.pairs = [(m.weight, m.weight.detach() != 0) for m, _ in prunable_weights(model)]

    @torch.no_grad()
    def __call__(self, _info: Any = None) -> None:
        for weight, mask in self.pairs:
            weight.mul_(mask.to(weight.device))


def kept_units(weight: torch.Tensor, base_width: int, sparsity: float, norm: Literal["l1", "l2"]) -> torch.Tensor:
    """Sorted indices of the output units (Linear rows, conv filters) of largest L1/L2 norm to keep.

    ``max(1, round(base_width · (1 - sparsity)))`` of them, at most the current number.
    """
    flat = weight.detach().flatten(1)
    scores = flat.abs().sum(1) if norm == "l1" else flat.norm(dim=1)
    k = min(flat.shape[0], max(1, round(base_width * (1.0 - sparsity))))
    return torch.topk(scores, k).indices.sort().values


@torch.no_grad()
def structured_prune_mlp(
    model: MLP,
    sparsity: float,
    norm: Literal["l1", "l2"] = "l1",
    base_widths: Sequence[int] | None = None,
) -> tuple[MLP, list[int]]:
    """A new, smaller MLP without the hidden units of smallest incoming-weight norm; returns it and its widths.

    Each hidden layer keeps ``max(1, round(w · (1 - sparsity)))`` of its ``base_widths`` units (default: the
    current widths): the kept rows of layer i (weight and bias) and the matching input columns of layer i + 1.
    """
    if not isinstance(model, MLP):
        raise ValueError(f"structured pruning supports kdlab's mlp only, got {type(model).__name__}")
    linears = [block[0] for block in model.body] + [model.fc]
    widths = [lin.out_features for lin in linears[:-1]]
    base = list(base_widths) if base_widths is not None else widths
    if len(base) != len(widths):
        raise ValueError(f"base_widths {base} do not match the mlp's {len(widths)} hidden layers")
    dropout = next((m.p for m in model.modules() if isinstance(m, nn.Dropout)), 0.0)
    keep_sets = [kept_units(lin.weight, full, sparsity, norm) for lin, full in zip(linears[:-1], base, strict=True)]
    new_widths = [len(keep) for keep in keep_sets]
    small = MLP(model.fc.out_features, model.in_shape, hidden=new_widths, dropout=dropout)
    small = small.to(device=model.fc.weight.device, dtype=model.fc.weight.dtype)
    new_linears = [block[0] for block in small.body] + [small.fc]
    previous = None  # kept input columns of the current layer
    for i, (old, new) in enumerate(zip(linears, new_linears, strict=True)):
        rows = keep_sets[i] if i < len(keep_sets) else torch.arange(old.out_features)
        weight = old.weight[rows]
        if previous is not None:
            weight = weight[:, previous]
        new.weight.copy_(weight)
        new.bias.copy_(old.bias[rows])
        previous = rows
    small.train(model.training)
    return small, new_widths


def linear_macs(model: nn.Module) -> int:
    """Multiply-adds of one forward pass through the Linear layers (one input): sum of in · out."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Parameters, non-zeros, and the sparsity of the prunable weights (Linear/Conv) of ``model``."""
    weights = [m.weight for m, _ in prunable_weights(model)]
    prunable = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {
        "parameters": count_parameters(model),
        "nonzero_parameters": nonzero,
        "prunable_weights": prunable,
        "sparsity": zeros / prunable if prunable else 0.0,
        "linear_macs": linear_macs(model),
        "size_mb_dense_fp32": count_parameters(model) * 4 / 2**20,
    }
