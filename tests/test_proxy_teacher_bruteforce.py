"""Brute-force checks of kdlab.losses.proxy_teacher against an independent LBFGS minimiser.

The reference minimises, row by row, F(q) = -Σ_k π_k log q_k + Σ_k π_k Σ_m ε_{k,m} (1 - q_k)^m over the
probability simplex with torch.optim.LBFGS (float64, strong-Wolfe line search) on unconstrained logits θ,
q = softmax(θ). For M = 1 a closed form q_k = π_k / (λ - ε_k π_k), Σ q = 1, is solved by bisection.
Only the public proxy_teacher is imported, as the value under test.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
import torch
from torch import Tensor

from kdlab.losses import proxy_teacher

F64 = torch.float64
N_ROWS = 4
LBFGS_ATOL = 1e-5


def _rng(*key: object) -> np.random.Generator:
    """A numpy generator seeded from a stable hash (crc32) of the test parameters."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _dirichlet(n: int, num_classes: int, concentration: float, rng: np.random.Generator) -> Tensor:
    """n rows of Dirichlet(concentration · 1_C) in float64 (entries floored at 1e-200, renormalised)."""
    g = torch.from_numpy(rng.dirichlet(np.full(num_classes, concentration), size=n)).clamp_min(1e-200)
    return g / g.sum(dim=-1, keepdim=True)


def _epsilon(kind: str, values: str, num_classes: int, m_terms: int, rng: np.random.Generator) -> Tensor:
    """ε of shape (M,) ('shared') or (C, M) ('per_class'): uniform in [-1/m, 1/m], or at -1/m, +1/m, +3/m."""
    shape = (m_terms,) if kind == "shared" else (num_classes, m_terms)
    inv_m = 1.0 / torch.arange(1, m_terms + 1, dtype=F64)
    if values == "uniform":
        return (torch.from_numpy(rng.uniform(-1.0, 1.0, size=shape)) * inv_m).to(F64)
    factor = {"lower_edge": -1.0, "upper_edge": 1.0, "large_positive": 3.0}[values]
    return (factor * inv_m).expand(shape).clone()


def _eps2d(epsilon: Tensor, num_classes: int) -> Tensor:
    """ε as a (C, M) table (a shared (M,) ε repeated for every class)."""
    return epsilon.unsqueeze(0).expand(num_classes, -1) if epsilon.dim() == 1 else epsilon


def objective(q: Tensor, pi: Tensor, epsilon: Tensor, log_q: Tensor | None = None) -> Tensor:
    """Per-row F(q) = -Σ_k π_k log q_k + Σ_k π_k Σ_m ε_{k,m} (1 - q_k)^m (terms with π_k = 0 are 0)."""
    eps2d = _eps2d(epsilon.to(F64), q.shape[-1])
    if log_q is None:
        nll = -torch.xlogy(pi, q).sum(dim=-1)
    else:
        nll = -(torch.where(pi > 0, pi * log_q, torch.zeros_like(log_q))).sum(dim=-1)
    poly = torch.zeros_like(q)
    for m in range(1, eps2d.shape[1] + 1):
        poly = poly + eps2d[:, m - 1] * (1.0 - q) ** m
    return nll + (pi * poly).sum(dim=-1)


