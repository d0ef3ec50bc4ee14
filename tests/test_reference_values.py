"""Independent float64 reference values for the distillation losses in kdlab.losses.

Every expected value in this file comes from a formula written out here (tempered softmax, KL divergence,
polynomial terms, decoupled KD class by class), in float64. Only the public functions of kdlab.losses are
imported, and only as the values under test.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from kdlab.losses import (
    cross_entropy,
    dkd_loss,
    focal_kd,
    kd_loss,
    label_smoothing_kd,
    poly1_kd,
    ptloss,
)

F64 = torch.float64
SHAPES = [(5, 7), (3, 4, 6), (1, 2)]
TEMPERATURES = [0.5, 1.0, 2.0, 4.0, 8.0]
SCALES = [0.5, 3.0, 10.0]
REDUCTIONS = ["batchmean", "sum", "none"]
RTOL = 1e-6
ATOL = 1e-8
FOCAL_RTOL = 1e-5


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


def _gen(*key: object) -> torch.Generator:
    """A CPU generator seeded from a stable hash (crc32) of the test parameters."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _logits(shape: tuple[int, ...], scale: float, gen: torch.Generator, dtype: torch.dtype = F64) -> Tensor:
    """Random logits randn(shape) * scale, drawn in float64 and cast to dtype."""
    return (torch.randn(shape, generator=gen, dtype=F64) * scale).to(dtype)


def _masks(lead: tuple[int, ...], gen: torch.Generator) -> list[Tensor | None]:
    """No mask, a random bool mask with at least one True, an all-True and an all-False mask."""
    rand = torch.rand(lead, generator=gen) < 0.6
    rand.view(-1)[0] = True
    return [None, rand, torch.ones(lead, dtype=torch.bool), torch.zeros(lead, dtype=torch.bool)]


def _uniform_epsilon(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype = F64) -> Tensor:
    """epsilon of shape (M,) or (C, M), entry (k, m) uniform in [-1/m, 1/m] (m = 1..M on the last axis)."""
    m = torch.arange(1, shape[-1] + 1, dtype=F64)
    u = torch.rand(shape, generator=gen, dtype=F64) * 2.0 - 1.0
    return (u / m).to(dtype)


def _row_targets(lead: tuple[int, ...], num_classes: int, offset: int = 0) -> Tensor:
    """Deterministic class targets of the leading shape: (row index * 2 + offset) mod C."""
    n = 1
    for d in lead:
        n *= d
    return ((torch.arange(n) * 2 + offset) % num_classes).reshape(lead)


# ----------------------------------------------------------------------------------------------------------
# References (float64, explicit formulas)
# ----------------------------------------------------------------------------------------------------------


def ref_logsumexp(z: Tensor) -> Tensor:
    """log Σ_k exp(z_k) over the last dim, as max + log Σ exp(z - max), in float64."""
    z = z.to(F64)
    m = z.max(dim=-1, keepdim=True).values.detach()
    return (m + torch.log(torch.exp(z - m).sum(dim=-1, keepdim=True))).squeeze(-1)


def ref_log_softmax(logits: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / T) over the last dim: z_k - log Σ_j exp(z_j), z = logits / T, in float64."""
    z = logits.to(F64) / temperature
    return z - ref_logsumexp(z).unsqueeze(-1)


def ref_kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row KL(p ‖ q) = Σ_k p_k (log p_k - log q_k) from log-probabilities (p_k = 0 terms are 0)."""
    p = torch.exp(log_p)
    return (p * (log_p - log_q)).sum(dim=-1)


