"""The proxy teacher of PTLoss: what a perfect student of the perturbed loss would output.

For a teacher distribution pi and coefficients eps, the proxy teacher q minimises over the simplex

    F(q) = -sum_k pi_k log q_k + sum_k pi_k P_k(1 - q_k),   P_k(u) = sum_{m=1..M} eps_{k,m} u^m.

Writing -log q = sum_m (1-q)^m / m shows F = sum_k pi_k h_k(1 - q_k) with h_k(u) = sum_m c_{k,m} u^m,
c_{k,m} = 1/m + eps_{k,m} for m <= M and 1/m beyond. When every c_{k,m} >= 0 (the documented range),
each h_k is convex, F is a separable convex function and its minimiser is unique. Stationarity gives

    pi_k (1/q_k + P_k'(1 - q_k)) = lambda,   sum_k q_k = 1,

one scalar lambda per row. The left side decreases in q_k, so for a given lambda each q_k is a 1-D
root (solved by safeguarded Newton in v = 1/q, where the equation is nearly linear for small q), and
sum_k q_k(lambda) decreases in lambda, so lambda is a 1-D root too (safeguarded Newton with a
bracket). For M = 1 the inner root has the closed form q_k = pi_k / (lambda - eps_k pi_k).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ._common import as_epsilon
from ._fused import _horner

_INNER_MAX_ITER = 100


def _check_probs(teacher_probs: object) -> Tensor:
    if not isinstance(teacher_probs, Tensor) or not teacher_probs.is_floating_point():
        raise ValueError("teacher_probs must be a floating-point tensor of shape (N, C) or (N, ..., C)")
    if teacher_probs.dim() < 1 or teacher_probs.shape[-1] < 1:
        raise ValueError(f"teacher_probs must have shape (N, C), got {tuple(teacher_probs.shape)}")
    if not bool(torch.isfinite(teacher_probs).all()):
        raise ValueError("teacher_probs contains NaN or inf")
    if bool((teacher_probs < 0).any()):
        raise ValueError("teacher_probs must be non-negative (pass probabilities, e.g. softmax(logits / T))")
    sums = teacher_probs.double().sum(-1)
    if bool(((sums - 1).abs() > 1e-3).any()):
        raise ValueError(
            f"teacher_probs rows must sum to 1 (got sums from {sums.min().item():.4g} "
            f"to {sums.max().item():.4g}); pass probabilities, not logits"
        )
    return teacher_probs


def _check_range(eps: Tensor) -> None:
    powers = torch.arange(1, eps.shape[-1] + 1, dtype=eps.dtype, device=eps.device)
    coefficients = 1.0 / powers + eps
    bad = coefficients < -1e-12
    if bool(bad.any()):
        flat = bad.nonzero()[0].tolist()
        m = flat[-1] + 1
        value = eps[tuple(flat)].item()
        raise ValueError(
            f"epsilon out of the documented range: coefficient 1/m + eps must be >= 0, but m={m} has "
            f"eps={value:.4g} < -1/{m}; outside it the perturbed loss is not convex "
            "and has no unique proxy teacher"
        )


def _solve_inner(
    lam: Tensor,
    pi: Tensor,
    active: Tensor,
    v: Tensor,
    d_coef: Tensor,
    dd_coef: Tensor,
    bound: Tensor,
    tol: float,
) -> Tensor:
    """v = 1/q solving pi (v + P'(1 - 1/v)) = lam elementwise on the active entries (others ignored)."""
    lo = torch.ones_like(v)
    hi = lam / pi + bound + 1.0
    v = torch.minimum(torch.maximum(v, lo), hi)
    for _ in range(_INNER_MAX_ITER):
        u = 1.0 - 1.0 / v
        residual = pi * (v + _horner(u, d_coef)) - lam
        slope = pi * (1.0 + _horner(u, dd_coef) / (v * v))
        lo = torch.where(residual < 0, v, lo)
        hi = torch.where(residual >= 0, v, hi)
        step = v - residual / slope
        fallback = torch.where(hi > 4 * lo, torch.sqrt(lo * hi), 0.5 * (lo + hi))
        new_v = torch.where(torch.isfinite(step) & (step >= lo) & (step <= hi), step, fallback)
        done = bool(((new_v - v).abs() <= tol * v)[active].all())
        v = new_v
        if done:
            break
    return v


def proxy_teacher(teacher_probs: Tensor, epsilon: Tensor, max_iter: int = 100, tol: float = 1e-12) -> Tensor:
    """The (N, C) minimiser of the perturbed objective for each teacher row (float64 inside).

    ``teacher_probs``: probabilities (for a tempered teacher pass softmax(logits / T)); ``epsilon``: (M,)
    shared or (C, M) per class, each coefficient 1/m + eps_{k,m} >= 0, else ``ValueError``. ``tol`` bounds
    |sum q - 1| before the final normalisation. If ``max_iter`` outer steps do not reach it, a
    ``RuntimeWarning`` is issued and the last (normalised) iterate is returned.
    """
    probs = _check_probs(teacher_probs)
    num_classes = probs.shape[-1]
    eps = as_epsilon(epsilon, num_classes, device=probs.device, dtype=torch.float64)
    _check_range(eps)
    if bool((eps == 0).all()):
        return probs.clone()
    pi = probs.reshape(-1, num_classes).double()
    pi = pi / pi.sum(-1, keepdim=True)
    eps_mc = eps.unsqueeze(-1) if eps.dim() == 1 else eps.t()  # (M, 1) or (M, C), lowest power first
    m = torch.arange(1, eps_mc.shape[0] + 1, dtype=torch.float64, device=pi.device).unsqueeze(-1)
    d_coef = eps_mc * m  # P'(u) = sum_j d_j u^j
    dd_coef = (d_coef * torch.arange(eps_mc.shape[0], dtype=torch.float64, device=pi.device).unsqueeze(-1))[1:]
    if dd_coef.shape[0] == 0:
        dd_coef = torch.zeros_like(d_coef[:1])
    bound = d_coef.abs().sum(0)  # |P'(u)| <= bound on [0, 1]
    eps1 = eps_mc[0]
    positive = pi > 0
    psi_at_one = pi * (1.0 + eps1)  # lambda at which q_k reaches 1
    psi_at_pi = 1.0 + pi * _horner(1.0 - pi, d_coef)  # lambda at which q_k = pi_k
    big = torch.finfo(torch.float64).max
    lam_hi = torch.where(positive, psi_at_pi, -big).amax(-1, keepdim=True)
    lam_lo = torch.maximum(
        torch.where(positive, psi_at_one, -big).amax(-1, keepdim=True),
        torch.where(positive, psi_at_pi, big).amin(-1, keepdim=True),
    )
    safe_pi = torch.where(positive, pi, 1.0)
    v = 1.0 / safe_pi
    lam = 0.5 * (lam_lo + lam_hi)
    converged = False
    q = pi
    for _ in range(max_iter):
        active = positive & (lam > psi_at_one)
        if eps_mc.shape[0] == 1:
            v = (lam - eps1 * pi) / safe_pi
        else:
            v = _solve_inner(lam, safe_pi, active, v, d_coef, dd_coef, bound, tol)
        q = torch.where(active, 1.0 / v, torch.where(positive, 1.0, 0.0))
        excess = q.sum(-1, keepdim=True) - 1.0
        if bool((excess.abs() <= tol).all()):
            converged = True
            break
        u = 1.0 - q
        dq = torch.where(active, -q * q / (safe_pi * (1.0 + _horner(u, dd_coef) * q * q)), 0.0)
        slope = dq.sum(-1, keepdim=True)
        lam_lo = torch.where(excess > 0, lam, lam_lo)
        lam_hi = torch.where(excess <= 0, lam, lam_hi)
        step = lam - excess / slope
        inside = torch.isfinite(step) & (step >= lam_lo) & (step <= lam_hi)
        lam = torch.where(inside, step, 0.5 * (lam_lo + lam_hi))
        if bool(((lam_hi - lam_lo) <= 1e-15 * lam_hi.abs()).all()):
            converged = bool((excess.abs() <= 1e-9).all())
            break
    if not converged:
        warnings.warn(
            f"proxy_teacher: not converged to tol={tol} in {max_iter} steps; returning the last iterate",
            RuntimeWarning,
            stacklevel=2,
        )
    q = q / q.sum(-1, keepdim=True)
    return q.reshape(probs.shape).to(probs.dtype)
