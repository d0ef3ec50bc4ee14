"""Nuisance teachers: a teacher that knows nothing (``untrained``) or whose features carry label-free noise
(``noise_channels``), so that any feature-distillation method can be tested for robustness (RID's claim: a
method that copies everything the teacher carries, like VID, is hurt; one that keeps only what is about the
labels is not). Chosen with ``teacher.nuisance`` (``kdlab.config.NuisanceConfig``) and part of the teacher's
fingerprint, so a logit or feature cache of the clean teacher is never reused for a nuisance one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdlab.config import NuisanceConfig


class NoiseChannels:
    """Replace the last ``fraction`` of dimension 1 (channels, or a vector's units) of a tapped feature by fresh
    N(0, std²) noise on every call (from torch's global generator, which checkpoints save: a resume draws the same).
    Applied to what the feature taps record, not to the teacher's forward: its logits (KD) stay those of the
    trained teacher, as in the authors' ``corrupt_output`` (they corrupt rows; here channels)."""

    def __init__(self, fraction: float, std: float) -> None:
        self.fraction, self.std = fraction, std

    def __call__(self, feature: Tensor) -> Tensor:
        channels = feature.shape[1]
        noisy = math.ceil(self.fraction * channels)
        out = feature.clone()
        out[:, channels - noisy :] = torch.randn_like(out[:, channels - noisy :]) * self.std
        return out

    def __repr__(self) -> str:
        return f"NoiseChannels(fraction={self.fraction}, std={self.std})"


def untrained(build, seed: int) -> nn.Module:
    """The teacher's network with fresh weights from ``seed`` (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def describe(nuisance: NuisanceConfig) -> str:
    if nuisance.kind == "untrained":
        return f"untrained (seed {nuisance.seed})"
    return f"noise channels (fraction {nuisance.fraction}, std {nuisance.std})"