def lbfgs_minimiser(pi: Tensor, epsilon: Tensor) -> Tensor:
    """argmin of F over the simplex, row by row, by LBFGS (strong Wolfe) on logits θ, q = softmax(θ)."""
    rows = []
    for i in range(pi.shape[0]):
        theta = torch.zeros((1, pi.shape[1]), dtype=F64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [theta],
            lr=1.0,
            max_iter=400,
            max_eval=800,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure(
            theta: Tensor = theta,
            opt: torch.optim.LBFGS = opt,
            row: Tensor = pi[i : i + 1],
        ) -> Tensor:
            """F(softmax(θ)) for one row, with its gradient."""
            opt.zero_grad()
            log_q = theta - theta.max().detach()
            log_q = log_q - torch.log(torch.exp(log_q).sum(dim=-1, keepdim=True))
            loss = objective(torch.exp(log_q), row, epsilon, log_q=log_q).sum()
            loss.backward()
            return loss

        for _ in range(2):
            opt.step(closure)
        rows.append(torch.softmax(theta.detach(), dim=-1))
    return torch.cat(rows)


def closed_form_m1(pi: Tensor, epsilon: Tensor) -> Tensor:
    """M = 1 minimiser q_k = π_k / (λ - ε_k π_k) with λ > max_k ε_k π_k solving Σ_k q_k = 1 (bisection)."""
    eps_k = _eps2d(epsilon.to(F64), pi.shape[-1])[:, 0]
    out = torch.empty_like(pi)
    for i in range(pi.shape[0]):
        p = pi[i]
        lo = float((eps_k * p).max())

        def total(lam: float, p: Tensor = p) -> float:
            """Σ_k π_k / (λ - ε_k π_k)."""
            return float((p / (lam - eps_k * p)).sum())

        hi = max(lo, 0.0) + 1.0
        while total(hi) > 1.0:
            hi = lo + 2.0 * (hi - lo)
        for _ in range(400):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            if total(mid) > 1.0:
                lo = mid
            else:
                hi = mid
        lam = 0.5 * (lo + hi)
        out[i] = p / (lam - eps_k * p)
    return out


CASES = list(
    itertools.product(
        [1, 5],  # M
        ["shared", "per_class"],
        [0.3, 3.0],  # Dirichlet concentration
        [3, 10],  # C
        ["uniform", "lower_edge", "upper_edge", "large_positive"],
    )
)


@pytest.mark.parametrize(("m_terms", "kind", "concentration", "num_classes", "values"), CASES)
def test_proxy_matches_lbfgs(
    m_terms: int,
    kind: str,
    concentration: float,
    num_classes: int,
    values: str,
) -> None:
    """proxy_teacher equals the brute-force LBFGS minimiser (max abs diff 1e-5) and is no worse in F."""
    rng = _rng("proxy", m_terms, kind, concentration, num_classes, values)
    pi = _dirichlet(N_ROWS, num_classes, concentration, rng)
    eps = _epsilon(kind, values, num_classes, m_terms, rng)
    q = proxy_teacher(pi, eps)
    assert q.shape == pi.shape and q.dtype == F64
    assert torch.isfinite(q).all()
    assert (q >= 0).all(), f"negative entries: {q}"
    torch.testing.assert_close(q.sum(dim=-1), torch.ones(N_ROWS, dtype=F64), rtol=0, atol=1e-10)

    q_ref = lbfgs_minimiser(pi, eps)
    diff = (q - q_ref).abs().max().item()
    detail = f"pi={pi}\neps={eps}\nproxy={q}\nlbfgs={q_ref}"
    assert diff <= LBFGS_ATOL, f"max |proxy - LBFGS| = {diff:.3e}\n{detail}"

    f_proxy = objective(q, pi, eps)
    f_teacher = objective(pi, pi, eps)
    f_ref = objective(q_ref, pi, eps)
    assert (f_proxy <= f_teacher + 1e-12).all(), f"F(proxy) {f_proxy} > F(teacher) {f_teacher}"
    assert (f_proxy <= f_ref + 1e-9).all(), f"F(proxy) {f_proxy} > F(LBFGS) {f_ref}"


@pytest.mark.parametrize("values", ["uniform", "lower_edge", "upper_edge", "large_positive"])
@pytest.mark.parametrize("kind", ["shared", "per_class"])
@pytest.mark.parametrize("concentration", [0.3, 3.0])
def test_proxy_m1_closed_form(concentration: float, kind: str, values: str) -> None:
    """For M = 1 the proxy equals the closed form π_k / (λ - ε_k π_k), Σ q = 1 (1e-9), and so does LBFGS."""
    rng = _rng("closed-form", concentration, kind, values)
    pi = _dirichlet(N_ROWS, 10, concentration, rng)
    eps = _epsilon(kind, values, 10, 1, rng)
    expected = closed_form_m1(pi, eps)
    torch.testing.assert_close(expected.sum(dim=-1), torch.ones(N_ROWS, dtype=F64), rtol=0, atol=1e-12)
    assert (lbfgs_minimiser(pi, eps) - expected).abs().max().item() <= LBFGS_ATOL, "reference LBFGS disagrees"
    torch.testing.assert_close(proxy_teacher(pi, eps), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("m_terms", [1, 2, 5, 10])
@pytest.mark.parametrize("kind", ["shared", "per_class"])
def test_zero_epsilon_returns_teacher(m_terms: int, kind: str) -> None:
    """ε = 0 returns the teacher probabilities themselves (1e-12)."""
    rng = _rng("zero", m_terms, kind)
    pi = _dirichlet(N_ROWS, 7, 0.3, rng)
    eps = torch.zeros((m_terms,) if kind == "shared" else (7, m_terms), dtype=F64)
    torch.testing.assert_close(proxy_teacher(pi, eps), pi, rtol=0, atol=1e-12)


@pytest.mark.parametrize("values", ["uniform", "lower_edge", "upper_edge", "large_positive"])
@pytest.mark.parametrize("m_terms", [1, 5])
def test_one_hot_teacher_row_is_returned(m_terms: int, values: str) -> None:
    """A one-hot teacher row is its own minimiser: the proxy returns it unchanged; other rows unaffected."""
    rng = _rng("one-hot", m_terms, values)
    num_classes = 5
    pi = _dirichlet(3, num_classes, 3.0, rng)
    pi[0] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=F64)
    pi[2] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=F64)
    eps = _epsilon("per_class", values, num_classes, m_terms, rng)
    q = proxy_teacher(pi, eps)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q[0], pi[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(q[2], pi[2], rtol=0, atol=1e-9)
    q_alone = proxy_teacher(pi[1:2], eps)
    torch.testing.assert_close(q[1:2], q_alone, rtol=0, atol=1e-12)
    assert (q[1:2] - lbfgs_minimiser(pi[1:2], eps)).abs().max().item() <= LBFGS_ATOL


@pytest.mark.parametrize(
    "epsilon",
    [
        torch.tensor([-1.5], dtype=F64),
        torch.tensor([-1.0 - 1e-6], dtype=F64),
        torch.tensor([0.2, -0.6, 0.0], dtype=F64),  # ε_2 < -1/2
        torch.tensor([0.0, 0.0, -0.34, 0.0, 0.0], dtype=F64),  # ε_3 < -1/3
        torch.tensor([[0.1, 0.0], [-1.2, 0.0], [0.0, 0.0]], dtype=F64),  # per class: class 1 has ε_1 < -1
        torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, -0.75]], dtype=F64),  # per class: class 2 has ε_2 < -1/2
    ],
    ids=["m1_-1.5", "m1_just_below", "m3_eps2", "m5_eps3", "per_class_eps1", "per_class_eps2"],
)
def test_out_of_range_epsilon_raises(epsilon: Tensor) -> None:
    """Any coefficient 1/m + ε_{k,m} < 0 is outside the documented range: ValueError."""
    pi = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=F64)
    with pytest.raises(ValueError):
        proxy_teacher(pi, epsilon)


@pytest.mark.parametrize("m_terms", [1, 2, 5, 10])
def test_range_edges_do_not_raise(m_terms: int) -> None:
    """ε_m = -1/m exactly (every coefficient 1/m + ε_m = 0) is inside the range: a valid distribution."""
    pi = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=F64)
    eps = -1.0 / torch.arange(1, m_terms + 1, dtype=F64)
    q = proxy_teacher(pi, eps)
    assert torch.isfinite(q).all() and (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=-1), torch.ones(2, dtype=F64), rtol=0, atol=1e-10)
    assert (objective(q, pi, eps) <= objective(pi, pi, eps) + 1e-12).all()
