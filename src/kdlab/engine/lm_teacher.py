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

from kdlab.config import ConfigError, RunConfig
from kdlab.data.text import TextSplits
from kdlab.losses.sparse_teacher import SparseTeacher, teacher_bucket_logits
from kdlab.models.hf import HiddenStates, is_model_dir, load_pretrained, weights_digest

from .logit_cache import CacheError
from .sparse_logit_cache import SparseLogitCache

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

    def __init__(self, directory: Path, expected: dict[str, dict[str, str]], targets: int, device: torch.device):
        self.directory = directory
        self.targets = targets  # targets per block
        self.parts: dict[str, SparseTeacher] = {}
        for split in SPLITS:
            cache = SparseLogitCache(directory / split, expected[split])
            chunks = [cache.read(s, min(s + (1 << 16), len(cache))) for s in range(0, len(cache), 1 << 16)]
            self.parts[split] = SparseTeacher(
                torch.cat([c.values for c in chunks]).to(device),
                torch.cat([c.indices.int() for c in chunks]).to(device),  # int32 in memory, widened per chunk
                torch.cat([c.log_rest for c in chunks]).to(device),
            )
            self.k = cache.k
        self.description = f"cached top-{self.k} logits {directory}"

    def _rows(self, split: str, blocks: Tensor) -> SparseTeacher:
        part = self.parts[split]
        rows = (blocks.unsqueeze(-1) * self.targets + torch.arange(self.targets, device=blocks.device)).flatten()
        if int(rows.max()) >= part.values.shape[0]:
            raise CacheError(f"logit cache {self.directory} has fewer {split} rows than the data; re-create it")
        shape = (*blocks.shape, self.targets, self.k)
        return SparseTeacher(
            part.values[rows].reshape(shape), part.indices[rows].reshape(shape), part.log_rest[rows].reshape(shape[:-1])
        )

    def train_input(self, index: Tensor, ids: Tensor) -> SparseTeacher:
        return self._rows("train", index)

    def top1(self, split: str, start: int, ids: Tensor) -> Tensor:
        part = self._rows(split, torch.arange(start, start + len(ids), device=ids.device))
        return part.indices.gather(-1, part.values.float().argmax(-1, keepdim=True)).squeeze(-1).long()

    def selection_inputs(self, val: Tensor, tokens: int, batch: int) -> tuple[Tensor, Tensor]:
        """Teacher bucket log-probabilities (k + 1) and the bucket of each next token (k = the rest)."""
        blocks = math.ceil(tokens / self.targets)
        part = self._rows("val", torch.arange(blocks, device=self.parts["val"].values.device))
        flat = SparseTeacher(*(x.cpu() for x in (part.values, part.indices, part.log_rest))).flat()
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


def check_teacher_fits(teacher_dir: Path, student_vocab: int, data: TextSplits) -> None:
    """Teacher and student must share the tokenizer: a different vocabulary or tokenizer is one clear error."""
    config = json.loads((teacher_dir / "config.json").read_text())
    teacher_vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if teacher_vocab is not None and int(teacher_vocab) != student_vocab:
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


def resolve_lm_teacher(cfg: RunConfig, data: TextSplits, student_vocab: int, device: torch.device):
    """The cache when ``cache.use`` asks for it (require) or allows it and it exists (auto), else the live model."""
    directory = teacher_directory(cfg)
    check_teacher_fits(directory, student_vocab, data)
    k = cfg.cache.topk or 64
    cache = cache_directory(cfg, directory, data, k)
    if cfg.cache.use == "require" and not (cache / "train").is_dir():
        raise CacheError(f"no logit cache at {cache}; run `kdlab cache-logits CONFIG` first")
    if cfg.cache.use != "never" and (cache / "train").is_dir():
        return CachedTeacher(cache, cache_fingerprints(data, directory), cfg.data.block_size - 1, device)
    return LiveTeacher(directory, device)