def ref_kd_rows(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    """Per-row T² · KL(p_t ‖ p_s), p = softmax(logits / T)."""
    return temperature**2 * ref_kl_rows(ref_log_softmax(t, temperature), ref_log_softmax(s, temperature))


def ref_ptloss_rows(s: Tensor, t: Tensor, epsilon: Tensor, temperature: float) -> Tensor:
    """Per-row T² · [KL(p_t ‖ p_s) + Σ_k p_t,k Σ_m ε_{k,m} (1 - p_s,k)^m], ε of shape (M,) or (C, M)."""
    log_ps = ref_log_softmax(s, temperature)
    log_pt = ref_log_softmax(t, temperature)
    ps, pt = torch.exp(log_ps), torch.exp(log_pt)
    num_classes = s.shape[-1]
    eps = epsilon.to(F64)
    eps2d = eps.unsqueeze(0).expand(num_classes, eps.shape[0]) if eps.dim() == 1 else eps
    poly = torch.zeros_like(ps)
    for m in range(1, eps2d.shape[1] + 1):
        poly = poly + eps2d[:, m - 1] * (1.0 - ps) ** m
    return temperature**2 * (ref_kl_rows(log_pt, log_ps) + (pt * poly).sum(dim=-1))


def ref_poly1_rows(s: Tensor, t: Tensor, epsilon: float, temperature: float) -> Tensor:
    """Per-row T² · [KL(p_t ‖ p_s) + ε Σ_k p_t,k (1 - p_s,k)]."""
    log_ps = ref_log_softmax(s, temperature)
    log_pt = ref_log_softmax(t, temperature)
    ps, pt = torch.exp(log_ps), torch.exp(log_pt)
    return temperature**2 * (ref_kl_rows(log_pt, log_ps) + epsilon * (pt * (1.0 - ps)).sum(dim=-1))


def ref_label_smoothing_rows(s: Tensor, t: Tensor, smoothing: float, temperature: float) -> Tensor:
    """Per-row T² · KL(p̃ ‖ p_s) with p̃ = (1 - a) p_t + a / C."""
    log_ps = ref_log_softmax(s, temperature)
    pt = torch.exp(ref_log_softmax(t, temperature))
    p_smooth = (1.0 - smoothing) * pt + smoothing / s.shape[-1]
    kl = (torch.xlogy(p_smooth, p_smooth) - p_smooth * log_ps).sum(dim=-1)
    return temperature**2 * kl


def ref_focal_rows(s: Tensor, t: Tensor, gamma: float, temperature: float) -> Tensor:
    """Per-row T² · [Σ_k p_t,k (1 - p_s,k)^γ (-log p_s,k) - H(p_t)], H(p) = -Σ p log p."""
    log_ps = ref_log_softmax(s, temperature)
    log_pt = ref_log_softmax(t, temperature)
    ps, pt = torch.exp(log_ps), torch.exp(log_pt)
    focal_ce = (pt * (1.0 - ps) ** gamma * (-log_ps)).sum(dim=-1)
    neg_entropy = (pt * log_pt).sum(dim=-1)
    return temperature**2 * (focal_ce + neg_entropy)


def ref_dkd_rows(
    s: Tensor, t: Tensor, target: Tensor, alpha: float | Tensor, beta: float | Tensor, temperature: float
) -> Tensor:
    """Per-row alpha·T²·KL(b_t ‖ b_s) + beta·T²·KL(p̂_t ‖ p̂_s), looping over rows and dropping the target."""
    n, num_classes = s.shape
    alphas = torch.as_tensor(alpha, dtype=F64).expand(n)
    betas = torch.as_tensor(beta, dtype=F64).expand(n)
    rows = []
    for i in range(n):
        g = int(target[i])
        others = [k for k in range(num_classes) if k != g]

        def log_binary(x: Tensor, g: int = g, others: list[int] = others) -> Tensor:
            """log [p_g, 1 - p_g] of softmax(x / T), both as differences of log-sum-exps."""
            z = x.to(F64) / temperature
            lse_all = ref_logsumexp(z)
            return torch.stack([z[g] - lse_all, ref_logsumexp(z[others]) - lse_all])

        tckd = temperature**2 * ref_kl_rows(log_binary(t[i]), log_binary(s[i]))
        log_qs = ref_log_softmax(s[i, others], temperature)
        log_qt = ref_log_softmax(t[i, others], temperature)
        nckd = temperature**2 * ref_kl_rows(log_qt, log_qs)
        rows.append(alphas[i] * tckd + betas[i] * nckd)
    return torch.stack(rows)


def ref_ce_rows(logits: Tensor, target: Tensor, label_smoothing: float, ignore_index: int) -> Tensor:
    """Per-row -Σ_k y_k log softmax(logits)_k, y = (1 - a) onehot(target) + a / C; ignored rows give 0."""
    log_p = ref_log_softmax(logits, 1.0)
    num_classes = logits.shape[-1]
    valid = target != ignore_index
    onehot = torch.zeros_like(log_p)
    for idx in itertools.product(*[range(d) for d in target.shape]):
        if bool(valid[idx]):
            onehot[(*idx, int(target[idx]))] = 1.0
    y = (1.0 - label_smoothing) * onehot + label_smoothing / num_classes
    rows = -(y * log_p).sum(dim=-1)
    return torch.where(valid, rows, torch.zeros_like(rows))


def ref_reduce(rows: Tensor, reduction: str, mask: Tensor | None = None) -> Tensor:
    """Reduce per-row values: 'none' keeps rows (masked rows 0), 'sum' sums, 'batchmean' divides by #kept."""
    if mask is None:
        mask = torch.ones(rows.shape, dtype=torch.bool)
    kept = torch.where(mask, rows, torch.zeros_like(rows))
    if reduction == "none":
        return kept
    if reduction == "sum":
        return kept.sum()
    assert reduction == "batchmean"
    return kept.sum() / max(int(mask.sum()), 1)


def _assert_close(
    actual: Tensor,
    expected: Tensor,
    rtol: float = RTOL,
    atol: float = ATOL,
    msg: str = "",
) -> None:
    """assert_close in float64 with the given tolerances, also checking the shape."""
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().to(F64), expected.detach().to(F64)
    torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=msg)


