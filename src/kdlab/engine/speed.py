"""Speed switches for the teacher's forward pass and the student's step; each one opt-in and measured
(``benchmarks/results/peers.md``).

- channels-last memory layout (teacher and/or student): the same arithmetic (equal to float rounding) in the
  layout GPUs' tensor cores and some CPU kernels prefer; slower for the small CNNs of the peer benchmark on
  a 2-core CPU, so measure before keeping it. No effect on models without 4-D weights.
- teacher in bfloat16 (autocast): ~2-4x faster convolutions on CPUs with AVX512-BF16/AMX and on GPUs;
  the teacher's logits lose precision (8 mantissa bits), the student's arithmetic does not change.
- ``torch.compile``: fuses kernels; pays back its compile time (tens of seconds on a small CPU) only over
  long runs. Needs a C++ compiler on CPU.
- int8 teacher (``quantize="int8_dynamic"``, torchao via ``kdlab.models.int8``): the teacher's ``nn.Linear``
  layers with int8 weights and int8 activations per row; convolutions stay float.

A switch that changes the arithmetic can change the targets a student learns from, so a distillation checks the
fast teacher against the exact one before training (``faithfulness``/``guarded_fast_teacher``): top-1 agreement
and the KD loss between them on held-out rows, refused below ``teacher.min_agreement``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.losses import kd_loss


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
    teacher: nn.Module,
    *,
    channels_last: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    quantize: str = "none",
) -> nn.Module:
    """The teacher, frozen, with the chosen switches; unchanged when none is on (int8: a quantized copy)."""
    teacher = teacher.eval().requires_grad_(False)
    if quantize != "none":
        from kdlab.models.int8 import ptq_int8

        device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
        teacher = ptq_int8(teacher, scheme=quantize).to(device).requires_grad_(False)  # type: ignore[arg-type]
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


def switches_on(*, channels_last: bool, precision: str, compile: bool, quantize: str) -> list[str]:
    """The names of the teacher speed switches that are on (empty: the exact teacher)."""
    on = [("channels_last", channels_last), (f"precision={precision}", precision != "fp32")]
    on += [("compile", compile), (f"quantize={quantize}", quantize != "none")]
    return [name for name, active in on if active]


def faithfulness(exact: Tensor, fast: Tensor, temperature: float) -> dict[str, float]:
    """How far a fast teacher's logits are from the exact teacher's on the same rows: top-1 agreement, and the KD
    loss (T²·KL(exact ‖ fast), batchmean, at the method's temperature) a student would pay for learning the fast
    teacher's targets perfectly instead of the exact ones — 0 when they are equal."""
    exact, fast = exact.float().cpu(), fast.float().cpu()
    return {
        "rows": len(exact),
        "agreement": float((exact.argmax(-1) == fast.argmax(-1)).float().mean()) if len(exact) else float("nan"),
        "kd_loss_gap": float(kd_loss(fast, exact, temperature=temperature).detach()) if len(exact) else float("nan"),
        "temperature": temperature,
    }


def check_faithful(report: dict[str, Any], min_agreement: float) -> dict[str, Any]:
    """``report`` (from ``faithfulness``) with its status; ``ConfigError`` when agreement is below the threshold."""
    if report["rows"] and report["agreement"] < min_agreement:
        raise ConfigError(
            f"the fast teacher ({', '.join(report['switches'])}) agrees with the exact fp32 teacher on "
            f"{report['agreement']:.2%} of {report['rows']} {report['split']} rows (KD loss between them "
            f"{report['kd_loss_gap']:.3g} at T={report['temperature']:g}), below teacher.min_agreement="
            f"{min_agreement:g}: turn the switch off or lower the threshold"
        )
    return {**report, "min_agreement": min_agreement, "status": "ok"}
