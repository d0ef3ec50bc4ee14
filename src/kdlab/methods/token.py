"""Token-level distillation for language models, shared by the methods that support ``task: causal_lm`` (and by
``kdlab.hf``'s Trainer): ``beta · D(teacher ‖ student) + alpha · CE(next token)`` through
``kdlab.losses.fused_linear_distill`` — hidden states and head weight in, the (tokens × vocabulary) logits never
formed.

A method supporting token tasks mixes in ``TokenLevel`` and names its divergence; its hyper-parameters for a token
task are ``token_params`` (defaults alpha 0, beta 1, T 1: pure distillation, as TRL and DistillKit default). The
task fills ``Outputs.hidden``/``head_weight`` for the student and, for the teacher, the same or ``sparse`` (a
top-k cache) or dense ``logits``; the batch carries ``targets`` (the shifted next tokens), ``num_items`` (target
tokens of the whole accumulation window, or None for this batch's mean) and optionally ``ignore_index``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from kdlab.losses import fused_linear_distill
from kdlab.losses.sparse_teacher import SparseTeacher, tail_samples_serve

from .base import TOKEN_TASKS, Method, MethodParams, Outputs, StepState

IGNORE_INDEX = -100


class TokenParams(MethodParams):
    alpha: float = Field(0.0, ge=0, description="weight of the next-token cross-entropy")
    beta: float = Field(1.0, ge=0, description="weight of the divergence from the teacher")
    temperature: float = Field(1.0, gt=0)
    chunk_size: int | None = Field(None, ge=1, description="tokens per chunk of the fused loss (None: automatic)")


def one_hot(targets: Tensor) -> SparseTeacher:
    """The targets as a sparse teacher with k = 1 and no rest mass: its KD loss is the cross-entropy."""
    return SparseTeacher(
        torch.zeros(*targets.shape, 1, device=targets.device),
        targets.clamp(min=0).unsqueeze(-1),
        torch.full(targets.shape, float("-inf"), device=targets.device),
    )


def teacher_outputs(given: Any) -> Outputs:
    """A teacher as the fused loss takes it — a ``SparseTeacher``, ``(hidden, head weight)`` or dense logits — as
    the ``Outputs`` a method reads (the inverse of ``teacher_input``)."""
    if isinstance(given, SparseTeacher):
        return Outputs(sparse=given)
    if isinstance(given, tuple):
        return Outputs(hidden=given[0], head_weight=given[1])
    return Outputs(logits=given)


def teacher_input(teacher: Outputs, loss: str, temperature: float) -> Any:
    """What the fused loss takes as the teacher: a sparse cache's rows, (hidden, head weight), or dense logits."""
    if teacher.sparse is not None:
        sparse = teacher.sparse
        if sparse.has_tail_samples and not tail_samples_serve(loss, temperature):
            sparse = sparse.without_tail_samples()  # draws at T = 1 serve kd/ptloss only: the rest bucket
        return sparse
    if teacher.hidden is not None:
        return teacher.hidden, teacher.head_weight
    return teacher.logits


def cross_entropy_terms(batch: dict[str, Any], student: Outputs, scale: float = 1.0) -> dict[str, Tensor]:
    hidden, weight = _student(student)
    targets = batch["targets"]
    masked = {"labels": targets, "ignore_index": batch["ignore_index"]} if "ignore_index" in batch else {}
    value = fused_linear_distill(hidden, weight, one_hot(targets), num_items=batch.get("num_items"), **masked)
    return {"ce": scale * value}


def _student(student: Outputs) -> tuple[Tensor, Tensor]:
    hidden, weight = student.hidden, student.head_weight
    if hidden is None or weight is None:
        raise ValueError("a token-level loss needs the student's hidden states and head weight")
    if weight.dtype != hidden.dtype:  # mixed precision: the head in the hidden states' dtype (autograd follows)
        weight = weight.to(hidden.dtype)
    return hidden, weight


class TokenLevel:
    """Mixin: the token-level branch of a method's ``compute``; ``divergence`` names the fused loss."""

    divergence: ClassVar[str] = "kd"
    token_params: ClassVar[type[TokenParams]] = TokenParams
    params: Any
    name: str

    token_level: bool

    @property
    def needs_teacher(self) -> bool:  # type: ignore[override]
        return not self.token_level or self.params.beta > 0

    @classmethod
    def params_for(cls, task: str) -> type[MethodParams]:
        return cls.token_params if task in TOKEN_TASKS else cls.Params  # type: ignore[attr-defined]

    def compute(
        self, batch: dict[str, Any], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        if student.hidden is not None:
            return self.token_terms(batch, student, teacher, state)
        return super().compute(batch, student, teacher, state)  # type: ignore[misc]

    def describe(self) -> str:
        return self.describe_token() if self.token_level else super().describe()  # type: ignore[misc]

    def token_epsilon(self) -> Tensor | None:
        return None

    def current_values(self, state: StepState) -> dict[str, float]:
        if self.token_level:  # constant weights: nothing scheduled to log
            return {}
        return super().current_values(state)  # type: ignore[misc]

    def token_terms(
        self, batch: dict[str, Any], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        p = self.params
        if not self.needs_teacher or teacher is None:  # SFT through the same fused path
            return cross_entropy_terms(batch, student, p.alpha)
        hidden, weight = _student(student)
        epsilon = self.token_epsilon()
        value = fused_linear_distill(
            hidden,
            weight,
            teacher_input(teacher, self.divergence, p.temperature),
            loss=self.divergence,
            epsilon=None if epsilon is None else epsilon.to(hidden.device),
            temperature=p.temperature,
            labels=batch["targets"],
            ignore_index=batch.get("ignore_index", IGNORE_INDEX),
            ce_weight=p.alpha / p.beta,
            num_items=batch.get("num_items"),
            jsd_beta=getattr(p, "jsd_beta", 0.5),
            chunk_size=p.chunk_size,
        )
        return {self.name if p.alpha == 0 else f"{self.name}+ce": p.beta * value}

    def describe_token(self) -> str:
        p = self.params
        return f"{self.name}(alpha={p.alpha}, beta={p.beta}, T={p.temperature})"


class TokenMethod(TokenLevel, Method):
    """A divergence for token-level tasks only (``reverse_kl``, ``jsd``): one class attribute names it."""

    tasks = TOKEN_TASKS
    Params = TokenParams
