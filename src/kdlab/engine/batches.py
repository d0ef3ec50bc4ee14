"""In-memory batching with global-batch semantics under data parallelism.

The whole split lives as tensors; an epoch is a permutation drawn from (seed, epoch) alone, so it is the
same in 1 or N processes and after a resume. Each global batch of ``batch_size`` rows is dealt to the
processes round-robin (``rank::world``), so N processes together see exactly the rows one process would.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_rows, generator=generator)


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    """Full global batches per epoch (the incomplete last batch is dropped, as DDP training usually does)."""
    return num_rows // batch_size


def batch_indices(permutation: Tensor, step: int, batch_size: int, rank: int, world: int) -> Tensor:
    return permutation[step * batch_size : (step + 1) * batch_size][rank::world]


def batch_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """Augmentation randomness tied to the batch, so resuming mid-epoch replays it exactly."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + step) * 131 + rank)


def shard_bounds(num_rows: int, rank: int, world: int) -> tuple[int, int]:
    per = math.ceil(num_rows / world)
    return min(rank * per, num_rows), min((rank + 1) * per, num_rows)
