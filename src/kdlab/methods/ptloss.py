"""PTLoss: KD with perturbed Maclaurin coefficients; epsilon given, or ``auto`` (chosen through the proxy teacher)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from kdlab.losses import ptloss

from .base import TOKEN_TASKS, SetupContext, register
from .selection import EpsilonSelection, select_ptloss_epsilon
from .token import TokenLevel, TokenParams
from .weighted import WeightedKDMethod, WeightedParams


class PTLossParams(WeightedParams):
    temperature: float = Field(1.0, gt=0, description="a number: epsilon selection depends on it")
    epsilon: Literal["auto"] | list[float] | list[list[float]] = Field(default_factory=lambda: [0.0])
    # used when epsilon is "auto": K candidates of order M, eps_m uniform in [-scale/m, scale/m]
    candidates: int = Field(64, ge=1)
    order: int = Field(5, ge=1)
    per_class: bool = False
    scale: float = Field(1.0, gt=0, le=1)
    selection_seed: int = 0
    selection_metric: Literal["l2", "tv", "nll"] = "l2"


class TokenPTLossParams(TokenParams):
    epsilon: Literal["auto"] | list[float] = "auto"  # auto = chosen by the proxy teacher on validation tokens
    candidates: int = Field(64, ge=1)
    order: int = Field(5, ge=1)
    scale: float = Field(1.0, gt=0, le=1)
    selection_seed: int = 0
    selection_metric: Literal["l2", "tv", "nll"] = "l2"
    selection_tokens: int = Field(512, ge=1, description="validation target tokens the proxy teacher is scored on")


@register("ptloss")
class PTLossMethod(TokenLevel, WeightedKDMethod):
    Params = PTLossParams
    token_params = TokenPTLossParams
    tasks = ("classify", *TOKEN_TASKS)
    divergence = "ptloss"

    def __init__(self, params: PTLossParams, num_classes: int) -> None:
        super().__init__(params, num_classes)
        auto = params.epsilon == "auto"
        self.epsilon: Tensor | None = None if auto else torch.tensor(params.epsilon, dtype=torch.float32)
        self.selection: EpsilonSelection | None = None  # the last selection made (epsilon: auto)

    @property
    def needs_selection(self) -> bool:
        return self.epsilon is None

    def select(self, teacher_logits_val: Tensor, labels_val: Tensor) -> EpsilonSelection:
        """Choose epsilon on the validation split through the proxy teacher (no student training)."""
        p = self.params
        selection = select_ptloss_epsilon(
            teacher_logits_val,
            labels_val,
            temperature=p.temperature,
            candidates=p.candidates,
            order=p.order,
            per_class=getattr(p, "per_class", False),
            scale=p.scale,
            seed=p.selection_seed,
            metric=p.selection_metric,
        )
        self.epsilon = selection.epsilon.float()
        self.selection = selection
        return selection

    def setup(self, ctx: SetupContext) -> None:
        """``epsilon: auto``: the proxy-teacher selection on the validation split, written beside the run as
        ptloss_selection.json and .png (every candidate and its scores)."""
        if self.epsilon is not None:
            return
        rows = getattr(self.params, "selection_tokens", None)  # token tasks: the first validation target tokens
        selection = self.select(ctx.teacher_logits("val", rows).cpu(), ctx.labels("val", rows).cpu())

        def plot(path: Path) -> None:
            from kdlab.eval.selection_plot import plot_selection

            plot_selection(selection, path)

        ctx.write_report("ptloss_selection", selection.to_dict(), plot)

    def token_epsilon(self) -> Tensor | None:
        if self.epsilon is None:
            raise RuntimeError("ptloss with epsilon: auto needs setup() (or select()) before training")
        return self.epsilon

    def describe(self) -> str:
        chosen = "auto" if self.epsilon is None else [round(x, 4) for x in self.epsilon.flatten().tolist()]
        return f"ptloss(alpha={self.params.alpha}, beta={self.params.beta}, T={self.params.temperature}, eps={chosen})"

    def distill_term(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
    ) -> Tensor:
        if self.epsilon is None:
            raise RuntimeError("ptloss with epsilon: auto needs setup() (or select()) before training")
        return ptloss(student_logits, teacher_logits, self.epsilon.to(student_logits.device), self.params.temperature)
