"""RID, redundant information distillation (Dissanayake et al., AISTATS 2025): distil only what the teacher knows
about the labels, so a teacher that carries nuisance (untrained, noise channels) does not drag the student along.

VID aligns the student to the raw teacher feature and so copies all of it. RID puts a *teacher filter* f_t between
them (1x1 conv/linear → BN → ReLU → 1x1 conv/linear, with a linear head h trained on the labels) and aligns a
*student filter* f_s (expanding to ``expand`` × its width, then down to the filter's width) to the filtered
teacher, with a learned per-channel variance σ²_c = softplus(a_c) + 1e-3 (a_c = 5 at the start). Training
alternates in rounds: the epochs are split into ``rounds`` equal rounds; in each, the first ``filter_ratio`` of
it is the teacher-filter phase, the rest the student phase (the engine steps only the groups ``trains`` names):

  filter phase  (f_t, h):       Σ_ℓ CE(h_ℓ(f_t(T_ℓ)), y) + [round ≥ 2] Σ_ℓ mean((f_s(S_ℓ) − f_t(T_ℓ))² / σ²)
  student phase (student, f_s, σ): α_ce · CE(student(x), y) + α_align · Σ_ℓ mean(σ⁴ + (f_s(S_ℓ) − f_t(T_ℓ))² / σ²)

Variant followed (the authors' ``REDStudentMultistepAlternating`` in ``systems/wrncifar100A2810Mod2.py``): α =
(1, 0.1), 10 rounds, ratio 1/4, the σ⁴ variance term (``variance_term: log`` gives the Gaussian NLL's log σ²
instead, as their ``REDStudentNormalized``), the alignment term in the filter phase from the second round on.
Terms of the inactive side are computed without gradients (their values are still logged).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from kdlab.losses import cross_entropy

from .base import Outputs, SetupContext, StepState, register
from .features import FeatureMethod, FeatureParams, align

VARIANCE_FLOOR = 1e-3
FILTER_GROUPS = ("teacher_filters",)
STUDENT_GROUPS = ("student", "student_filters")


class RIDParams(FeatureParams):
    alpha: float = Field(1.0, ge=0, description="weight of the student's cross-entropy (α₀)")
    feature_weight: float = Field(0.1, ge=0, description="weight of the alignment term (α₁)")
    rounds: int = Field(10, ge=1, description="rounds of (filter phase, student phase) over the run")
    filter_ratio: float = Field(0.25, gt=0, lt=1, description="share of each round given to the teacher filter")
    expand: int = Field(16, ge=1, description="hidden width of the student filter, × the student feature's width")
    filter_channels: int | None = Field(None, ge=1, description="width of the filtered teacher (default: its own)")
    raw_variance: float = Field(5.0, description="a_c at the start (σ² = softplus(a_c) + 1e-3)")
    variance_term: Literal["square", "log"] = Field("square", description="σ⁴ (the authors' code) or log σ²")


def _filter(in_channels: int, hidden: int, out_channels: int, image: bool) -> nn.Sequential:
    if image:
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
        )
    return nn.Sequential(
        nn.Linear(in_channels, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_channels, bias=False),
    )


class TeacherFilter(nn.Module):
    """f_t and its label head h (ReLU, then one linear layer on the flattened filtered feature)."""

    def __init__(self, shape: tuple[int, ...], out_channels: int, num_classes: int) -> None:
        super().__init__()
        image = len(shape) == 3
        self.filter = _filter(shape[0], shape[0], out_channels, image)
        self.head = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(out_channels * math.prod(shape[1:]), num_classes))


class StudentFilter(nn.Module):
    """f_s and the per-channel variances of the alignment term (both step in the student phase)."""

    def __init__(self, shape: tuple[int, ...], out_channels: int, expand: int, raw_variance: float) -> None:
        super().__init__()
        self.filter = _filter(shape[0], shape[0] * expand, out_channels, len(shape) == 3)
        self.raw_variance = nn.Parameter(torch.full((out_channels,), raw_variance))

    def variance(self, dims: int) -> Tensor:
        shape = (1, -1, 1, 1) if dims == 4 else (1, -1)
        return (F.softplus(self.raw_variance) + VARIANCE_FLOOR).view(shape)


@register("rid")
class RIDMethod(FeatureMethod):
    Params = RIDParams
    params: RIDParams
    phased = True

    def __init__(self, params: RIDParams, num_classes: int) -> None:
        super().__init__(params, num_classes)
        self.teacher_filters: nn.ModuleList | None = None
        self.student_filters: nn.ModuleList | None = None

    def setup(self, ctx: SetupContext) -> None:
        p = self.params
        teachers, students = [], []
        for s, t in self.paired_shapes(ctx):
            width = p.filter_channels or t[0]
            target = (
                (width, *t[1:]) if len(s) == 1 else (width, *(min(a, b) for a, b in zip(s[1:], t[1:], strict=True)))
            )
            teachers.append(TeacherFilter((t[0], *target[1:]), width, self.num_classes))
            students.append(StudentFilter(s, width, p.expand, p.raw_variance))
        self.teacher_filters, self.student_filters = nn.ModuleList(teachers), nn.ModuleList(students)

    def modules(self) -> dict[str, nn.Module]:
        if self.teacher_filters is None or self.student_filters is None:
            return {}
        return {"teacher_filters": self.teacher_filters, "student_filters": self.student_filters}

    def phase(self, state: StepState) -> tuple[int, bool]:
        """(round, whether this is the teacher-filter phase) at ``state.progress`` (epochs as a float)."""
        length = state.epochs / self.params.rounds
        round_index = min(int(state.progress // length), self.params.rounds - 1)
        into = state.progress - round_index * length
        return round_index, into < self.params.filter_ratio * length - 1e-9

    def trains(self, state: StepState) -> tuple[str, ...]:
        return FILTER_GROUPS if self.phase(state)[1] else STUDENT_GROUPS

    def current_values(self, state: StepState) -> dict[str, float]:
        round_index, filtering = self.phase(state)
        return {"round": float(round_index + 1), "filter_phase": float(filtering)}

    def compute(
        self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        assert teacher is not None and self.teacher_filters is not None and self.student_filters is not None, (
            "rid needs setup() and a teacher"
        )
        p = self.params
        round_index, filtering = self.phase(state)
        head_ce, gaps, penalties = [], [], []
        for tf, sf, (s, t) in zip(
            self.teacher_filters, self.student_filters, self.pairs(student, teacher), strict=True
        ):
            s, t = align(s, t)
            with torch.set_grad_enabled(filtering and torch.is_grad_enabled()):
                filtered = tf.filter(t)
                head_ce.append(cross_entropy(tf.head(filtered), batch["y"]))
            with torch.set_grad_enabled(not filtering and torch.is_grad_enabled()):
                mapped = sf.filter(s)
                variance = sf.variance(mapped.dim())
            gaps.append(((mapped - filtered) ** 2 / variance).mean())
            extra = variance**2 if p.variance_term == "square" else variance.log()
            penalties.append(extra.mean())
        gap, penalty = sum(gaps), sum(penalties)
        logit_terms = self.logit_terms(batch, student, teacher)  # alpha · CE (+ beta · KD when beta > 0)
        if filtering:
            return {
                "filter_ce": sum(head_ce),
                "filter_align": (1.0 if round_index >= 1 else 0.0) * gap,
                "rid": p.feature_weight * (gap + penalty).detach(),
                **{name: value.detach() for name, value in logit_terms.items()},
            }  # type: ignore[dict-item]
        return {
            "filter_ce": sum(head_ce).detach(),  # type: ignore[union-attr]
            "filter_align": gap.detach(),  # type: ignore[union-attr]
            "rid": p.feature_weight * (gap + penalty),
            **logit_terms,
        }  # type: ignore[dict-item]
