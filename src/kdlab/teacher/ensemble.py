"""An ensemble of teachers as one teacher: its logits are the log of the members' mean probability.

softmax(log mean_i p_i) = mean_i p_i, so every logit-based method (KD, PTLoss, DKD, ...) distils the ensemble's
averaged prediction unchanged — the "teacher such as an ensemble of networks" of Stanton et al. (2021). The
members are frozen; the ensemble is cached like a single teacher (its fingerprint covers every member).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .source import TeacherSource


class EnsembleTeacher(nn.Module):
    """``forward(x)`` = logsumexp_i log_softmax(member_i(x)) − log n, in float32 (members may run in bf16)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        log_probs = torch.stack([torch.log_softmax(_upcast(member(x)), dim=-1) for member in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


def _upcast(logits: Tensor) -> Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


@dataclass
class EnsembleSource:
    """Where an ensemble's members come from; the same interface as ``TeacherSource``."""

    members: list[TeacherSource]

    @property
    def directory(self) -> Path:  # its cache lives beside the first member's
        return self.members[0].directory

    @property
    def tag(self) -> str:
        return f"-ensemble{len(self.members)}-{self.fingerprint()[:12]}"

    @property
    def run_config(self) -> dict | None:
        return self.members[0].run_config

    def fingerprint(self) -> str:
        digest = hashlib.sha256(b"kdlab-ensemble")
        for member in self.members:
            digest.update(member.fingerprint().encode())
        return digest.hexdigest()

    def describe(self) -> str:
        return f"ensemble of {len(self.members)}: " + "; ".join(m.describe() for m in self.members)
