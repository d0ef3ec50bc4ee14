"""Token-level distillation fused with the output layer: the (tokens × vocabulary) logits never exist at once.

``fused_linear_distill`` takes the student's last hidden states and its head weight (and the teacher as
hidden states + head weight, as dense logits, or as a ``SparseTeacher``) and works through the tokens in
chunks. Per chunk it forms the logits, computes the loss and its gradient with respect to those logits
analytically in float32, and turns that gradient at once into the gradients of the hidden states and of
the head weight. Backward only scales the stored gradients. Peak memory is a few (chunk × vocabulary)
buffers plus one float32 copy of the head weight's gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._common import as_epsilon, check_temperature
from ._token_rows import LOSSES, NEG_LOGIT, divergence_rows
from .sparse_teacher import (
    SparseTeacher,
    spread_bucket_grad,
    student_buckets,
    tail_sample_terms,
    tail_samples_serve,
    teacher_bucket_logits,
)

TeacherInput = tuple[Tensor, Tensor] | Tensor | SparseTeacher
# default chunk, logits per (chunk × V) buffer: ~16 MB of float32 on CPU (cache-friendly, small peak),
# ~128 MB on GPU (fewer, larger matrix products)
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}


@dataclass
class _Spec:
    """Everything the autograd function needs besides the two differentiable inputs (all rows flattened)."""

    loss: str
    teacher: TeacherInput
    rows: Tensor | None  # indices of the rows that count; None = all
    labels: Tensor | None
    epsilon: Tensor | None
    temperature: float
    ce_weight: float
    denominator: float
    chunk_size: int
    jsd_beta: float
    compute_dtype: torch.dtype
    grad_enabled: bool  # grad mode of the caller (inside Function.forward it is always off)


def fused_linear_distill(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    teacher: TeacherInput,
    *,
    loss: str = "kd",
    epsilon: Tensor | list[float] | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    ce_weight: float = 0.0,
    num_items: int | float | Tensor | None = None,
    jsd_beta: float = 0.5,
) -> Tensor:
    """Distillation loss of an LM head, computed chunk by chunk; returns a float32 (float64) scalar.

    ``student_hidden`` (..., H) and ``student_head_weight`` (V, H) give the student logits h·Wᵀ;
    ``teacher`` is ``(teacher_hidden (..., H_t), teacher_head_weight (V, H_t))``, dense logits (..., V)
    or a ``SparseTeacher`` (see its module for the k + 1 bucket definition). The teacher gets no gradient.
    Per token, with p = softmax(s/T), q = softmax(t/T):

    * ``"kd"``: T² · KL(q ‖ p);  ``"ptloss"``: T² · [KL(q ‖ p) + Σ_k q_k Σ_m ε_{k,m} (1 − p_k)^m] (``epsilon``
      (M,) or (V, M); shared (M,) only with a sparse teacher);
    * ``"reverse_kl"``: T² · KL(p ‖ q);  ``"jsd"``: T² · [β KL(q ‖ m) + (1 − β) KL(p ‖ m)], m = β q + (1 − β) p,
      β = ``jsd_beta`` in (0, 1);
    * plus ``ce_weight`` · cross-entropy of the untempered student logits on ``labels``.

    Tokens count when ``mask`` (bool, leading shape) is True and ``labels`` (leading shape, aligned with the
    hidden states, i.e. already shifted) is not ``ignore_index``. The sum over counted tokens is divided by
    their number, or by ``num_items`` when given: pass the number of target tokens of the whole
    accumulated batch (all micro-batches, all processes) to make gradient accumulation exact. Under DDP,
    which averages gradients over processes, also multiply the loss by the world size.
    ``chunk_size`` rows per chunk (default 2²² / V on CPU, 2²⁵ / V on GPU); it does not change the result beyond
    rounding.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    temperature = check_temperature(temperature)
    hidden, weight = _check_student(student_hidden, student_head_weight)
    lead = student_hidden.shape[:-1]
    vocab = weight.shape[0]
    teacher = _check_teacher(teacher, lead, vocab)
    _check_device(teacher, hidden.device)
    cdtype = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    keep = _check_mask(mask, lead)
    flat_labels = None
    if labels is not None:
        flat_labels = _check_labels(labels, lead, vocab, ignore_index)
        not_ignored = flat_labels != ignore_index
        keep = not_ignored if keep is None else keep & not_ignored
    ce_weight = _check_number("ce_weight", ce_weight, minimum=0.0)
    if ce_weight > 0 and labels is None:
        raise ValueError("ce_weight > 0 needs labels (the target token ids)")
    eps = None
    if loss == "ptloss":
        if epsilon is None:
            raise ValueError("loss='ptloss' needs epsilon of shape (M,) or (V, M)")
        eps = as_epsilon(epsilon, vocab, device=hidden.device, dtype=cdtype)
        if eps.dim() == 2 and isinstance(teacher, SparseTeacher):
            raise ValueError("a per-class epsilon (V, M) is not defined on a sparse teacher's buckets; use shape (M,)")
    elif epsilon is not None:
        raise ValueError(f"epsilon is only used by loss='ptloss', not by loss={loss!r}")
    sampled_tail = isinstance(teacher, SparseTeacher) and teacher.has_tail_samples
    if sampled_tail and not tail_samples_serve(loss, temperature):
        raise ValueError(
            "a sparse teacher's tail samples are draws at temperature 1 for the expectations of 'kd' and "
            f"'ptloss': use one of them at temperature 1, or drop the samples (got loss={loss!r}, "
            f"temperature={temperature}); SparseTeacher.without_tail_samples() gives the rest-bucket loss"
        )
    if loss == "jsd" and not 0.0 < _check_number("jsd_beta", jsd_beta) < 1.0:
        raise ValueError(f"jsd_beta must be in (0, 1) (use 'kd' or 'reverse_kl' for the ends), got {jsd_beta!r}")
    rows = None if keep is None else keep.nonzero().squeeze(1)
    count = hidden.shape[0] if rows is None else rows.numel()
    if num_items is None:
        denominator = float(max(count, 1))
    else:
        denominator = _check_number("num_items", num_items, minimum=0.0)
        if denominator == 0:
            raise ValueError("num_items must be positive (the number of target tokens)")
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS.get(hidden.device.type, 1 << 23) // vocab)
    elif not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    spec = _Spec(
        loss=loss,
        teacher=teacher,
        rows=rows,
        labels=flat_labels,
        epsilon=eps,
        temperature=temperature,
        ce_weight=ce_weight,
        denominator=denominator,
        chunk_size=chunk_size,
        jsd_beta=float(jsd_beta),
        compute_dtype=cdtype,
        grad_enabled=torch.is_grad_enabled(),
    )
    return _FusedLinearDistill.apply(hidden, weight, spec)


