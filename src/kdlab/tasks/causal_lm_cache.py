"""``kdlab cache-logits`` for ``task: causal_lm``: the teacher's top-k logits (+ tail samples) of every target token
of every split, one sparse cache directory per teacher and data, written under a temporary name and renamed."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from kdlab.config import RunConfig
from kdlab.engine.loop import progress_bar
from kdlab.engine.rundir import new_accelerator, use_cpu
from kdlab.errors import ConfigError
from kdlab.losses.sparse_teacher import SparseTeacher, sparse_teacher_from_logits
from kdlab.models.hf import vocab_size
from kdlab.teacher import lm_topk
from kdlab.teacher.lm import SPLITS, LiveTeacher, cache_directory, cache_fingerprints, teacher_directory
from kdlab.teacher.sparse_cache import SparseLogitCache, default_tail_samples, write_sparse_cache

from .causal_lm import EVAL_LOGITS, load_lm_data


@torch.no_grad()
def cache_logits_lm(cfg: RunConfig) -> Path:
    """Top-k teacher logits (k = cache.topk, default 64) of every target token of every split, one cache each."""
    data = load_lm_data(cfg)
    directory = teacher_directory(cfg)
    k = lm_topk(cfg.cache.topk)
    acc = new_accelerator(cpu=use_cpu(cfg.train), mixed_precision=cfg.train.mixed_precision)
    teacher = LiveTeacher(directory, acc.device)
    vocab = vocab_size(teacher.net.model)
    if k > vocab:
        raise ConfigError(f"cache.topk={k} exceeds the teacher's vocabulary of {vocab}")
    if data.vocab_size > vocab:
        raise ConfigError(f"the tokenizer has {data.vocab_size} tokens but the teacher's vocabulary only {vocab}")
    s = default_tail_samples(k, vocab) if cfg.cache.tail_samples is None else cfg.cache.tail_samples
    target = cache_directory(cfg, directory, data, k)
    prints = cache_fingerprints(data, directory)
    batch = max(1, EVAL_LOGITS // ((cfg.data.block_size - 1) * vocab))
    tmp = target.with_name(f".{target.name}.build")
    if not acc.is_main_process:  # one writer; the others wait for the finished directory
        acc.wait_for_everyone()
        return target
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with progress_bar(cfg.train.progress) as progress:
            for split in SPLITS:
                blocks = data.split(split)
                task = progress.add_task(
                    f"cache {split}", total=-(-len(blocks) // batch), info=f"top-{k}, {s} tail samples"
                )
                draws = torch.Generator().manual_seed(SPLITS.index(split))  # the same cache from the same teacher
                rows = _teacher_rows(teacher, blocks.split(batch), k, s, draws, partial(progress.advance, task))
                write_sparse_cache(tmp / split, rows, vocab_size=vocab, fingerprint=prints[split])
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    return target


def _teacher_rows(
    teacher: LiveTeacher,
    batches_of_blocks: Iterable[Tensor],
    k: int,
    s: int,
    draws: torch.Generator,
    advance: Callable[[], None],
) -> Iterator[SparseTeacher]:
    """Top-k logits (+ s tail samples) of every target token, one teacher call per batch of blocks."""
    device = teacher.net.head_weight.device
    for blocks in batches_of_blocks:
        logits = teacher.logits(blocks.to(device)).cpu()
        yield sparse_teacher_from_logits(logits, k, tail_samples=s, generator=draws)
        advance()


def describe_cache(path: Path) -> str:
    """One line: k, token rows and bytes per token of a causal-LM cache directory."""
    caches = [SparseLogitCache(path / split) for split in SPLITS]
    rows = sum(len(c) for c in caches)
    size = sum(c.bytes_per_token * len(c) for c in caches)
    payload = sum(c.payload_bytes_per_token * len(c) for c in caches)
    tail = f" + {caches[0].stored_tail_samples} tail samples" if caches[0].stored_tail_samples else ""
    return (
        f"top-{caches[0].k} of {caches[0].vocab_size}{tail} per token, {rows:,} tokens, "
        f"{size / rows:.1f} bytes/token on disk ({payload / rows:.1f} of tensor data)"
    )
