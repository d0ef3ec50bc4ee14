"""The teacher of a causal-LM run: a frozen Hugging Face model (live) or its sparse top-k cache, and the checks
that teacher and student share a tokenizer. Both sides offer the same three calls: ``train_input`` (what the
fused loss takes as teacher), ``top1`` (for agreement) and ``selection_inputs`` (for PTLoss's epsilon).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from kdlab.config import RunConfig
from kdlab.data.text import TextSplits
from kdlab.errors import ConfigError
from kdlab.losses.sparse_teacher import SparseTeacher, tail_samples_serve, teacher_bucket_logits
from kdlab.models.hf import HiddenStates, is_model_dir, load_pretrained, weights_digest

from . import lm_topk
from .logit_cache import CacheError
from .sparse_cache import SparseLogitCache, warn_unused_tail_samples

SPLITS = ("train", "val", "test")


class LiveTeacher:
    def __init__(self, directory: Path, device: torch.device) -> None:
        self.net = HiddenStates(load_pretrained(directory)).to(device).eval().requires_grad_(False)
        self.description = f"{type(self.net.model).__name__} from {directory}"

    def train_input(self, index: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            hidden = self.net(ids)[:, :-1]
        return hidden.clone(), self.net.head_weight.detach()  # normal tensors: usable outside inference mode

    @torch.inference_mode()
    def logits(self, ids: Tensor) -> Tensor:
        return (self.net(ids)[:, :-1].float() @ self.net.head_weight.float().t()).clone()

    def top1(self, split: str, start: int, ids: Tensor) -> Tensor:
        return self.logits(ids).argmax(-1)

    def selection_inputs(self, val: Tensor, tokens: int, batch: int) -> tuple[Tensor, Tensor]:
        """Dense teacher logits and next tokens of the first ``tokens`` validation targets."""
        ids = val[: math.ceil(tokens / (val.shape[1] - 1))].to(self.net.head_weight.device)
        logits = torch.cat([self.logits(ids[i : i + batch]).flatten(0, 1) for i in range(0, len(ids), batch)])
        return logits[:tokens].double().cpu(), ids[:, 1:].flatten()[:tokens].cpu()


class CachedTeacher:
    """The k top logits per token from a cache directory (one sparse cache per split), held in memory."""

    def __init__(
        self,
        directory: Path,
        expected: dict[str, dict[str, str]],
        targets: int,
        device: torch.device,
        use_tail_samples: bool = True,
    ):
        self.directory = directory
        self.targets = targets  # targets per block
        self.parts: dict[str, SparseTeacher] = {}
        for split in SPLITS:
            cache = SparseLogitCache(directory / split, expected[split], use_tail_samples)
            chunks = [cache.read(s, min(s + (1 << 16), len(cache))) for s in range(0, len(cache), 1 << 16)]
            # int32 indices in memory, widened per chunk by the loss
            narrow = [c.map(lambda t: t.int() if not t.is_floating_point() else t) for c in chunks]
            self.parts[split] = SparseTeacher.cat(narrow).to(device)
            self.k = cache.k
        self.tail_samples = cache.tail_samples
        self.stored_tail_samples = cache.stored_tail_samples
        tail = f" + {self.tail_samples} tail samples" if self.tail_samples else ""
        self.description = f"cached top-{self.k} logits{tail} {directory}"

    def _rows(self, split: str, blocks: Tensor) -> SparseTeacher:
        part = self.parts[split]
        rows = (blocks.unsqueeze(-1) * self.targets + torch.arange(self.targets, device=blocks.device)).flatten()
        if int(rows.max()) >= part.values.shape[0]:
            raise CacheError(f"logit cache {self.directory} has fewer {split} rows than the data; re-create it")
        lead = (*blocks.shape, self.targets)
        return part.rows(rows).map(lambda t: t.reshape(*lead, *t.shape[1:]))

    def train_input(self, index: Tensor, ids: Tensor) -> SparseTeacher:
        return self._rows("train", index)

    def top1(self, split: str, start: int, ids: Tensor) -> Tensor:
        part = self._rows(split, torch.arange(start, start + len(ids), device=ids.device))
        return part.indices.gather(-1, part.values.float().argmax(-1, keepdim=True)).squeeze(-1).long()

    def selection_inputs(self, val: Tensor, tokens: int, batch: int) -> tuple[Tensor, Tensor]:
        """Teacher bucket log-probabilities (k + 1) and the bucket of each next token (k = the rest)."""
        blocks = math.ceil(tokens / self.targets)
        part = self._rows("val", torch.arange(blocks, device=self.parts["val"].values.device))
        flat = part.without_tail_samples().to(torch.device("cpu")).flat()  # the proxy sees the k + 1 buckets
        logits = teacher_bucket_logits(flat.values.double(), flat.log_rest.double(), 1.0)[:tokens]
        targets = val[:blocks, 1:].flatten()[:tokens]
        hit = flat.indices[:tokens].long() == targets.unsqueeze(-1)
        labels = torch.where(hit.any(-1), hit.int().argmax(-1), torch.full_like(targets, self.k))
        return logits.clamp(min=-1e4), labels


def teacher_directory(cfg: RunConfig) -> Path:
    t = cfg.teacher
    if t is None or t.run is None:
        raise ConfigError("task: causal_lm needs teacher.run: a kdlab causal-LM run or a Hugging Face model directory")
    if t.checkpoint_epoch is not None:
        raise ConfigError("teacher.checkpoint_epoch is not supported for task: causal_lm")
    directory = Path(t.run)
    if not is_model_dir(directory):
        raise ConfigError(f"teacher.run: {directory} is not a Hugging Face model directory (no config.json)")
    return directory


def cache_fingerprints(data: TextSplits, teacher_dir: Path) -> dict[str, dict[str, str]]:
    """Per split: tokenizer, data (the exact token rows) and teacher weights; the tokenizer is checked first."""
    teacher = weights_digest(teacher_dir)
    return {s: {"tokenizer": data.tokenizer.digest, "data": data.fingerprints[s], "teacher": teacher} for s in SPLITS}


def cache_directory(cfg: RunConfig, teacher_dir: Path, data: TextSplits, k: int) -> Path:
    if cfg.cache.path:
        return Path(cfg.cache.path)
    return teacher_dir / f"lm-logits-{data.fingerprints['train'][:12]}-k{k}"


def check_teacher_fits(teacher_dir: Path, student_vocab: int | None, data: TextSplits) -> None:
    """Teacher and student must share the tokenizer: a different vocabulary or tokenizer is one clear error.
    ``student_vocab`` None (no student, e.g. select-ptloss): the tokenizer must fit in the teacher's vocabulary."""
    config = json.loads((teacher_dir / "config.json").read_text())
    teacher_vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if student_vocab is None and teacher_vocab is not None and data.vocab_size > int(teacher_vocab):
        raise ConfigError(
            f"the tokenizer has {data.vocab_size} tokens but the teacher in {teacher_dir} only {teacher_vocab}"
        )
    if student_vocab is not None and teacher_vocab is not None and int(teacher_vocab) != student_vocab:
        raise ConfigError(
            f"vocabulary mismatch: the teacher in {teacher_dir} has {teacher_vocab} tokens, the student "
            f"{student_vocab}; teacher and student must share a tokenizer"
        )
    summary = teacher_dir / "summary.json"
    if summary.is_file():
        theirs = (json.loads(summary.read_text()).get("data") or {}).get("tokenizer")
        if theirs is not None and theirs != data.tokenizer.digest:
            raise ConfigError(
                f"the teacher in {teacher_dir} was trained with another tokenizer than data.tokenizer "
                f"({theirs[:12]} != {data.tokenizer.digest[:12]}); teacher and student must share a tokenizer"
            )


def resolve_lm_teacher(cfg: RunConfig, data: TextSplits, student_vocab: int | None, device: torch.device):
    """The cache when ``cache.use`` asks for it (require) or allows it and it exists (auto), else the live model."""
    directory = teacher_directory(cfg)
    check_teacher_fits(directory, student_vocab, data)
    k = lm_topk(cfg.cache.topk)
    cache = cache_directory(cfg, directory, data, k)
    if cfg.cache.use == "require" and not (cache / "train").is_dir():
        raise CacheError(f"no logit cache at {cache}; run `kdlab cache-logits CONFIG` first")
    if cfg.cache.use != "never" and (cache / "train").is_dir():
        temperature = float(cfg.method.params().get("temperature", 1.0))
        use = tail_samples_serve(cfg.method.name, temperature) and cfg.cache.tail_samples != 0
        teacher = CachedTeacher(cache, cache_fingerprints(data, directory), cfg.data.block_size - 1, device, use)
        if teacher.stored_tail_samples and not use and cfg.cache.tail_samples != 0:
            warn_unused_tail_samples(cfg.method.name, temperature, teacher.k)
        return teacher
    return LiveTeacher(directory, device)