class _FusedLinearDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, spec: _Spec) -> Tensor:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            need_h, need_w = (spec.grad_enabled and need for need in ctx.needs_input_grad[:2])
            value, grad_h, grad_w = _run(hidden, weight, spec, need_h, need_w)
        ctx.save_for_backward(grad_h, grad_w)
        return value

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        scale = None if bool(grad_out == 1) else grad_out
        out = []
        for grad in (grad_h, grad_w):
            if grad is not None and scale is not None:
                grad = grad * scale.to(grad.dtype)
            out.append(grad)
        return out[0], out[1], None


def _run(hidden: Tensor, weight: Tensor, spec: _Spec, need_h: bool, need_w: bool):
    """The chunk loop: loss value, d loss / d hidden (input dtype), d loss / d weight (input dtype)."""
    cdtype, inv_t, temp = spec.compute_dtype, 1.0 / spec.temperature, spec.temperature
    need_grad = need_h or need_w
    grad_h = torch.zeros_like(hidden) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=cdtype, device=weight.device) if need_w else None
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    num_rows = hidden.shape[0] if spec.rows is None else spec.rows.numel()
    kd_scale = temp / spec.denominator  # d/ds = (1/T) · T² · d/dz, divided by the token count
    ce_scale = spec.ce_weight / spec.denominator
    for start in range(0, num_rows, spec.chunk_size):
        stop = min(start + spec.chunk_size, num_rows)
        idx = slice(start, stop) if spec.rows is None else spec.rows[start:stop]
        h = hidden[idx]
        logits = (h @ weight.t()).to(cdtype)
        z = logits if inv_t == 1.0 else logits * inv_t
        value, grad = _divergence_chunk(spec, idx, z, need_grad)
        total += value.sum(dtype=torch.float64) * temp**2
        if spec.ce_weight > 0:
            ce_value, ce_grad = _cross_entropy_chunk(logits, spec.labels[idx], need_grad)
            total += ce_value.sum(dtype=torch.float64) * spec.ce_weight
        if not need_grad:
            continue
        grad = grad.mul_(kd_scale)
        if spec.ce_weight > 0:
            grad.add_(ce_grad, alpha=ce_scale)
        if need_h:
            grad_h[idx] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
        if need_w:
            if h.dtype == cdtype:
                grad_w.addmm_(grad.t(), h)
            else:  # half-precision product, float32 accumulation across chunks
                grad_w += grad.to(h.dtype).t() @ h
    value = (total / spec.denominator).to(cdtype)
    return value, grad_h, None if grad_w is None else grad_w.to(weight.dtype)


