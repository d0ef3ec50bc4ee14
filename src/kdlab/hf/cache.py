"""A teacher's top-k logits cached once per example, and the rows of one batch read back from the cache.

Layout (on top of ``kdlab.teacher.sparse_cache``): examples are stored in dataset order, one row per
*real* token of each example (attention mask 1), the teacher's prediction at that position. Example i's
rows start at ``cache_offset`` = the sum of the lengths of examples 0..i-1 (``cache_offsets``); each batch
carries that number in a ``cache_offset`` column, so any shuffling, padding or sharding across processes
still finds the right rows. The fingerprint records the token ids and the teacher's config and weights, so
a cache made for other data or another teacher is refused by ``SparseLogitCache(dir, expected_fingerprint=...)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.losses import SparseTeacher, sparse_teacher_from_logits
from kdlab.teacher import LM_TOPK
from kdlab.teacher.sparse_cache import SparseLogitCache, default_tail_samples, write_sparse_cache

CACHE_COLUMN = "cache_offset"


def cache_offsets(lengths: Sequence[int]) -> list[int]:
    """First cache row of each example, given the examples' token counts in dataset order."""
    offsets, total = [], 0
    for n in lengths:
        offsets.append(total)
        total += int(n)
    return offsets


def data_fingerprint(sequences: Sequence[Sequence[int]]) -> str:
    digest = hashlib.sha256()
    for ids in sequences:
        digest.update(torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()


@torch.no_grad()
def teacher_fingerprint(teacher: nn.Module) -> str:
    """sha256 of the teacher's config and every weight (names, dtypes, shapes, bytes): the same architecture with
    other weights is another teacher, whose cache must not be reused."""
    config = getattr(teacher, "config", None)
    text = config.to_json_string() if hasattr(config, "to_json_string") else type(teacher).__name__
    digest = hashlib.sha256(text.encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        flat = tensor.detach().reshape(-1).cpu().contiguous()
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def write_teacher_cache(
    teacher: nn.Module,
    sequences: Sequence[Sequence[int]],
    directory: str | Path,
    *,
    k: int = LM_TOPK,
    tail_samples: int | None = None,
    batch_size: int = 8,
    fingerprint: dict[str, str] | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> list[int]:
    """Run ``teacher`` once over token-id ``sequences``; store the top-k logits of every token; return the offsets.

    ``tail_samples`` classes per token are drawn from the teacher's tail (outside the top k; systematic
    sampling seeded by ``seed``) so that KD/PTLoss from the cache are unbiased estimates of the dense losses
    (``kdlab.losses.sparse_teacher``); None: as many as keep a token under 300 bytes
    (``default_tail_samples``); 0 stores the top k and the rest mass only.
    The returned list is each example's ``cache_offset`` (add it to the dataset as a column). The default
    fingerprint is ``{"data": sha256 of the token ids, "teacher": teacher_fingerprint(teacher)}`` (config and
    weights).
    """
    from .loss import hidden_states, output_head, prepare_teacher  # loss imports this module

    sequences = [list(map(int, ids)) for ids in sequences]
    if not sequences or min(map(len, sequences)) < 1:
        raise ValueError("write_teacher_cache needs at least one non-empty sequence of token ids")
    head = output_head(teacher, "teacher")
    device = head.weight.device
    prepare_teacher(teacher, device)
    fp = fingerprint or {"data": data_fingerprint(sequences), "teacher": teacher_fingerprint(teacher)}
    vocab = head.weight.shape[0]
    if tail_samples is None:
        tail_samples = default_tail_samples(k, vocab)

    draws = torch.Generator().manual_seed(seed)

    def parts() -> Iterator[SparseTeacher]:
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            with torch.inference_mode():
                hidden, _ = hidden_states(
                    teacher, head, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
                )
                for row, seq in enumerate(batch):
                    logits = hidden[row, : len(seq)] @ head.weight.to(hidden.dtype).t()
                    sparse = sparse_teacher_from_logits(logits, k, tail_samples=tail_samples, generator=draws)
                    yield sparse.to(torch.device("cpu"))  # top-k and draws on the teacher's device, rows to disk

    write_sparse_cache(directory, parts(), vocab_size=vocab, fingerprint=fp, overwrite=overwrite)
    return cache_offsets([len(seq) for seq in sequences])


def sparse_teacher_for_batch(
    cache: SparseLogitCache, offsets: Tensor | Sequence[int], attention_mask: Tensor
) -> SparseTeacher:
    """The cached rows of a batch as a (B, L, k) SparseTeacher on the CPU; padded positions get inert filler.

    Row j of example b (from ``offsets[b]``) goes to its j-th real position (``attention_mask`` 1), so
    right and left padding both work.
    """
    mask = attention_mask.bool().cpu()
    batch, width = mask.shape
    starts = [int(x) for x in (offsets.tolist() if isinstance(offsets, Tensor) else offsets)]
    if len(starts) != batch:
        raise ValueError(f"{len(starts)} cache offsets for a batch of {batch} examples")
    k, s = cache.k, cache.tail_samples
    values = torch.zeros(batch, width, k, dtype=torch.float16)
    indices = torch.arange(k, dtype=torch.long).expand(batch, width, k).clone()
    # filler rows (padding, never a target): uniform over k classes that hold all the mass (no tail: r = 0)
    log_rest = torch.full((batch, width), float("-inf"), dtype=torch.float32)
    samples = torch.zeros(batch, width, s, dtype=torch.long)
    entropy = torch.zeros(batch, width, dtype=torch.float32)
    for b, start in enumerate(starts):
        positions = mask[b].nonzero().squeeze(1)
        rows = cache.read(start, start + positions.numel())
        values[b, positions] = rows.values.to(values.dtype)
        indices[b, positions] = rows.indices
        log_rest[b, positions] = rows.log_rest.float()
        if s:
            samples[b, positions] = rows.tail_samples
            entropy[b, positions] = rows.tail_entropy.float()
    return SparseTeacher(values, indices, log_rest, *((samples, entropy) if s else ()))


def load_cache(
    cache: SparseLogitCache | str | Path, expected_fingerprint: dict[str, str] | None = None
) -> SparseLogitCache:
    return cache if isinstance(cache, SparseLogitCache) else SparseLogitCache(cache, expected_fingerprint)
