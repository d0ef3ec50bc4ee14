"""The shared kernel of ``kd_loss`` and ``ptloss``: per-row values with an analytic gradient.

Per row, with p = softmax(s/T), q = softmax(t/T), u = 1 - p and the perturbation polynomial
P(u) = sum_m eps_m u^m = u * R(u) (R has the coefficients eps_1..eps_M) and D(u) = P'(u):

    value = KL(q || p) + sum_k q_k P_k(u_k)
    d value / d z = p - q + p * (g - <p, g>),  g = -q * D(u),   z = s / T

(the first part is the KD gradient, the second the perturbation's, pushed through the softmax).
The forward pass computes the gradient at once and saves only that one (rows, C) tensor, so
backward is a single multiply. Three implementations of the same maths:

* ``functional_rows``: plain tensor code. Differentiated by autograd it is the reference, used when
  the teacher logits or epsilon need a gradient; ``torch.compile`` of it is the fast path for
  large inputs (one fused loop instead of ~20 passes over memory).
* ``_eager_rows``: in-place, chunked over rows so the working set stays in cache; the fallback.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from typing import Any, Literal

import torch
from torch import Tensor

Backend = Literal["auto", "eager", "compile"]
_BACKENDS = ("auto", "eager", "compile")
AUTO_COMPILE_MIN_ELEMENTS = 1 << 20  # below this the compiled kernel's call overhead is not worth it
_CHUNK_ELEMENTS = 1 << 17  # eager chunks of 512 KB in float32: ~5 % faster than 2 MB on this CPU (L2-sized)

_state: dict[str, Any] = {"backend": os.environ.get("KDLAB_LOSS_BACKEND", "auto"), "compiled": {}}
_lock = threading.Lock()


def set_backend(backend: Backend) -> None:
    """Choose how kd_loss/ptloss run: 'eager', 'compile' (torch.compile), or 'auto' (compile large inputs)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    _state["backend"] = backend


def get_backend() -> str:
    return str(_state["backend"])


def horner_coefficients(epsilon: Tensor) -> tuple[Tensor, Tensor]:
    """(M, 1) or (M, C) coefficients of R(u) and D(u) = P'(u), lowest power first."""
    eps = epsilon.unsqueeze(-1) if epsilon.dim() == 1 else epsilon.t()  # (M, 1) or (M, C)
    powers = torch.arange(1, eps.shape[0] + 1, dtype=eps.dtype, device=eps.device).unsqueeze(-1)
    return eps, eps * powers


def _horner(u: Tensor, coef: Tensor) -> Tensor:
    acc = coef[-1].expand_as(u)
    for j in range(coef.shape[0] - 2, -1, -1):
        acc = acc * u + coef[j]
    return acc


def _softmax_parts(logits: Tensor, inv_t: Tensor) -> tuple[Tensor, Tensor]:
    """(probabilities, log-probabilities) of logits * inv_t with one exp per element.

    -inf logits are clamped to the most negative float: probability 0, finite log-probability, so
    0 * log-ratio stays 0 (a masked teacher vocabulary entry is allowed).
    """
    z = (logits * inv_t).clamp(min=torch.finfo(logits.dtype).min)
    shifted = z - z.amax(dim=-1, keepdim=True)
    exp = shifted.exp()
    total = exp.sum(dim=-1, keepdim=True)
    return exp / total, shifted - total.log()