def _divergence_chunk(spec: _Spec, idx, z: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Per-row loss (without T²) and its gradient w.r.t. the tempered student logits z of this chunk."""
    cdtype, inv_t, teacher = spec.compute_dtype, 1.0 / spec.temperature, spec.teacher
    if isinstance(teacher, SparseTeacher):
        indices = teacher.indices[idx].long()
        log_rest = teacher.log_rest[idx].to(cdtype)
        zt = teacher_bucket_logits(teacher.values[idx].to(cdtype), log_rest, inv_t)
        zs, z_rest, lse_rest = student_buckets(z, indices)
        # an empty rest bucket (k = V) has log-probability -inf on both sides: a large finite stand-in keeps 0·log 0 = 0
        zs, zt = zs.clamp(min=NEG_LOGIT), zt.clamp(min=NEG_LOGIT)
        if not teacher.has_tail_samples:
            value, grad = divergence_rows(spec.loss, zs, zt, spec.epsilon, spec.jsd_beta, need_grad)
            return value, None if grad is None else spread_bucket_grad(grad, indices, z_rest, lse_rest)
        eps = spec.epsilon  # PTLoss: the top k keep their perturbation, the rest bucket's comes from the samples
        if eps is not None:
            eps = torch.cat([eps.unsqueeze(0).expand(indices.shape[1], -1), eps.new_zeros(1, eps.shape[-1])])
        value, grad = divergence_rows(spec.loss, zs, zt, eps, spec.jsd_beta, need_grad)
        samples = teacher.tail_samples[idx].long()
        entropy = teacher.tail_entropy[idx].to(cdtype)
        tail_value, r, weight, p_coef = tail_sample_terms(z, log_rest, samples, entropy, lse_rest, spec.epsilon)
        if grad is None:
            return value + tail_value, None
        grad[:, -1] += r  # the tail classes' r · p̃ rides on the rest bucket's share
        grad = spread_bucket_grad(grad, indices, z_rest, lse_rest).scatter_add_(-1, samples, -weight)
        if p_coef is not None:
            grad.sub_(torch.softmax(z, dim=-1).mul_(p_coef))
        return value + tail_value, grad
    if isinstance(teacher, Tensor):
        t = teacher[idx].to(cdtype)
    else:
        t_hidden, t_weight = teacher
        t = (t_hidden[idx] @ t_weight.t()).to(cdtype)
    zt = t if inv_t == 1.0 else t * inv_t  # never in place: t may be the caller's tensor
    return divergence_rows(spec.loss, z, zt, spec.epsilon, spec.jsd_beta, need_grad)


def _cross_entropy_chunk(logits: Tensor, labels: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    target = labels.unsqueeze(-1)
    value = (lse - logits.gather(-1, target)).squeeze(-1)
    if not need_grad:
        return value, None
    grad = (logits - lse).exp_()
    return value, grad.scatter_add_(-1, target, torch.full_like(target, -1.0, dtype=grad.dtype))


# ---- input checks: one ValueError that says what was expected ----


def _check_tensor(name: str, x: object, shape_hint: str, floating: bool = True) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape_hint}, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _check_student(hidden: object, weight: object) -> tuple[Tensor, Tensor]:
    h = _check_tensor("student_hidden", hidden, "(..., H)")
    w = _check_tensor("student_head_weight", weight, "(V, H)")
    if h.dim() < 1 or w.dim() != 2:
        raise ValueError(
            f"student_hidden must be (..., H) and student_head_weight (V, H), got {tuple(h.shape)} and {tuple(w.shape)}"
        )
    if h.shape[-1] != w.shape[1]:
        raise ValueError(
            f"student_hidden has {h.shape[-1]} features but student_head_weight {tuple(w.shape)} expects {w.shape[1]}"
        )
    if h.device != w.device:
        raise ValueError(f"student_hidden is on {h.device} but student_head_weight on {w.device}")
    return h.reshape(-1, h.shape[-1]), w


def _check_teacher(teacher: object, lead: torch.Size, vocab: int) -> TeacherInput:
    """Flattened teacher rows; a different vocabulary or token count is one clear error."""
    if isinstance(teacher, SparseTeacher):
        if teacher.lead_shape != lead:
            raise ValueError(
                f"sparse teacher has token shape {tuple(teacher.lead_shape)} but student_hidden has {tuple(lead)}"
            )
        teacher.check_vocab(vocab)
        return teacher.flat()
    if isinstance(teacher, tuple | list) and len(teacher) == 2:
        t_hidden = _check_tensor("teacher hidden states", teacher[0], "(..., H_t)")
        t_weight = _check_tensor("teacher head weight", teacher[1], "(V, H_t)")
        if t_weight.dim() != 2 or t_hidden.shape[-1] != t_weight.shape[1]:
            raise ValueError(
                f"teacher hidden states {tuple(t_hidden.shape)} and head weight {tuple(t_weight.shape)} do not "
                "fit: expected (..., H_t) and (V, H_t)"
            )
        if t_weight.shape[0] != vocab:
            raise ValueError(
                f"vocabulary mismatch: the teacher head has {t_weight.shape[0]} rows, the student head {vocab}; "
                "teacher and student must share a tokenizer"
            )
        if t_hidden.shape[:-1] != lead:
            raise ValueError(
                f"teacher hidden states have token shape {tuple(t_hidden.shape[:-1])}, student {tuple(lead)}"
            )
        return t_hidden.detach().reshape(-1, t_hidden.shape[-1]), t_weight.detach()
    if isinstance(teacher, Tensor):
        t = _check_tensor("teacher logits", teacher, "(..., V)")
        if t.shape[-1:] != (vocab,):
            raise ValueError(
                f"vocabulary mismatch: teacher logits have {t.shape[-1] if t.dim() else 0} classes, the student head "
                f"{vocab}; teacher and student must share a tokenizer"
            )
        if t.shape[:-1] != lead:
            raise ValueError(f"teacher logits have token shape {tuple(t.shape[:-1])}, student {tuple(lead)}")
        return t.detach().reshape(-1, vocab)
    raise ValueError(
        "teacher must be (teacher_hidden, teacher_head_weight), dense teacher logits or a SparseTeacher, "
        f"got {type(teacher).__name__}"
    )


def _check_device(teacher: TeacherInput, device: torch.device) -> None:
    tensors = teacher if isinstance(teacher, tuple) else (teacher,)
    if isinstance(teacher, SparseTeacher):
        tensors = teacher.tensors()
    for t in tensors:
        if t.device != device:
            raise ValueError(f"the teacher is on {t.device} but student_hidden on {device}: move it first")


def _check_mask(mask: object, lead: torch.Size) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != lead:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of the token shape {tuple(lead)}, got {got}")
    return mask.reshape(-1)


def _check_labels(labels: object, lead: torch.Size, vocab: int, ignore_index: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex() or labels.shape != lead:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of the token shape {tuple(lead)}, got {got}")
    flat = labels.reshape(-1).long()
    valid = flat[flat != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab):
        raise ValueError(
            f"labels must be in [0, {vocab - 1}] or ignore_index={ignore_index}, "
            f"got values from {int(valid.min())} to {int(valid.max())}"
        )
    return flat


def _check_number(name: str, value: object, minimum: float | None = None) -> float:
    try:
        number = float(value.item() if isinstance(value, Tensor) else value)  # type: ignore[union-attr]
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number, got {value!r:.60}") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r:.60}")
    return number
