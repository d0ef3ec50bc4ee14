"""DiSK, scaffolding a student (Kag, Acar, Gangrade, Saligrama; ICLR 2023): a learned guide g(x) ∈ [0, 1] props up
the student's prediction on the teacher's top classes where the example is too hard for it, under a budget.

Why: a student much smaller than its teacher cannot match the teacher everywhere; vanilla KD keeps pushing on the
rows it cannot fit and its loss landscape turns rugged. The guide lowers the hinted KD loss (``losses.scaffold``) on
exactly those rows; a budget c = Σ g·h / n_err ≤ ε (h: the row's hardness for the student) with a Lagrange
multiplier μ keeps it from helping everywhere. Only the student is used at test time; the guide is a method-owned
module (``method/guide.safetensors`` beside the student).

Phases (``trains``), counted in epochs as the authors' ``main_train_eval_loop``: ``warmup_epochs`` guide-only
epochs, then cycles of ``student_epochs`` (kt) student-only and ``guide_epochs`` (kg) guide-only epochs.
  student step: hint_weight · L_hint(s, g frozen) + ce_weight · CE(s, y)
  guide step:   hint_weight · L_hint(s frozen, g) + μ · ReLU(c − ε) + hint_weight · mean log(1 + K·g)
The budget ε follows the authors' periodic cosine from ``budget_max`` to ``budget_min`` (period in cycles); μ is the
dual variable (``multiplier: dual``: at each cycle start μ ← max(μ + ρ·v, μ_min), v the previous epoch's mean
violation ReLU(c − ε), or its signed slack c − ε with ``dual_step: signed``) or the authors' ``runner.sh`` choice
(``multiplier: schedule``: a cosine from μ_min to μ_max, period in cycles, the dual variable kept but unused).
Defaults are ``runner.sh``'s (CIFAR-100); the dual step uses the epoch's measured constraint instead of an extra
pass over the data, and omits the authors' gradient correction term. See docs/disk.md.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.losses import budget_constraint, cross_entropy, hardness, hinted_kd_loss

from .base import Method, MethodParams, Outputs, Requires, SetupContext, StepState, register

GuideInput = Literal["student_logits", "teacher_logits", "teacher_features"]


class DiSKParams(MethodParams):
    top_k: int = Field(10, ge=1, description="teacher's top classes in the mask (plus the label); >= C: all")
    student_temperature: float = Field(3.5, gt=0, description="τ_s")
    teacher_temperature: float = Field(4.0, gt=0, description="τ_t")
    hint_weight: float = Field(0.9, ge=0, description="l_nll: weight of the hinted KD loss (and of log(1+K·g))")
    ce_weight: float = Field(0.1, ge=0, description="l_aux: weight of the hard-label CE in student steps")
    max_ce: float = Field(5.0, gt=0, description="c_max: the hardness h is capped here")
    budget_max: float = Field(0.6, ge=0, description="ε at the start of each budget period")
    budget_min: float = Field(0.4, ge=0, description="ε at the end of each budget period")
    budget_period: int = Field(20, ge=1, description="cycles per cosine period of ε")
    multiplier: Literal["dual", "schedule"] = Field("dual", description="μ: the dual variable, or runner.sh's cosine")
    dual_init: float = Field(5.0, ge=0, description="lmbda_dual: the dual variable's start")
    dual_step: Literal["violation", "signed"] = Field("violation", description="ascent on ReLU(c−ε) or on c−ε")
    rho: float = Field(2.0, ge=0, description="dual step size")
    multiplier_min: float = Field(1.0, ge=0, description="lmbda_min: floor of μ (and the schedule's start)")
    multiplier_max: float = Field(5.0, ge=0, description="lmbda: the schedule's top")
    multiplier_period: int = Field(50, ge=1, description="Ti: cycles per cosine period of the μ schedule")
    warmup_epochs: int = Field(5, ge=0, description="init_epochs: guide-only epochs before the first student epoch")
    student_epochs: int = Field(3, ge=1, description="kt: student epochs per cycle")
    guide_epochs: int = Field(3, ge=1, description="kg: guide epochs per cycle")
    guide_inputs: list[GuideInput] = Field(["student_logits", "teacher_logits"], min_length=1)
    guide_hidden: list[int] = Field([64], description="hidden widths of the guide MLP")
    teacher_layer: str | None = Field(None, description="teacher submodule for guide_inputs: teacher_features")
    log_examples: int = Field(512, ge=0, description="training rows (index < this) whose g and h are logged")

    @model_validator(mode="after")
    def _consistent(self) -> DiSKParams:
        if self.budget_min > self.budget_max:
            raise ValueError(f"budget_min ({self.budget_min}) must be <= budget_max ({self.budget_max})")
        if ("teacher_features" in self.guide_inputs) != (self.teacher_layer is not None):
            raise ValueError("guide_inputs: teacher_features and teacher_layer go together")
        if len(set(self.guide_inputs)) != len(self.guide_inputs) or any(w < 1 for w in self.guide_hidden):
            raise ValueError("guide_inputs must not repeat and guide_hidden widths must be >= 1")
        return self


class Guide(nn.Module):
    """g(x) = sigmoid(MLP(LayerNorm([inputs]))): LayerNorm rather than BatchNorm, so a frozen guide's forward in a
    student step changes nothing (no running statistics)."""

    def __init__(self, in_features: int, hidden: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_features)]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x)).squeeze(-1)


def periodic_cosine(start: float, end: float, cycle: int, period: int) -> float:
    """The authors' schedule: from ``start`` to ``end`` over ``period`` cycles, then again from ``start``."""
    return start + (end - start) * (1 - math.cos(math.pi * (cycle % period) / period)) / 2


