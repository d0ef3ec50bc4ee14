"""Batches for causal-LM distillation: right padding, an attention mask, labels -100 on padding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .cache import CACHE_COLUMN
from .loss import IGNORE_INDEX


class CausalLMCollator:
    """Collate examples ``{"input_ids": [...], "labels"?: [...], "cache_offset"?: int}`` into padded tensors.

    Labels default to the input ids; padded positions get label -100 and attention mask 0. Sequences longer
    than ``max_length`` are cut (their cached rows, if any, stay aligned: the cut tokens come last).
    """

    def __init__(self, pad_token_id: int = 0, max_length: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        ids = [list(e["input_ids"])[: self.max_length] for e in examples]
        labels = [list(e.get("labels", e["input_ids"]))[: self.max_length] for e in examples]
        width = max(map(len, ids))
        batch = {
            "input_ids": torch.full((len(ids), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros(len(ids), width, dtype=torch.long),
            "labels": torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long),
        }
        for row, (seq, lab) in enumerate(zip(ids, labels, strict=True)):
            if len(lab) != len(seq):
                raise ValueError(f"example {row}: {len(lab)} labels for {len(seq)} input ids")
            batch["input_ids"][row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            batch["attention_mask"][row, : len(seq)] = 1
            batch["labels"][row, : len(seq)] = torch.tensor(lab, dtype=torch.long)
        if all(CACHE_COLUMN in e for e in examples):
            batch[CACHE_COLUMN] = torch.tensor([int(e[CACHE_COLUMN]) for e in examples], dtype=torch.long)
        return batch