def _check_reductions(
    impl: Callable[[str, Tensor | None], Tensor],
    rows: Tensor,
    masks: list[Tensor | None],
    rtol: float = RTOL,
    label: str = "",
) -> None:
    """Compare impl(reduction, mask) to ref_reduce(rows, reduction, mask) for every reduction and mask."""
    for mask, reduction in itertools.product(masks, REDUCTIONS):
        expected = ref_reduce(rows, reduction, mask)
        actual = impl(reduction, mask)
        tag = f"{label} reduction={reduction} mask={None if mask is None else mask.tolist()}"
        assert torch.isfinite(actual).all(), tag
        _assert_close(actual, expected, rtol=rtol, msg=tag)


# ----------------------------------------------------------------------------------------------------------
# Self-checks of the references against torch's own functions
# ----------------------------------------------------------------------------------------------------------


def test_reference_self_check_against_torch() -> None:
    """The references agree with torch.nn.functional (kl_div, cross_entropy) where torch has the same loss."""
    gen = _gen("self-check")
    s, t = _logits((6, 5), 3.0, gen), _logits((6, 5), 3.0, gen)
    for temp in TEMPERATURES:
        kl = torch.nn.functional.kl_div(
            torch.log_softmax(s / temp, -1),
            torch.log_softmax(t / temp, -1),
            reduction="none",
            log_target=True,
        ).sum(-1)
        _assert_close(ref_kd_rows(s, t, temp), temp**2 * kl, rtol=1e-12, atol=1e-12)
    target = torch.tensor([0, 4, 2, -100, 1, 3])
    for a in (0.0, 0.1, 0.3):
        expected = torch.nn.functional.cross_entropy(s, target, reduction="none", label_smoothing=a)
        _assert_close(ref_ce_rows(s, target, a, -100), expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Values: every shape, temperature, scale, reduction and mask
# ----------------------------------------------------------------------------------------------------------

GRID = list(itertools.product(SHAPES, TEMPERATURES, SCALES))


@pytest.mark.parametrize(("shape", "temp", "scale"), GRID)
def test_kd_loss_values(shape: tuple[int, ...], temp: float, scale: float) -> None:
    gen = _gen("kd", shape, temp, scale)
    s, t = _logits(shape, scale, gen), _logits(shape, scale, gen)
    rows = ref_kd_rows(s, t, temp)
    _check_reductions(
        lambda red, mask: kd_loss(s, t, temperature=temp, reduction=red, mask=mask),
        rows,
        _masks(shape[:-1], gen),
        label="kd_loss",
    )


PT_KINDS = [(m, kind) for m in (1, 2, 5, 10) for kind in ("shared", "per_class")]


@pytest.mark.parametrize(("m_terms", "kind"), PT_KINDS)
@pytest.mark.parametrize(("shape", "temp"), list(itertools.product(SHAPES, TEMPERATURES)))
def test_ptloss_values(shape: tuple[int, ...], temp: float, m_terms: int, kind: str) -> None:
    for scale in SCALES:
        gen = _gen("ptloss", shape, temp, scale, m_terms, kind)
        s, t = _logits(shape, scale, gen), _logits(shape, scale, gen)
        eps_shape = (m_terms,) if kind == "shared" else (shape[-1], m_terms)
        eps = _uniform_epsilon(eps_shape, gen)
        rows = ref_ptloss_rows(s, t, eps, temp)
        _check_reductions(
            lambda red, mask, s=s, t=t, eps=eps, temp=temp: ptloss(
                s, t, eps, temperature=temp, reduction=red, mask=mask
            ),
            rows,
            _masks(shape[:-1], gen),
            label=f"ptloss scale={scale} eps={eps.tolist()}",
        )


@pytest.mark.parametrize("kind", ["shared", "per_class"])
@pytest.mark.parametrize("m_terms", [1, 2, 5, 10])
def test_ptloss_range_edges(m_terms: int, kind: str) -> None:
    """ε at both ends of the documented range, ε_m = -1/m and ε_m = +1/m, for every m."""
    shape = (5, 7)
    edge = 1.0 / torch.arange(1, m_terms + 1, dtype=F64)
    for sign, temp in itertools.product((-1.0, 1.0), (1.0, 4.0)):
        gen = _gen("ptloss-edge", m_terms, kind, sign, temp)
        s, t = _logits(shape, 3.0, gen), _logits(shape, 3.0, gen)
        eps = sign * edge if kind == "shared" else (sign * edge).repeat(shape[-1], 1)
        rows = ref_ptloss_rows(s, t, eps, temp)
        _check_reductions(
            lambda red, mask, s=s, t=t, eps=eps, temp=temp: ptloss(
                s, t, eps, temperature=temp, reduction=red, mask=mask
            ),
            rows,
            [None],
            label=f"ptloss edge sign={sign}",
        )


@pytest.mark.parametrize(("shape", "temp", "scale"), GRID)
def test_poly1_kd_values(shape: tuple[int, ...], temp: float, scale: float) -> None:
    gen = _gen("poly1", shape, temp, scale)
    s, t = _logits(shape, scale, gen), _logits(shape, scale, gen)
    masks = _masks(shape[:-1], gen)
    for eps in (0.0, 1.0, -1.0, 2.5):
        rows = ref_poly1_rows(s, t, eps, temp)
        _check_reductions(
            lambda red, mask, eps=eps: poly1_kd(s, t, eps, temperature=temp, reduction=red, mask=mask),
            rows,
            masks,
            label=f"poly1_kd eps={eps}",
        )


@pytest.mark.parametrize(("shape", "temp", "scale"), GRID)
def test_label_smoothing_kd_values(shape: tuple[int, ...], temp: float, scale: float) -> None:
    gen = _gen("ls", shape, temp, scale)
    s, t = _logits(shape, scale, gen), _logits(shape, scale, gen)
    masks = _masks(shape[:-1], gen)
    for a in (0.0, 0.1, 0.5):
        rows = ref_label_smoothing_rows(s, t, a, temp)
        _check_reductions(
            lambda red, mask, a=a: label_smoothing_kd(s, t, a, temperature=temp, reduction=red, mask=mask),
            rows,
            masks,
            label=f"label_smoothing_kd smoothing={a}",
        )


@pytest.mark.parametrize(("shape", "temp", "scale"), GRID)
def test_focal_kd_values(shape: tuple[int, ...], temp: float, scale: float) -> None:
    gen = _gen("focal", shape, temp, scale)
    s, t = _logits(shape, scale, gen), _logits(shape, scale, gen)
    masks = _masks(shape[:-1], gen)
    for gamma in (0.0, 0.5, 2.0, 3.0):
        rows = ref_focal_rows(s, t, gamma, temp)
        _check_reductions(
            lambda red, mask, g=gamma: focal_kd(s, t, gamma=g, temperature=temp, reduction=red, mask=mask),
            rows,
            masks,
            rtol=FOCAL_RTOL,
            label=f"focal_kd gamma={gamma}",
        )


DKD_SHAPES = [(5, 7), (6, 3), (1, 2)]


DKD_GRID = list(itertools.product(DKD_SHAPES, TEMPERATURES, SCALES))


@pytest.mark.parametrize(("shape", "temp", "scale"), DKD_GRID)
def test_dkd_loss_values(shape: tuple[int, int], temp: float, scale: float) -> None:
    gen = _gen("dkd", shape, temp, scale)
    s, t = _logits(shape, scale, gen), _logits(shape, scale, gen)
    target = torch.randint(0, shape[1], (shape[0],), generator=gen)
    for alpha, beta in ((1.0, 8.0), (0.5, 2.0), (1.0, 0.0), (0.0, 1.0)):
        rows = ref_dkd_rows(s, t, target, alpha, beta, temp)
        _check_reductions(
            lambda red, mask, alpha=alpha, beta=beta: dkd_loss(
                s, t, target, alpha=alpha, beta=beta, temperature=temp, reduction=red
            ),
            rows,
            [None],
            label=f"dkd_loss alpha={alpha} beta={beta} target={target.tolist()}",
        )


@pytest.mark.parametrize("temp", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_dkd_identity_with_per_row_beta(temp: float, scale: float) -> None:
    """alpha = 1 and beta_i = 1 - p_t,g,i make DKD exactly T² · KL(p_t ‖ p_s), row by row."""
    gen = _gen("dkd-identity", temp, scale)
    s, t = _logits((8, 6), scale, gen), _logits((8, 6), scale, gen)
    target = torch.randint(0, 6, (8,), generator=gen)
    pt_target = torch.exp(ref_log_softmax(t, temp)).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    beta = 1.0 - pt_target
    actual = dkd_loss(s, t, target, alpha=1.0, beta=beta, temperature=temp, reduction="none")
    _assert_close(actual, ref_kd_rows(s, t, temp), rtol=1e-6, atol=1e-6, msg="DKD identity")
    _assert_close(actual, ref_dkd_rows(s, t, target, 1.0, beta, temp), msg="DKD with tensor beta")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cross_entropy_values(shape: tuple[int, ...], scale: float, label_smoothing: float) -> None:
    gen = _gen("ce", shape, scale, label_smoothing)
    logits = _logits(shape, scale, gen)
    lead, num_classes = shape[:-1], shape[-1]
    target = torch.randint(0, num_classes, lead, generator=gen)
    for ignore_index in (-100, -1):
        ignored = target.clone()
        drop = torch.rand(lead, generator=gen) < 0.3
        drop.view(-1)[0] = False
        ignored[drop] = ignore_index
        for tgt in (target, ignored):
            rows = ref_ce_rows(logits, tgt, label_smoothing, ignore_index)
            valid = tgt != ignore_index
            for reduction in REDUCTIONS:
                actual = cross_entropy(
                    logits,
                    tgt,
                    reduction=reduction,
                    label_smoothing=label_smoothing,
                    ignore_index=ignore_index,
                )
                expected = ref_reduce(rows, reduction, valid)
                _assert_close(
                    actual,
                    expected,
                    msg=f"cross_entropy {reduction} ignore={ignore_index} target={tgt.tolist()}",
                )


# ----------------------------------------------------------------------------------------------------------
# Special cases and identities
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["shared", "per_class"])
@pytest.mark.parametrize("m_terms", [1, 2, 5, 10])
@pytest.mark.parametrize("temp", TEMPERATURES)
def test_ptloss_zero_epsilon_equals_kd(temp: float, m_terms: int, kind: str) -> None:
    gen = _gen("pt-zero", temp, m_terms, kind)
    s, t = _logits((3, 4, 6), 3.0, gen), _logits((3, 4, 6), 3.0, gen)
    eps = torch.zeros((m_terms,) if kind == "shared" else (6, m_terms), dtype=F64)
    for reduction in REDUCTIONS:
        expected = kd_loss(s, t, temperature=temp, reduction=reduction)
        actual = ptloss(s, t, eps, temperature=temp, reduction=reduction)
        _assert_close(actual, expected, msg=f"ptloss(eps=0) vs kd_loss {reduction}")
        expected = ref_reduce(ref_kd_rows(s, t, temp), reduction)
        _assert_close(actual, expected, msg="ptloss(eps=0) vs reference")


@pytest.mark.parametrize("temp", TEMPERATURES)
def test_zero_parameter_variants_equal_kd(temp: float) -> None:
    """poly1 with ε = 0, label smoothing with a = 0 and focal with γ = 0 all reduce to kd_loss."""
    gen = _gen("zero-variants", temp)
    s, t = _logits((5, 7), 3.0, gen), _logits((5, 7), 3.0, gen)
    expected = ref_kd_rows(s, t, temp)
    for name, value in (
        ("poly1", poly1_kd(s, t, epsilon=0.0, temperature=temp, reduction="none")),
        ("label_smoothing", label_smoothing_kd(s, t, smoothing=0.0, temperature=temp, reduction="none")),
        ("focal", focal_kd(s, t, gamma=0.0, temperature=temp, reduction="none")),
        ("kd", kd_loss(s, t, temperature=temp, reduction="none")),
    ):
        _assert_close(value, expected, msg=name)


def test_kl_direction_is_teacher_to_student() -> None:
    """The value is KL(p_t ‖ p_s), clearly different from KL(p_s ‖ p_t) on this input."""
    s = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 6.0, 0.0, 1.0]], dtype=F64)
    t = torch.tensor([[6.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    for temp in (1.0, 2.0):
        forward = ref_kd_rows(s, t, temp)
        reverse = ref_kd_rows(t, s, temp)
        assert ((forward - reverse).abs() > 0.1).all(), "test input does not separate the two directions"
        eps0 = torch.zeros(2, dtype=F64)
        values = {
            "kd_loss": kd_loss(s, t, temperature=temp, reduction="none"),
            "ptloss": ptloss(s, t, eps0, temperature=temp, reduction="none"),
            "poly1_kd": poly1_kd(s, t, epsilon=0.0, temperature=temp, reduction="none"),
            "label_smoothing_kd": label_smoothing_kd(s, t, smoothing=0.0, temperature=temp, reduction="none"),
            "focal_kd": focal_kd(s, t, gamma=0.0, temperature=temp, reduction="none"),
        }
        for name, value in values.items():
            _assert_close(value, forward, msg=f"{name} T={temp}")
            assert ((value - reverse).abs() > 0.1).all(), f"{name} matches KL(p_s ‖ p_t)"


def test_temperature_squared_scaling() -> None:
    """kd_loss at T = 4 is 16 · KL of the tempered distributions (fails without the T² factor)."""
    gen = _gen("t-squared")
    s, t = _logits((5, 7), 3.0, gen), _logits((5, 7), 3.0, gen)
    kl = ref_kl_rows(ref_log_softmax(t, 4.0), ref_log_softmax(s, 4.0))
    actual = kd_loss(s, t, temperature=4.0, reduction="none")
    _assert_close(actual, 16.0 * kl, msg="T² factor")
    _assert_close(kd_loss(s, t, temperature=4.0), 16.0 * kl.mean(), msg="T² factor, batchmean")


# ----------------------------------------------------------------------------------------------------------
# Loss-generic checks: shift invariance, float32, extremes, all-False mask, gradients
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossCase:
    """One loss with fixed hyper-parameters: impl(s, t, T, reduction, mask) and its reference rows."""

    name: str
    impl: Callable[[Tensor, Tensor, float, str, Tensor | None], Tensor]
    ref: Callable[[Tensor, Tensor, float], Tensor]
    takes_mask: bool = True
    rtol: float = RTOL
    only_2d: bool = False


def _eps_shared(dtype: torch.dtype) -> Tensor:
    """A fixed shared epsilon of M = 3 terms, inside the documented range."""
    return torch.tensor([0.6, -0.4, 0.25], dtype=dtype)


def _eps_per_class(num_classes: int, dtype: torch.dtype) -> Tensor:
    """A fixed per-class epsilon (C, 3), entry (k, m) uniform in [-1/m, 1/m]."""
    return _uniform_epsilon((num_classes, 3), _gen("eps-per-class", num_classes), dtype)


def _ce_target(s: Tensor) -> Tensor:
    """Deterministic targets for cross_entropy on logits s."""
    return _row_targets(tuple(s.shape[:-1]), s.shape[-1])


def _dkd_target(s: Tensor) -> Tensor:
    """Deterministic targets for dkd_loss on (N, C) logits s."""
    return _row_targets((s.shape[0],), s.shape[1], offset=1)


CASES = [
    LossCase(
        "kd_loss",
        lambda s, t, T, red, mask: kd_loss(s, t, temperature=T, reduction=red, mask=mask),
        ref_kd_rows,
    ),
    LossCase(
        "ptloss_shared",
        lambda s, t, T, red, mask: ptloss(
            s,
            t,
            _eps_shared(s.dtype),
            temperature=T,
            reduction=red,
            mask=mask,
        ),
        lambda s, t, T: ref_ptloss_rows(s, t, _eps_shared(F64), T),
    ),
    LossCase(
        "ptloss_per_class",
        lambda s, t, T, red, mask: ptloss(
            s, t, _eps_per_class(s.shape[-1], s.dtype), temperature=T, reduction=red, mask=mask
        ),
        lambda s, t, T: ref_ptloss_rows(s, t, _eps_per_class(s.shape[-1], F64), T),
    ),
    LossCase(
        "poly1_kd",
        lambda s, t, T, red, mask: poly1_kd(s, t, epsilon=1.5, temperature=T, reduction=red, mask=mask),
        lambda s, t, T: ref_poly1_rows(s, t, 1.5, T),
    ),
    LossCase(
        "label_smoothing_kd",
        lambda s, t, T, red, mask: label_smoothing_kd(s, t, 0.2, temperature=T, reduction=red, mask=mask),
        lambda s, t, T: ref_label_smoothing_rows(s, t, 0.2, T),
    ),
    LossCase(
        "focal_kd",
        lambda s, t, T, red, mask: focal_kd(s, t, gamma=2.0, temperature=T, reduction=red, mask=mask),
        lambda s, t, T: ref_focal_rows(s, t, 2.0, T),
        rtol=FOCAL_RTOL,
    ),
    LossCase(
        "dkd_loss",
        lambda s, t, T, red, mask: dkd_loss(
            s,
            t,
            _dkd_target(s),
            alpha=1.0,
            beta=8.0,
            temperature=T,
            reduction=red,
        ),
        lambda s, t, T: ref_dkd_rows(s, t, _dkd_target(s), 1.0, 8.0, T),
        takes_mask=False,
        only_2d=True,
    ),
    LossCase(
        "cross_entropy",
        lambda s, t, T, red, mask: cross_entropy(s, _ce_target(s), reduction=red, label_smoothing=0.1),
        lambda s, t, T: ref_ce_rows(s, _ce_target(s), 0.1, -100),
        takes_mask=False,
    ),
]
CASE_IDS = [c.name for c in CASES]
MASKED_CASES = [c for c in CASES if c.takes_mask]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_invariant_to_per_row_logit_shift(case: LossCase) -> None:
    """Adding a per-row constant to the student and to the teacher logits leaves every loss unchanged."""
    shape = (6, 5) if case.only_2d else (3, 4, 5)
    gen = _gen("shift", case.name)
    s, t = _logits(shape, 3.0, gen), _logits(shape, 3.0, gen)
    cs = torch.randn((*shape[:-1], 1), generator=gen, dtype=F64) * 50.0
    ct = torch.randn((*shape[:-1], 1), generator=gen, dtype=F64) * 50.0
    for temp in (0.5, 4.0):
        base = case.impl(s, t, temp, "none", None)
        shifted = case.impl(s + cs, t + ct, temp, "none", None)
        _assert_close(shifted, base, rtol=case.rtol, msg=f"{case.name} shift T={temp}")
        _assert_close(shifted, case.ref(s, t, temp), rtol=case.rtol, msg=f"{case.name} shift vs ref T={temp}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_inputs_are_float32_accurate(case: LossCase) -> None:
    """float32 logits give a float32 result within 1e-5 (relative to the size of the terms) of float64."""
    shape = (6, 5) if case.only_2d else (3, 4, 5)
    for temp, scale in itertools.product((1.0, 4.0), (0.5, 3.0)):
        gen = _gen("f32", case.name, temp, scale)
        s, t = _logits(shape, scale, gen, torch.float32), _logits(shape, scale, gen, torch.float32)
        expected = case.ref(s.to(F64), t.to(F64), temp)
        # Size of the terms that cancel inside each row: T² (1 + max_k |log p_s,k| + log C) (times weights).
        t_eff = 1.0 if case.name == "cross_entropy" else temp
        log_ps = ref_log_softmax(s, t_eff)
        weight = 9.0 if case.name == "dkd_loss" else 2.0
        log_c = torch.log(torch.tensor(5.0, dtype=F64))
        magnitude = weight * t_eff**2 * (1.0 + log_ps.abs().amax(dim=-1) + log_c)
        actual = case.impl(s, t, temp, "none", None)
        assert actual.dtype == torch.float32, f"{case.name}: dtype {actual.dtype}"
        err = (actual.to(F64) - expected).abs()
        bound = 1e-5 * (expected.abs() + magnitude)
        tag = f"{case.name} T={temp} scale={scale}"
        assert (err <= bound).all(), f"{tag}: err {err.tolist()} bound {bound.tolist()}"
        mean = case.impl(s, t, temp, "batchmean", None)
        assert mean.dtype == torch.float32
        assert abs(float(mean) - float(expected.mean())) <= 1e-5 * float((expected.abs() + magnitude).mean())


def _extreme_inputs(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Student logits ±1e4 (random signs) and a one-hot teacher (+1e4 at class r mod C, -1e4 elsewhere)."""
    gen = _gen("extreme")
    n, c = 4, 5
    s = torch.where(torch.rand((n, c), generator=gen) < 0.5, 1e4, -1e4).to(F64)
    s[0] = torch.tensor([-1e4, 1e4, -1e4, -1e4, -1e4])  # confidently wrong on row 0 (teacher class 0)
    s[1] = torch.tensor([-1e4, 1e4, -1e4, -1e4, -1e4])  # confidently right on row 1 (teacher class 1)
    t = torch.full((n, c), -1e4, dtype=F64)
    t[torch.arange(n), torch.arange(n) % c] = 1e4
    return s.to(dtype), t.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_extreme_logits_finite_values_and_gradients(case: LossCase, dtype: torch.dtype) -> None:
    """Logits ±1e4 with a one-hot teacher: finite loss and finite student gradient for every loss."""
    s0, t = _extreme_inputs(dtype)
    for temp, reduction in itertools.product((1.0, 4.0), REDUCTIONS):
        s = s0.clone().requires_grad_(True)
        value = case.impl(s, t, temp, reduction, None)
        assert torch.isfinite(value).all(), f"{case.name} T={temp} {reduction}: {value}"
        (value.sum() if reduction == "none" else value).backward()
        assert s.grad is not None and torch.isfinite(s.grad).all(), f"{case.name} T={temp}: grad {s.grad}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_extreme_logits_values_and_gradients_match_reference(case: LossCase) -> None:
    """At logits ±1e4 (float64) the value and student gradient still equal the exact reference."""
    s0, t = _extreme_inputs(F64)
    for temp in (1.0, 4.0):
        s = s0.clone().requires_grad_(True)
        value = case.impl(s, t, temp, "none", None)
        (grad,) = torch.autograd.grad(value.sum(), s)
        s_ref = s0.clone().requires_grad_(True)
        expected = case.ref(s_ref, t, temp)
        (grad_ref,) = torch.autograd.grad(expected.sum(), s_ref)
        _assert_close(value, expected, rtol=case.rtol, msg=f"{case.name} extreme value T={temp}")
        _assert_close(grad, grad_ref, rtol=case.rtol, msg=f"{case.name} extreme gradient T={temp}")


@pytest.mark.parametrize("case", MASKED_CASES, ids=[c.name for c in MASKED_CASES])
def test_all_false_mask_gives_zero(case: LossCase) -> None:
    """An all-False mask: batchmean and sum are exactly 0 (not NaN), 'none' is all zeros, gradient is 0."""
    gen = _gen("all-false", case.name)
    s0, t = _logits((3, 4, 5), 3.0, gen), _logits((3, 4, 5), 3.0, gen)
    mask = torch.zeros((3, 4), dtype=torch.bool)
    for reduction in REDUCTIONS:
        s = s0.clone().requires_grad_(True)
        value = case.impl(s, t, 2.0, reduction, mask)
        expected_shape = (3, 4) if reduction == "none" else ()
        assert value.shape == expected_shape, f"{case.name} {reduction}: shape {value.shape}"
        assert torch.isfinite(value).all() and (value == 0).all(), f"{case.name} {reduction}: {value}"
        (value.sum()).backward()
        assert s.grad is not None and torch.isfinite(s.grad).all() and (s.grad == 0).all(), case.name


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck_student_logits(case: LossCase) -> None:
    """torch.autograd.gradcheck (float64) w.r.t. the student logits; the teacher does not require grad."""
    gen = _gen("gradcheck", case.name)
    shape = (3, 5) if case.only_2d else (2, 3, 5)
    s = _logits(shape, 2.0, gen).requires_grad_(True)
    t = _logits(shape, 2.0, gen)
    for temp in (1.0, 4.0):
        for reduction in ("batchmean", "none"):
            assert torch.autograd.gradcheck(
                lambda x, temp=temp, reduction=reduction: case.impl(x, t, temp, reduction, None), (s,)
            ), f"{case.name} T={temp} {reduction}"


GRAD_PARAMS = [
    pytest.param(case, shape, id=f"{case.name}-{'x'.join(map(str, shape))}")
    for case in CASES
    for shape in SHAPES
    if len(shape) == 2 or not case.only_2d
]


@pytest.mark.parametrize(("case", "shape"), GRAD_PARAMS)
def test_gradient_matches_reference(case: LossCase, shape: tuple[int, ...]) -> None:
    """The student-logit gradient equals the autograd gradient of the float64 reference (1e-6)."""
    for temp, scale in itertools.product(TEMPERATURES, SCALES):
        gen = _gen("grad", case.name, shape, temp, scale)
        s0, t = _logits(shape, scale, gen), _logits(shape, scale, gen)
        weights = torch.rand(shape[:-1], generator=gen, dtype=F64)
        masks = _masks(shape[:-1], gen)[:2] if case.takes_mask else [None]
        for mask, reduction in itertools.product(masks, REDUCTIONS):
            s = s0.clone().requires_grad_(True)
            value = case.impl(s, t, temp, reduction, mask)
            out = (value * weights).sum() if reduction == "none" else value
            (grad,) = torch.autograd.grad(out, s)
            s_ref = s0.clone().requires_grad_(True)
            ref_value = ref_reduce(case.ref(s_ref, t, temp), reduction, mask)
            ref_out = (ref_value * weights).sum() if reduction == "none" else ref_value
            (grad_ref,) = torch.autograd.grad(ref_out, s_ref)
            _assert_close(
                grad,
                grad_ref,
                rtol=case.rtol,
                msg=f"{case.name} T={temp} scale={scale} {reduction} mask={mask}",
            )


TEACHER_CASES = [c for c in CASES if c.name != "cross_entropy"]


@pytest.mark.parametrize("case", TEACHER_CASES, ids=[c.name for c in TEACHER_CASES])
def test_teacher_gradient_path_matches_reference(case: LossCase) -> None:
    """With teacher logits requiring grad: same value, student and teacher gradients as the reference."""
    shape = (5, 7) if case.only_2d else (3, 4, 6)
    for temp in (0.5, 4.0):
        gen = _gen("teacher-grad", case.name, temp)
        s0, t0 = _logits(shape, 3.0, gen), _logits(shape, 3.0, gen)
        weights = torch.rand(shape[:-1], generator=gen, dtype=F64)
        s, t = s0.clone().requires_grad_(True), t0.clone().requires_grad_(True)
        value = case.impl(s, t, temp, "none", None)
        grad_s, grad_t = torch.autograd.grad((value * weights).sum(), (s, t))
        s_ref, t_ref = s0.clone().requires_grad_(True), t0.clone().requires_grad_(True)
        expected = case.ref(s_ref, t_ref, temp)
        grad_s_ref, grad_t_ref = torch.autograd.grad((expected * weights).sum(), (s_ref, t_ref))
        _assert_close(value, expected, rtol=case.rtol, msg=f"{case.name} value T={temp}")
        _assert_close(grad_s, grad_s_ref, rtol=case.rtol, msg=f"{case.name} student grad T={temp}")
        _assert_close(grad_t, grad_t_ref, rtol=case.rtol, msg=f"{case.name} teacher grad T={temp}")


@pytest.mark.parametrize("kind", ["shared", "per_class"])
def test_ptloss_epsilon_gradient_matches_reference(kind: str) -> None:
    """With ε requiring grad: ptloss value and gradients w.r.t. student logits and ε match the reference."""
    gen = _gen("eps-grad", kind)
    s0, t = _logits((3, 4, 6), 3.0, gen), _logits((3, 4, 6), 3.0, gen)
    eps0 = _uniform_epsilon((5,) if kind == "shared" else (6, 5), gen)
    for temp in (1.0, 4.0):
        s, eps = s0.clone().requires_grad_(True), eps0.clone().requires_grad_(True)
        value = ptloss(s, t, eps, temperature=temp)
        grad_s, grad_eps = torch.autograd.grad(value, (s, eps))
        s_ref, eps_ref = s0.clone().requires_grad_(True), eps0.clone().requires_grad_(True)
        expected = ref_reduce(ref_ptloss_rows(s_ref, t, eps_ref, temp), "batchmean")
        grad_s_ref, grad_eps_ref = torch.autograd.grad(expected, (s_ref, eps_ref))
        _assert_close(value, expected, msg=f"value T={temp}")
        _assert_close(grad_s, grad_s_ref, msg=f"student grad T={temp}")
        _assert_close(grad_eps, grad_eps_ref, msg=f"epsilon grad T={temp}")
