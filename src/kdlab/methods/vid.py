"""VID, variational information distillation (Ahn et al., CVPR 2019): maximise a variational lower bound of the
mutual information between a teacher feature t and a student feature s.

The teacher's feature is modelled as a Gaussian with a mean μ(s) — a small trainable network on the student's
feature (three 1x1 convolutions with ReLUs) — and a learned variance per channel, σ²_c = softplus(a_c) + ε. The
term is the negative log-likelihood without its constant, averaged over every element:
    ½ · mean[ (t − μ(s))² / σ²_c + log σ²_c ]
and the loss is feature_weight · Σ_pairs of it + alpha · CE + beta · KD. The variance starts at ``init_variance``
(5.0, as in the authors' setting). Network and variances are method-owned modules (saved beside the student).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from .base import Outputs, SetupContext, StepState, register
from .features import FeatureMethod, FeatureParams, align, projection

VARIANCE_FLOOR = 1e-5


class VIDParams(FeatureParams):
    init_variance: float = Field(5.0, gt=VARIANCE_FLOOR, description="σ² of every channel at the start")
    hidden_channels: int | None = Field(None, ge=1, description="width of μ's network (default: the teacher's)")


class GaussianHead(nn.Module):
    """μ(s) and the per-channel variance of one layer pair."""

    def __init__(self, in_channels: int, out_channels: int, image: bool, hidden: int, init_variance: float) -> None:
        super().__init__()
        self.mean = projection(in_channels, out_channels, image, hidden=hidden)
        inverse_softplus = math.log(math.expm1(init_variance - VARIANCE_FLOOR))
        self.raw_variance = nn.Parameter(torch.full((out_channels,), inverse_softplus))

    def variance(self, dims: int) -> Tensor:
        shape = (1, -1, 1, 1) if dims == 4 else (1, -1)
        return (F.softplus(self.raw_variance) + VARIANCE_FLOOR).view(shape)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        mean, target = align(self.mean(student), teacher)
        variance = self.variance(target.dim())
        return 0.5 * ((target - mean) ** 2 / variance + variance.log()).mean()


@register("vid")
class VIDMethod(FeatureMethod):
    Params = VIDParams
    params: VIDParams

    def __init__(self, params: VIDParams, num_classes: int) -> None:
        super().__init__(params, num_classes)
        self.heads: nn.ModuleList | None = None

    def setup(self, ctx: SetupContext) -> None:
        p = self.params
        self.heads = nn.ModuleList(
            GaussianHead(s[0], t[0], len(s) == 3, p.hidden_channels or t[0], p.init_variance)
            for s, t in self.paired_shapes(ctx)
        )

    def modules(self) -> dict[str, nn.Module]:
        return {} if self.heads is None else {"heads": self.heads}

    def compute(
        self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        assert teacher is not None and self.heads is not None, "vid needs setup() and a teacher"
        nll = sum(head(s, t) for head, (s, t) in zip(self.heads, self.pairs(student, teacher), strict=True))
        return {"vid": self.params.feature_weight * nll, **self.logit_terms(batch, student, teacher)}  # type: ignore[dict-item]
