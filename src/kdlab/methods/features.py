"""What the feature-distillation methods share: layer pairs from the config, shape alignment, a regressor of the
right size, and the optional logit terms (alpha · CE + beta · KD) that ride along with a feature term.

A "layer" is a submodule name of the student or the teacher (``model.get_submodule``); its output is taken by a
forward hook. A student and a teacher feature of different spatial size are compared at the smaller size
(adaptive average pooling of the larger), so any two stages of two CNNs can be paired.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from kdlab.errors import ConfigError
from kdlab.losses import cross_entropy, kd_loss

from .base import Method, MethodParams, Outputs, Requires, SetupContext


class FeatureParams(MethodParams):
    student_layer: str | list[str] = Field(..., description="student submodule(s) whose output is distilled")
    teacher_layer: str | list[str] = Field(..., description="teacher submodule(s), paired in order")
    feature_weight: float = Field(1.0, ge=0, description="weight of the feature term (summed over layer pairs)")
    alpha: float = Field(1.0, ge=0, description="weight of the hard-label cross-entropy")
    beta: float = Field(0.0, ge=0, description="weight of Hinton's KD term on the logits (0: none)")
    temperature: float = Field(4.0, gt=0, description="temperature of the KD term")

    @model_validator(mode="after")
    def _paired(self) -> FeatureParams:
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f"student_layer and teacher_layer must pair up: {len(self.student_layers)} student and "
                f"{len(self.teacher_layers)} teacher layers"
            )
        return self

    @property
    def student_layers(self) -> tuple[str, ...]:
        return (self.student_layer,) if isinstance(self.student_layer, str) else tuple(self.student_layer)

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        return (self.teacher_layer,) if isinstance(self.teacher_layer, str) else tuple(self.teacher_layer)


def full_precision(x: Tensor) -> Tensor:
    """Feature losses compute in float32 even when the forward ran under fp16/bf16 autocast."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def align(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Two (N, C, H, W) maps at the same spatial size (the smaller one's); 2-D features pass unchanged."""
    if student.dim() == 4 and teacher.dim() == 4 and student.shape[-2:] != teacher.shape[-2:]:
        size = min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1])
        student, teacher = F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


def check_pair(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], names: tuple[str, str]) -> None:
    if len(student_shape) != len(teacher_shape) or len(student_shape) not in (1, 3):
        raise ConfigError(
            f"config: method layers {names[0]!r} (student, shape {student_shape}) and {names[1]!r} (teacher, shape "
            f"{teacher_shape}) cannot be paired: both must be (C, H, W) maps or (D,) vectors"
        )


def projection(in_channels: int, out_channels: int, image: bool, hidden: int | None = None) -> nn.Module:
    """A 1x1 convolution (maps) or a linear layer (vectors) from the student's to the teacher's width; with
    ``hidden``, three of them with ReLUs between (VID's regressor)."""
    layer = (lambda i, o: nn.Conv2d(i, o, 1, bias=False)) if image else (lambda i, o: nn.Linear(i, o, bias=False))
    if hidden is None:
        return layer(in_channels, out_channels)
    return nn.Sequential(
        layer(in_channels, hidden), nn.ReLU(), layer(hidden, hidden), nn.ReLU(), layer(hidden, out_channels)
    )


class FeatureMethod(Method):
    """Base of FitNets, VID (and RID): paired layers, the hooks they need, and the logit terms."""

    Params = FeatureParams
    params: FeatureParams

    def requires(self) -> Requires:
        return Requires(student_features=self.params.student_layers, teacher_features=self.params.teacher_layers)

    def paired_shapes(self, ctx: SetupContext) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(student shape, teacher shape) of each layer pair, checked to be comparable (for sizing modules)."""
        p = self.params
        s_shapes = ctx.feature_shapes("student", p.student_layers)
        t_shapes = ctx.feature_shapes("teacher", p.teacher_layers)
        for s, t in zip(p.student_layers, p.teacher_layers, strict=True):
            check_pair(s_shapes[s], t_shapes[t], (s, t))
        return [(s_shapes[s], t_shapes[t]) for s, t in zip(p.student_layers, p.teacher_layers, strict=True)]

    def pairs(self, student: Outputs, teacher: Outputs) -> list[tuple[Tensor, Tensor]]:
        p = self.params
        return [
            (full_precision(student.features[s]), full_precision(teacher.features[t]))
            for s, t in zip(p.student_layers, p.teacher_layers, strict=True)
        ]

    def logit_terms(self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs) -> dict[str, Tensor]:
        p, terms = self.params, {}
        if p.alpha > 0:
            terms["ce"] = p.alpha * cross_entropy(student.logits, batch["y"])
        if p.beta > 0:
            terms["kd"] = p.beta * kd_loss(student.logits, teacher.logits, p.temperature)
        return terms
