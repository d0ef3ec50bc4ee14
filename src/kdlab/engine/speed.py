"""Speed switches for the teacher's forward pass and the student's step; each one opt-in and measured
(``benchmarks/results/peers.md``).

- channels-last memory layout (teacher and/or student): the same arithmetic (equal to float rounding) in the
  layout GPUs' tensor cores and some CPU kernels prefer; slower for the small CNNs of the peer benchmark on
  a 2-core CPU, so measure before keeping it. No effect on models without 4-D weights.
- teacher in bfloat16 (autocast): ~2-4x faster convolutions on CPUs with AVX512-BF16/AMX and on GPUs;
  the teacher's logits lose precision (8 mantissa bits), the student's arithmetic does not change.
- ``torch.compile``: fuses kernels; pays back its compile time (tens of seconds on a small CPU) only over
  long runs. Needs a C++ compiler on CPU.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn


def _channels_last(model: nn.Module) -> nn.Module:
    """4-D parameters and buffers in channels-last layout (in place); inputs may stay NCHW."""
    return model.to(memory_format=torch.channels_last)


class FastTeacher(nn.Module):
    """A frozen teacher behind the speed switches; returns float32 logits like the plain teacher."""

    def __init__(self, teacher: nn.Module, *, precision: str = "fp32", compile: bool = False) -> None:
        super().__init__()
        self.teacher = teacher
        self.precision = precision
        self._forward = torch.compile(teacher) if compile else teacher

    def forward(self, x: Tensor) -> Tensor:
        context = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with context:
            return self._forward(x).float()


def fast_teacher(
    teacher: nn.Module, *, channels_last: bool = False, precision: str = "fp32", compile: bool = False
) -> nn.Module:
    """The teacher, frozen, with the chosen switches; unchanged when none is on."""
    teacher = teacher.eval().requires_grad_(False)
    if channels_last:
        teacher = _channels_last(teacher)
    if precision == "fp32" and not compile:
        return teacher
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"teacher precision must be 'fp32' or 'bf16', got {precision!r}")
    return FastTeacher(teacher, precision=precision, compile=compile).eval()


def fast_student(student: nn.Module, *, channels_last: bool = False) -> nn.Module:
    """The student in channels-last layout (in place: the optimizer keeps the same Parameter objects)."""
    return _channels_last(student) if channels_last else student