@register("disk")
class DiSKMethod(Method):
    Params = DiSKParams
    params: DiSKParams
    phased = True

    def __init__(self, params: DiSKParams, num_classes: int) -> None:
        super().__init__(params, num_classes)
        self.guide: Guide | None = None
        self.dual = params.dual_init
        self._epoch = -1  # the epoch whose batches the accumulators below hold
        self._sums = {"constraint": 0.0, "violation": 0.0, "guide": 0.0, "hardness": 0.0, "batches": 0.0}
        self._examples: dict[str, list[float]] = {"index": [], "g": [], "h": []}
        self._last_violation: float | None = None  # the previous epoch's mean (what the dual step reads)

    # ---- what it needs and owns ----

    def requires(self) -> Requires:
        layer = self.params.teacher_layer
        return Requires(teacher_features=(layer,) if layer else ())

    def setup(self, ctx: SetupContext) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ConfigError(
                "method disk: one process only for now (its dual variable is measured on each process's own rows "
                "and not yet averaged across processes)"
            )
        width = 0
        for name in self.params.guide_inputs:
            if name == "teacher_features":
                assert self.params.teacher_layer is not None
                shape = ctx.feature_shapes("teacher", (self.params.teacher_layer,))[self.params.teacher_layer]
                width += math.prod(shape)
            else:
                width += ctx.num_classes
        self.guide = Guide(width, self.params.guide_hidden).to(ctx.device)

    def modules(self) -> dict[str, nn.Module]:
        return {} if self.guide is None else {"guide": self.guide}

    # ---- phases and schedules ----

    def phase(self, epoch: int) -> Literal["guide", "student"]:
        p = self.params
        if epoch < p.warmup_epochs:
            return "guide"
        return (
            "student" if (epoch - p.warmup_epochs) % (p.student_epochs + p.guide_epochs) < p.student_epochs else "guide"
        )

    def cycle(self, epoch: int) -> int:
        """The authors' epoch: one kt + kg cycle (0 during the warm-up)."""
        p = self.params
        return max(epoch - p.warmup_epochs, 0) // (p.student_epochs + p.guide_epochs)

    def trains(self, state: StepState) -> tuple[str, ...] | None:
        return ("guide",) if self.phase(state.epoch) == "guide" else ("student",)

    def budget(self, epoch: int) -> float:
        p = self.params
        return periodic_cosine(p.budget_max, p.budget_min, self.cycle(epoch), p.budget_period)

    def multiplier_value(self, epoch: int) -> float:
        p = self.params
        if p.multiplier == "schedule":
            return periodic_cosine(p.multiplier_min, p.multiplier_max, self.cycle(epoch), p.multiplier_period)
        return self.dual

    def dual_update(self, measured: float) -> None:
        """μ ← max(μ + ρ·v, μ_min): projected ascent on the constraint's violation (or signed slack)."""
        self.dual = max(self.dual + self.params.rho * measured, self.params.multiplier_min)

    def _begin_epoch(self, epoch: int) -> None:
        p = self.params
        n = self._sums["batches"]
        if n:
            mean_constraint = self._sums["constraint"] / n
            slack = mean_constraint - self.budget(self._epoch)
            self._last_violation = self._sums["violation"] / n if p.dual_step == "violation" else slack
        cycle_start = epoch >= p.warmup_epochs and (epoch - p.warmup_epochs) % (p.student_epochs + p.guide_epochs) == 0
        if cycle_start and epoch > 0 and self._last_violation is not None:
            self.dual_update(self._last_violation)
        self._epoch = epoch
        self._sums = dict.fromkeys(self._sums, 0.0)
        self._examples = {k: [] for k in self._examples}

    # ---- one batch ----

    def guide_features(self, student: Outputs, teacher: Outputs) -> Tensor:
        assert student.logits is not None and teacher.logits is not None
        parts = []
        for name in self.params.guide_inputs:
            if name == "student_logits":
                parts.append(student.logits.detach().float())
            elif name == "teacher_logits":
                parts.append(teacher.logits.float())
            else:
                parts.append(teacher.features[str(self.params.teacher_layer)].flatten(1).float())
        return torch.cat(parts, dim=1)

    def compute(
        self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        assert teacher is not None and teacher.logits is not None and self.guide is not None, "disk needs setup()"
        assert student.logits is not None
        p, y = self.params, batch["y"]
        if state.epoch != self._epoch:
            self._begin_epoch(state.epoch)
        phase = self.phase(state.epoch)
        features = self.guide_features(student, teacher)
        s_logits, t_logits = student.logits, teacher.logits.float()
        if phase == "student":
            with torch.no_grad():
                g = self.guide(features)
        else:
            s_logits = s_logits.detach()
            g = self.guide(features)
        hint = hinted_kd_loss(s_logits, t_logits, y, g, p.top_k, p.student_temperature, p.teacher_temperature)
        with torch.no_grad():
            h = hardness(s_logits, t_logits, p.max_ce)
        constraint = budget_constraint(g, h, s_logits, y)
        epsilon = self.budget(state.epoch)
        violation = torch.relu(constraint - epsilon)
        self._record(batch, g, h, float(constraint.detach()), float(violation.detach()))
        if phase == "student":
            terms = {"hint": p.hint_weight * hint}
            if p.ce_weight > 0:
                terms["ce"] = p.ce_weight * cross_entropy(s_logits, y)
            return terms
        k = min(p.top_k, self.num_classes)
        return {
            "hint": p.hint_weight * hint,
            "budget": self.multiplier_value(state.epoch) * violation,
            "guide_reg": p.hint_weight * torch.log1p(k * g).mean(),
        }

    def _record(self, batch: dict[str, Tensor], g: Tensor, h: Tensor, constraint: float, violation: float) -> None:
        s = self._sums
        s["constraint"] += constraint
        s["violation"] += violation
        s["guide"] += float(g.detach().mean())
        s["hardness"] += float(h.mean())
        s["batches"] += 1
        if self.params.log_examples and "index" in batch:
            keep = (batch["index"] < self.params.log_examples).nonzero().squeeze(1)
            self._examples["index"] += batch["index"][keep].tolist()
            self._examples["g"] += g.detach()[keep].float().tolist()
            self._examples["h"] += h[keep].float().tolist()

    # ---- logs and resume ----

    def current_values(self, state: StepState) -> dict[str, Any]:
        """Per epoch: the phase, ε, μ, the epoch's mean constraint c, violation, g and h, and per-example g and h of
        the logged rows (sorted by row index) — the data of the g-against-hardness plot."""
        n = max(self._sums["batches"], 1.0)
        order = sorted(range(len(self._examples["index"])), key=self._examples["index"].__getitem__)
        return {
            "phase": self.phase(state.epoch),
            "budget": self.budget(state.epoch),
            "multiplier": self.multiplier_value(state.epoch),
            "dual": self.dual,
            "constraint": self._sums["constraint"] / n,
            "violation": self._sums["violation"] / n,
            "guide_mean": self._sums["guide"] / n,
            "hardness_mean": self._sums["hardness"] / n,
            "examples": {k: [v[i] for i in order] for k, v in self._examples.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "dual": self.dual,
            "epoch": self._epoch,
            "sums": dict(self._sums),
            "examples": {k: list(v) for k, v in self._examples.items()},
            "last_violation": self._last_violation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dual = float(state["dual"])
        self._epoch = int(state["epoch"])
        self._sums = {k: float(v) for k, v in state["sums"].items()}
        self._examples = {k: list(v) for k, v in state["examples"].items()}
        last = state["last_violation"]
        self._last_violation = None if last is None else float(last)
