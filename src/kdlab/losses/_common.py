"""Input checks and reductions shared by every loss.

Every loss works on *rows*: all leading dimensions of a ``(N, C)`` or ``(N, ..., C)`` logits tensor are
flattened into rows and the last dimension holds the classes. Checks raise one ``ValueError`` that says
what was expected and what was given, so a user sees the mistake instead of a broadcasting accident.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

REDUCTIONS = ("batchmean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        hint = " ('mean' would also average over classes: kdlab's 'batchmean' is what KD needs)"
        raise ValueError(
            f"reduction must be one of {REDUCTIONS}, got {reduction!r}" + (hint if reduction == "mean" else "")
        )


def check_temperature(temperature: float) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return value


def check_logits(name: str, logits: object) -> Tensor:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, C) or (N, ..., C), got {type(logits).__name__}")
    if logits.dim() < 2:
        raise ValueError(f"{name} must have shape (N, C) or (N, ..., C), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.shape[-1] < 1:
        raise ValueError(f"{name} has no classes (last dimension is 0)")
    return logits


def check_pair(student_logits: object, teacher_logits: object) -> tuple[Tensor, Tensor]:
    s = check_logits("student_logits", student_logits)
    t = check_logits("teacher_logits", teacher_logits)
    if s.shape != t.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got {tuple(s.shape)} and "
            f"{tuple(t.shape)}" + (" (different class counts)" if s.shape[-1] != t.shape[-1] else "")
        )
    return s, t


def check_mask(mask: Tensor | None, lead_shape: torch.Size) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(lead_shape)}, got {mask!r:.60}")
    if mask.shape != lead_shape:
        raise ValueError(
            f"mask must have shape {tuple(lead_shape)} (the logits without the class dim), got {tuple(mask.shape)}"
        )
    return mask


def check_target(target: object, lead_shape: torch.Size, num_classes: int, ignore_index: int | None = None) -> Tensor:
    if not isinstance(target, Tensor) or target.dtype not in (
        torch.int64,
        torch.int32,
        torch.int16,
        torch.uint8,
    ):
        raise ValueError(f"target must be an integer tensor of shape {tuple(lead_shape)}, got {target!r:.60}")
    if target.shape != lead_shape:
        raise ValueError(f"target must have shape {tuple(lead_shape)}, got {tuple(target.shape)}")
    valid = target if ignore_index is None else target[target != ignore_index]
    if valid.numel() and (bool((valid < 0).any()) or bool((valid >= num_classes).any())):
        raise ValueError(
            f"target values must be in [0, {num_classes - 1}], got values from {int(valid.min())} to {int(valid.max())}"
        )
    return target.long()


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 when any input is float64."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def as_epsilon(epsilon: object, num_classes: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalise PTLoss coefficients to a ``(M,)`` (shared) or ``(C, M)`` (per-class) tensor."""
    if isinstance(epsilon, Tensor):
        eps = epsilon
    elif isinstance(epsilon, (Sequence, int, float)) and not isinstance(epsilon, str):
        try:
            eps = torch.as_tensor(epsilon, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"epsilon must be numbers of shape (M,) or (C, M), got {epsilon!r:.80}: {err}") from None
    else:
        raise ValueError(f"epsilon must be a tensor or a list of shape (M,) or (C, M), got {type(epsilon).__name__}")
    if eps.dim() == 0:
        eps = eps.reshape(1)
    if not eps.is_floating_point():
        eps = eps.to(torch.float64)
    if eps.dim() not in (1, 2) or eps.shape[-1] < 1 or (eps.dim() == 2 and eps.shape[0] != num_classes):
        raise ValueError(
            f"epsilon must have shape (M,) or (C, M) with C={num_classes} classes and M>=1, got {tuple(eps.shape)}"
        )
    if not bool(torch.isfinite(eps).all()):
        raise ValueError("epsilon contains NaN or inf")
    return eps.to(device=device, dtype=dtype)


def select_rows(
    student: Tensor, teacher: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Flatten leading dims into rows; keep only the rows that ``mask`` marks (their indices are returned)."""
    num_classes = student.shape[-1]
    s = student.reshape(-1, num_classes)
    t = None if teacher is None else teacher.reshape(-1, num_classes)
    if mask is None:
        return s, t, None
    index = mask.reshape(-1).nonzero().squeeze(1)
    return s.index_select(0, index), None if t is None else t.index_select(0, index), index


def reduce_rows(values: Tensor, reduction: str, lead_shape: torch.Size, index: Tensor | None, num_rows: int) -> Tensor:
    """Apply ``reduction`` to per-row values (of the selected rows, when ``index`` is given)."""
    if reduction == "sum":
        return values.sum()
    if reduction == "batchmean":
        return values.sum() / max(values.shape[0], 1)
    if index is not None:
        values = values.new_zeros(num_rows).index_copy(0, index, values)
    return values.reshape(lead_shape)


def raise_if_nonfinite(result: Tensor, **inputs: Tensor | None) -> None:
    """Name the input that made a loss NaN (cheap: only looks at the inputs when the result is bad)."""
    if torch.compiler.is_compiling() or not bool(torch.isnan(result).any()):
        return
    for name, tensor in inputs.items():
        if tensor is None:
            continue
        if bool(torch.isnan(tensor).any()):
            raise ValueError(f"{name} contains NaN")
    for name, tensor in inputs.items():
        if tensor is not None and bool(torch.isinf(tensor).any()):
            raise ValueError(f"{name} contains inf: logits must be finite (teacher logits may be -inf)")
    raise ValueError("loss is NaN although the inputs are finite: please report this with the inputs")


def pairwise_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    reduction: str,
    mask: Tensor | None,
    rows_fn,
) -> Tensor:
    """Check a (student, teacher) pair, apply ``rows_fn(s_rows, t_rows, dtype)`` and reduce.

    ``rows_fn`` gets (R, C) logits of the unmasked rows and returns their (R,) loss values.
    """
    s, t = check_pair(student_logits, teacher_logits)
    check_reduction(reduction)
    lead_shape = s.shape[:-1]
    mask = check_mask(mask, lead_shape)
    s_rows, t_rows, index = select_rows(s, t, mask)
    values = rows_fn(s_rows, t_rows, compute_dtype(s, t))
    out = reduce_rows(values, reduction, lead_shape, index, lead_shape.numel())
    raise_if_nonfinite(out, student_logits=s, teacher_logits=t)
    return out
