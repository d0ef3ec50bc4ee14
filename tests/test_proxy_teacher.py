"""proxy_teacher: fixed-point equations, shapes, dtypes, range checks (brute force lives elsewhere)."""

from __future__ import annotations

import pytest
import torch

from kdlab.losses import proxy_teacher


def _stationarity_residual(q: torch.Tensor, pi: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """max over rows of the spread of pi_k (1/q_k + P_k'(1 - q_k)), which must be one constant per row."""
    eps = eps.expand(pi.shape[-1], -1) if eps.dim() == 1 else eps
    u = 1 - q
    dp = sum((m + 1) * eps[:, m] * u**m for m in range(eps.shape[1]))
    lam = pi * (1 / q + dp)
    return (lam.amax(-1) - lam.amin(-1)).max()


@pytest.mark.parametrize("order", [1, 2, 5, 10])
@pytest.mark.parametrize("per_class", [False, True])
def test_stationarity_holds_with_one_lambda_per_row(order, per_class):
    pi = torch.distributions.Dirichlet(torch.full((12,), 0.7)).sample((50,)).double().clamp_min(1e-9)
    pi = pi / pi.sum(-1, keepdim=True)
    inv_m = 1 / torch.arange(1, order + 1, dtype=torch.float64)
    shape = (12, order) if per_class else (order,)
    eps = (torch.rand(shape, dtype=torch.float64) * 2 - 1) * inv_m
    q = proxy_teacher(pi, eps)
    assert torch.allclose(q.sum(-1), torch.ones(50, dtype=torch.float64), atol=1e-12)
    assert (q > 0).all()
    assert _stationarity_residual(q, pi, eps) < 1e-8


def test_m1_closed_form():
    pi = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]], dtype=torch.float64)
    eps = torch.tensor([0.6], dtype=torch.float64)
    q = proxy_teacher(pi, eps)
    lam = (pi / q + eps * pi)[:, :1]  # q_k = pi_k / (lam - eps pi_k)  =>  lam = pi_k / q_k + eps pi_k
    torch.testing.assert_close(q, pi / (lam - eps * pi))


def test_shapes_dtypes_and_identity():
    probs = torch.softmax(torch.randn(2, 3, 7), -1)
    q = proxy_teacher(probs, torch.tensor([0.3, -0.1]))
    assert q.shape == probs.shape and q.dtype == torch.float32
    # leading dimensions are rows, float32 is computed in float64: the value of each row solved on its own
    for i in range(2):
        torch.testing.assert_close(q[i], proxy_teacher(probs[i].double(), torch.tensor([0.3, -0.1])).float())
    torch.testing.assert_close(proxy_teacher(probs, torch.zeros(3)), probs)


def test_positive_first_coefficient_sharpens_negative_flattens():
    # eps * sum_k pi_k (1 - q_k) = eps * (1 - <pi, q>): eps > 0 rewards mass on the teacher's likely classes
    pi = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
    sharper = proxy_teacher(pi, torch.tensor([0.8]))
    flatter = proxy_teacher(pi, torch.tensor([-0.8]))
    entropy = lambda p: -(p * p.log()).sum()  # noqa: E731
    assert entropy(flatter) > entropy(pi) > entropy(sharper)


def test_one_hot_and_zero_probability_classes():
    pi = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    q = proxy_teacher(pi, torch.tensor([0.5, -0.2, 0.3]))
    assert q[0].tolist() == [0.0, 1.0, 0.0]
    assert q[1, 2] == 0.0 and torch.isclose(q[1, 0], q[1, 1])


def test_tiny_probabilities_converge():
    """π = (1 - 2e-30, 1e-30, 1e-30), ε = (1, 0.5, -0.3): P'(u) = 1 + u - 0.9 u², so P'(0) = 1 and P'(1) = 1.1.
    The big class has q_0 = 1 - O(1e-30), so λ = π_0 (1/q_0 + P'(1 - q_0)) = 2 - O(1e-30); each tiny class solves
    π_k (1/q_k + P'(1 - q_k)) = λ with 1 - q_k = 1 - O(1e-30): q_k = π_k / (λ - 1.1 π_k) = 5e-31 (relative error
    ~1e-30, far below float64's)."""
    pi = torch.tensor([[1 - 2e-30, 1e-30, 1e-30]], dtype=torch.float64)
    q = proxy_teacher(pi, torch.tensor([1.0, 0.5, -0.3]))
    assert q[0, 0].item() == 1.0  # 1 - 1e-30 in float64
    torch.testing.assert_close(q[0, 1:], torch.full((2,), 5e-31, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("probs", "eps", "message"),
    [
        (torch.tensor([[0.5, 0.5]]), torch.tensor([-1.5]), "documented range"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([0.1, -0.6]), "m=2"),
        (torch.tensor([[0.5, 0.5]]), torch.zeros(3, 2), r"\(C, M\)"),
        (torch.tensor([[2.0, 3.0]]), torch.tensor([0.1]), "sum to 1"),
        (torch.tensor([[-0.5, 1.5]]), torch.tensor([0.1]), "non-negative"),
        (torch.tensor([[float("nan"), 1.0]]), torch.tensor([0.1]), "NaN"),
    ],
)
def test_bad_input(probs, eps, message):
    with pytest.raises(ValueError, match=message):
        proxy_teacher(probs, eps)


def test_not_converging_warns_and_returns_a_distribution():
    pi = torch.distributions.Dirichlet(torch.full((6,), 0.5)).sample((4,)).double()
    with pytest.warns(RuntimeWarning, match="not converged"):
        q = proxy_teacher(pi, torch.tensor([0.5, 0.3, -0.2]), max_iter=1, tol=0.0)
    torch.testing.assert_close(q.sum(-1), torch.ones(4, dtype=torch.float64))
    # the last iterate: not yet the proxy (the warning is true), but one step got most of the way from the teacher
    # (measured: 0.003 from the proxy, the teacher 0.067)
    solved = proxy_teacher(pi, torch.tensor([0.5, 0.3, -0.2]))
    assert 1e-9 < (q - solved).abs().max() < 0.2 * (pi - solved).abs().max()