def functional_rows(
    s: Tensor, t: Tensor, inv_t: Tensor, r_coef: Tensor | None, d_coef: Tensor | None, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-row value (without T^2) and, if asked, d value / d (s/T). Reference and compile target."""
    p, log_p = _softmax_parts(s, inv_t)
    q, log_q = _softmax_parts(t, inv_t)
    terms = q * (log_q - log_p)
    if r_coef is not None:
        u = 1 - p
        terms = terms + q * u * _horner(u, r_coef)
    value = terms.sum(dim=-1)
    if not need_grad:
        return value, None
    if d_coef is None:
        return value, p - q
    h = q * _horner(1 - p, d_coef)
    c = (p * h).sum(dim=-1, keepdim=True)
    return value, p * (1 + c - h) - q


def _eager_horner(u: Tensor, coef: list[Tensor], out: Tensor | None = None) -> Tensor:
    """R(u) by Horner's rule, one fused multiply-add (``addcmul``) pass per degree, into ``out`` if given.

    ``coef`` are 0-dim (shared) or (C,) (per class) tensors, lowest power first, at least two of them. The first
    step is a multiply and an add: ``addcmul`` with a 0-dim factor takes a slow, unvectorised path (4x here).
    """
    acc = torch.mul(u, coef[-1], out=out) if out is not None else torch.mul(u, coef[-1])
    acc.add_(coef[-2])
    for c in reversed(coef[:-2]):
        torch.addcmul(c, acc, u, out=acc)
    return acc


def _eager_rows(
    s: Tensor, t: Tensor, inv_t: float, r_coef: list | None, d_coef: list | None, grad_out: Tensor | None
) -> Tensor:
    """One chunk of rows, small enough to stay in cache: every pass after the first reads cached memory, so the
    cost is the number of passes; the perturbation adds 2(M-1) Horner passes and six others to KD's ten or so."""
    ls = torch.log_softmax(s * inv_t, dim=-1)
    lt = torch.log_softmax(t * inv_t, dim=-1)
    q = lt.exp()
    diff = lt.sub_(ls)
    p = ls.exp_()
    u = poly = None
    if r_coef is not None:
        u = torch.rsub(p, 1)
        if len(r_coef) == 1:  # M = 1: R is the constant eps_1 (u is not needed after this)
            diff.add_(u.mul_(r_coef[0]))
        else:
            poly = _eager_horner(u, r_coef)
            diff.addcmul_(poly, u)
    value = torch.linalg.vecdot(q, diff)
    if bool(torch.isnan(value).any()):  # rare: teacher logits of -inf give 0 * -inf; count them as 0
        value = torch.linalg.vecdot(q, diff.masked_fill_(diff.isneginf(), 0.0))
    if grad_out is None:
        return value
    if d_coef is None:
        torch.sub(p, q, out=grad_out)
        return value
    # h = q * D(u), c = 1 + <p, h>; grad = p * (c - h) - q
    h = torch.mul(q, d_coef[0], out=u) if poly is None else _eager_horner(u, d_coef, out=poly).mul_(q)
    c = torch.linalg.vecdot(p, h).add_(1).unsqueeze(-1)
    torch.sub(c, h, out=h)
    torch.mul(p, h, out=grad_out).sub_(q)
    return value


def _eager_all(s: Tensor, t: Tensor, temperature: float, epsilon: Tensor | None, need_grad: bool):
    num_rows, num_classes = s.shape
    if epsilon is None:
        r_list = d_list = None
    else:  # each coefficient a 0-dim (shared) or (C,) (per class) tensor, as addcmul takes them
        r_coef, d_coef = horner_coefficients(epsilon.to(s.dtype))
        shared = r_coef.shape[1] == 1
        r_list = list((r_coef.squeeze(1) if shared else r_coef).unbind(0))
        d_list = list((d_coef.squeeze(1) if shared else d_coef).unbind(0))
    grad = torch.empty_like(s) if need_grad else None
    step = max(1, _CHUNK_ELEMENTS // max(num_classes, 1))
    values = [
        _eager_rows(
            s[i : i + step],
            t[i : i + step],
            1.0 / temperature,
            r_list,
            d_list,
            None if grad is None else grad[i : i + step],
        )
        for i in range(0, num_rows, step)
    ]
    return (torch.cat(values) if values else s.new_zeros(0)), grad


# Inductor's C++ backend stores an elementwise result in memory once it has more than ~30 operations or is read
# more than 4 times; the perturbation's Horner polynomials cross both, and the stored (rows, C) buffers made the
# compiled PTLoss 1.9-2.8x the compiled KD on this CPU. Recomputed in registers instead, both kernels have the same
# loops and memory traffic: 1.13-1.27x (benchmarks/results/loss_speed_lm.md). CPU only: GPUs keep the defaults.
_CPU_COMPILE_OPTIONS = {
    "realize_reads_threshold": 100,
    "realize_opcount_threshold": 10_000,
    "realize_acc_reads_threshold": 100,
}


def _compiled_kernel(device_type: str):
    key = "cpu" if device_type == "cpu" else "other"
    with _lock:
        compiled = _state["compiled"]
        if key not in compiled:
            # automatic dynamic shapes: the first call specialises, a new row count recompiles once
            options = _CPU_COMPILE_OPTIONS if key == "cpu" else None
            compiled[key] = torch.compile(functional_rows, options=options)
    return compiled[key]


def _use_compile(s: Tensor) -> bool:
    backend = _state["backend"]
    if backend == "eager" or _state.get("compile_failed"):
        return False
    if backend == "compile":
        return True
    return s.numel() >= AUTO_COMPILE_MIN_ELEMENTS and (s.is_cuda or shutil.which(os.environ.get("CXX", "g++")))


def _compute(s: Tensor, t: Tensor, temperature: float, epsilon: Tensor | None, need_grad: bool):
    if _use_compile(s):
        try:
            r_coef, d_coef = (None, None) if epsilon is None else horner_coefficients(epsilon)
            inv_t = torch.tensor(1.0 / temperature, dtype=s.dtype, device=s.device)
            return _compiled_kernel(s.device.type)(s, t, inv_t, r_coef, d_coef, need_grad)
        except Exception as err:  # a missing compiler must not stop training: fall back, say so once
            _state["compile_failed"] = True
            warnings.warn(f"kdlab: torch.compile of the loss kernel failed, using eager ({err!s:.200})", stacklevel=3)
    return _eager_all(s, t, temperature, epsilon, need_grad)


class _FusedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, temperature: float, epsilon: Tensor | None, dtype: torch.dtype):
        value, grad = _compute(s.to(dtype), t.to(dtype), temperature, epsilon, need_grad=ctx.needs_input_grad[0])
        ctx.temperature = temperature
        ctx.input_dtype = s.dtype
        ctx.save_for_backward(grad)
        return value * temperature**2

    @staticmethod
    def backward(ctx, grad_rows: Tensor):
        (grad,) = ctx.saved_tensors
        grad_s = grad * (grad_rows * ctx.temperature).unsqueeze(-1).to(grad.dtype)
        return grad_s.to(ctx.input_dtype), None, None, None, None


def kd_rows(s: Tensor, t: Tensor, temperature: float, epsilon: Tensor | None, dtype: torch.dtype) -> Tensor:
    """T^2 * [KL(q || p) + perturbation] per row of (R, C) logits, in ``dtype`` (float32 or float64)."""
    with torch.autocast(device_type=s.device.type, enabled=False):
        if t.requires_grad or (epsilon is not None and epsilon.requires_grad) or torch.compiler.is_compiling():
            r_coef, d_coef = (None, None) if epsilon is None else horner_coefficients(epsilon)
            inv_t = torch.tensor(1.0 / temperature, dtype=dtype, device=s.device)
            value, _ = functional_rows(s.to(dtype), t.to(dtype), inv_t, r_coef, d_coef, need_grad=False)
            return value * temperature**2
        return _FusedKD.apply(s, t, temperature, epsilon, dtype)
