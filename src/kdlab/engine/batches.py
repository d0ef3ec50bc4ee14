"""In-memory batching with global-batch semantics under data parallelism.

The whole split lives as tensors; an epoch is a permutation drawn from (seed, epoch) alone, so it is the
same in 1 or N processes and after a resume. Each global batch of ``batch_size`` rows (the last one may be
shorter) is dealt to the processes round-robin (``rank::world``), so N processes together see exactly the rows
one process would.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_rows, generator=generator)


def group_by_length(
    permutation: Tensor, lengths: Tensor, batch_size: int, seed: int, epoch: int, chunk_batches: int = 50
) -> Tensor:
    """Batches of rows of similar length (less padding): each chunk of ``chunk_batches`` batches of the epoch's
    permutation is sorted by row length and cut into batches, whose order inside the chunk is then shuffled (a
    fixed longest-first order every epoch trains worse). A function of (seed, epoch) alone, so resuming and N
    processes see the same batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_777)
    chunk = batch_size * chunk_batches
    out = []
    for start in range(0, len(permutation), chunk):
        piece = permutation[start : start + chunk]
        piece = piece[torch.argsort(lengths[piece], descending=True, stable=True)]
        groups = list(piece.split(batch_size))
        full = [g for g in groups if len(g) == batch_size]  # a chunk's short rest stays last (the epoch's rest)
        rest = groups[len(full) :]
        order = torch.randperm(len(full), generator=generator).tolist()
        out += [full[i] for i in order] + rest
    return torch.cat(out) if out else permutation


def batch_sizes(num_rows: int, batch_size: int, world: int = 1, *, drop_last: bool = False) -> list[int]:
    """The global rows of each micro-batch of an epoch: full batches, then the partial rest unless ``drop_last``.

    The rest is dealt round-robin like any batch, so processes may get one row more than others (the tasks weigh
    every row alike, see their ``objective``). A rest with fewer than two rows per process is skipped: batch norm
    cannot train on one row (and a process without rows has no mean) — then, only then, N processes see other
    rows than one.
    """
    sizes = [batch_size] * (num_rows // batch_size)
    rest = num_rows % batch_size
    if rest >= 2 * world and not drop_last:
        sizes.append(rest)
    return sizes


def batch_indices(permutation: Tensor, step: int, batch_size: int, size: int, rank: int, world: int) -> Tensor:
    """Process ``rank``'s rows of micro-batch ``step`` (``size`` global rows; all but the last have ``batch_size``)."""
    start = step * batch_size
    return permutation[start : start + size][rank::world]


def batch_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """Augmentation randomness tied to the batch, so resuming mid-epoch replays it exactly."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + step) * 131 + rank)


def shard_bounds(num_rows: int, rank: int, world: int) -> tuple[int, int]:
    per = math.ceil(num_rows / world)
    return min(rank * per, num_rows), min((rank + 1) * per, num_rows)
