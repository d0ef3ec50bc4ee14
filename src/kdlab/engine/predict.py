"""Logits of a model over a whole split, computed in shards across processes and gathered without duplicates."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from .batches import shard_bounds


@torch.inference_mode()
def predict(model: nn.Module, x: Tensor, num_classes: int, batch_size: int, accelerator: Accelerator) -> Tensor:
    """(N, C) float32 logits on every process; each process runs its contiguous shard of rows."""
    was_training = model.training
    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    start, end = shard_bounds(len(x), rank, world)
    local = torch.empty(0, num_classes, device=accelerator.device)
    with accelerator.autocast():
        pieces = [
            model(x[i : min(i + batch_size, end)].to(accelerator.device)).float() for i in range(start, end, batch_size)
        ]
    if pieces:
        local = torch.cat(pieces)
    model.train(was_training)
    if world == 1:
        return local
    per = math.ceil(len(x) / world)
    padded = torch.zeros(per, num_classes, device=accelerator.device)
    padded[: len(local)] = local
    gathered = accelerator.gather(padded)
    sizes = [shard_bounds(len(x), r, world) for r in range(world)]
    return torch.cat([gathered[r * per : r * per + (b - a)] for r, (a, b) in enumerate(sizes)])
