"""fused_linear_distill against plain materialised losses written here (autograd through full logits)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.losses import fused_linear_distill

N_BATCH, N_SEQ, H, H_T, V = 2, 13, 8, 12, 50
EPS5 = [0.4, -0.2, 0.1, 0.05, -0.1]
CASES = [
    ("kd", None),
    ("ptloss", [0.7]),
    ("ptloss", EPS5),
    ("ptloss", torch.linspace(-0.3, 0.3, V * 3).reshape(V, 3)),  # per-class epsilon
    ("ptloss", torch.linspace(-0.3, 0.3, V).reshape(V, 1)),  # per-class, M = 1: a (C,) coefficient, not a number
    ("reverse_kl", None),
    ("jsd", None),
]


def reference_rows(kind: str, s: torch.Tensor, t: torch.Tensor, T: float, eps=None, beta: float = 0.5):
    """Per-row loss on materialised logits, float64, written out from the definitions."""
    log_p = F.log_softmax(s.double() / T, -1)
    log_q = F.log_softmax(t.double() / T, -1)
    p, q = log_p.exp(), log_q.exp()
    if kind in ("kd", "ptloss"):
        rows = (q * (log_q - log_p)).sum(-1)
        if kind == "ptloss":
            u = 1 - p
            coef = torch.as_tensor(eps, dtype=torch.float64)  # (M,) shared or (V, M) per class
            for m in range(1, coef.shape[-1] + 1):
                rows = rows + (q * u**m * coef[..., m - 1]).sum(-1)
    elif kind == "reverse_kl":
        rows = (p * (log_p - log_q)).sum(-1)
    else:
        m = beta * q + (1 - beta) * p
        rows = beta * (q * (log_q - m.log())).sum(-1) + (1 - beta) * (p * (log_p - m.log())).sum(-1)
    return rows * T**2


def reference(kind, h, w, t_logits, T, keep, denom=None, eps=None, labels=None, ce_weight=0.0, beta=0.5):
    s = h.reshape(-1, h.shape[-1]).double() @ w.double().t()
    rows = reference_rows(kind, s, t_logits.reshape(-1, s.shape[-1]), T, eps, beta)
    if ce_weight:
        y = labels.reshape(-1).clamp(min=0)
        rows = rows + ce_weight * (torch.logsumexp(s, -1) - s.gather(1, y[:, None]).squeeze(1))
    total = rows[keep.reshape(-1)].sum()
    return total / (keep.sum() if denom is None else denom)


def inputs(seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(N_BATCH, N_SEQ, H, generator=gen)).to(dtype)
    w = (torch.randn(V, H, generator=gen) * 0.7).to(dtype)
    th = torch.randn(N_BATCH, N_SEQ, H_T, generator=gen).to(dtype)
    tw = (torch.randn(V, H_T, generator=gen) * 0.6).to(dtype)
    labels = torch.randint(0, V, (N_BATCH, N_SEQ), generator=gen)
    labels[0, :3] = -100  # prompt tokens
    labels[1, -4:] = -100  # padding
    mask = torch.ones(N_BATCH, N_SEQ, dtype=torch.bool)
    mask[1, 5] = False
    return h, w, th, tw, labels, mask


def grads_of(fn, h, w):
    h = h.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    value = fn(h, w)
    value.backward()
    return value.detach(), h.grad, w.grad


@pytest.mark.parametrize("teacher_kind", ["pair", "logits"])
@pytest.mark.parametrize(("kind", "eps"), CASES)
def test_fused_equals_materialised(kind, eps, teacher_kind):
    h, w, th, tw, labels, mask = inputs()
    T = 2.0
    t_logits = th @ tw.t()
    teacher = (th, tw) if teacher_kind == "pair" else t_logits
    keep = mask & (labels != -100)

    fused = grads_of(
        lambda h_, w_: fused_linear_distill(
            h_, w_, teacher, loss=kind, epsilon=eps, temperature=T, mask=mask, labels=labels, chunk_size=5
        ),
        h,
        w,
    )
    ref = grads_of(lambda h_, w_: reference(kind, h_, w_, t_logits, T, keep, eps=eps), h, w)
    assert fused[0].dtype == torch.float32
    assert fused[0].item() == pytest.approx(ref[0].item(), rel=1e-4)
    torch.testing.assert_close(fused[1], ref[1].float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused[2], ref[2].float(), rtol=1e-4, atol=1e-6)
    assert torch.all(fused[1][~keep] == 0)  # ignored tokens get no gradient


@pytest.mark.parametrize(("kind", "eps"), [("kd", None), ("ptloss", EPS5), ("reverse_kl", None), ("jsd", None)])
def test_bfloat16_inputs(kind, eps):
    h, w, th, tw, labels, mask = inputs(1, torch.bfloat16)
    keep = mask & (labels != -100)
    fused = grads_of(
        lambda h_, w_: fused_linear_distill(h_, w_, (th, tw), loss=kind, epsilon=eps, labels=labels, mask=mask), h, w
    )
    assert fused[1].dtype == torch.bfloat16 and fused[2].dtype == torch.bfloat16
    ref = grads_of(lambda h_, w_: reference(kind, h_, w_, th.double() @ tw.double().t(), 1.0, keep, eps=eps), h, w)
    assert fused[0].item() == pytest.approx(ref[0].item(), rel=2e-2)
    for got, want in ((fused[1], ref[1]), (fused[2], ref[2])):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=3e-2 * scale)


def test_chunk_size_does_not_change_the_result():
    h, w, th, tw, labels, _mask = inputs(2)
    results = [
        grads_of(
            lambda h_, w_, c=c: fused_linear_distill(
                h_, w_, (th, tw), loss="ptloss", epsilon=EPS5, temperature=1.5, labels=labels, chunk_size=c
            ),
            h,
            w,
        )
        for c in (1, 7, 26, None)
    ]
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_hand_computed_kd_value_and_gradient():
    # student logits 0 (uniform p = 1/3), teacher probabilities (0.7, 0.2, 0.1), T = 1:
    # KL = 0.7 ln(2.1) + 0.2 ln(0.6) + 0.1 ln(0.3) = 0.5193562 - 0.1021651 - 0.1203973 = 0.2967938
    h = torch.zeros(1, 3, requires_grad=True)
    w = torch.eye(3)  # logits = h
    teacher = torch.tensor([[0.7, 0.2, 0.1]]).log()
    value = fused_linear_distill(h, w, teacher, loss="kd")
    value.backward()
    assert value.item() == pytest.approx(0.2967938, abs=1e-6)
    # d/ds = p - q = (1/3 - 0.7, 1/3 - 0.2, 1/3 - 0.1)
    torch.testing.assert_close(h.grad, torch.tensor([[-0.3666667, 0.1333333, 0.2333333]]))


def test_num_items_makes_gradient_accumulation_exact():
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(32, H, generator=gen)
    w = torch.randn(V, H, generator=gen)
    t = torch.randn(32, V, generator=gen) * 2
    labels = torch.randint(0, V, (32,), generator=gen)
    labels[torch.randperm(32, generator=gen)[:9]] = -100  # an uneven share of ignored tokens per micro-batch
    total_items = int((labels != -100).sum())
    opts = {"loss": "ptloss", "epsilon": EPS5, "ce_weight": 0.3, "temperature": 2.0}

    full = grads_of(lambda h_, w_: fused_linear_distill(h_, w_, t, labels=labels, **opts), h, w)
    hh = h.clone().requires_grad_(True)
    ww = w.clone().requires_grad_(True)
    accumulated = 0.0
    for part in range(4):
        rows = slice(8 * part, 8 * part + 8)
        loss = fused_linear_distill(hh[rows], ww, t[rows], labels=labels[rows], num_items=total_items, **opts)
        loss.backward()
        accumulated += loss.item()
    assert accumulated == pytest.approx(full[0].item(), rel=1e-5)
    torch.testing.assert_close(hh.grad, full[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ww.grad, full[2], rtol=1e-5, atol=1e-7)


def test_cross_entropy_term_matches_torch():
    h, w, th, tw, labels, _mask = inputs(4)
    keep = labels != -100
    fused = grads_of(lambda h_, w_: fused_linear_distill(h_, w_, (th, tw), labels=labels, ce_weight=0.5), h, w)
    ref = grads_of(
        lambda h_, w_: (
            reference("kd", h_, w_, th @ tw.t(), 1.0, keep)
            + 0.5 * F.cross_entropy((h_ @ w_.t()).reshape(-1, V).double(), labels.reshape(-1), ignore_index=-100)
        ),
        h,
        w,
    )
    assert fused[0].item() == pytest.approx(ref[0].item(), rel=1e-5)
    torch.testing.assert_close(fused[1], ref[1].float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused[2], ref[2].float(), rtol=1e-4, atol=1e-6)


def test_upstream_gradient_scales_and_teacher_is_untouched():
    h, w, th, tw, _labels, _mask = inputs(5)
    t = th @ tw.t()
    t_before = t.clone()
    one = grads_of(lambda h_, w_: fused_linear_distill(h_, w_, t, temperature=3.0), h, w)
    three = grads_of(lambda h_, w_: 3 * fused_linear_distill(h_, w_, t, temperature=3.0), h, w)
    torch.testing.assert_close(three[1], 3 * one[1])
    torch.testing.assert_close(three[2], 3 * one[2])
    assert torch.equal(t, t_before)
    with torch.no_grad():
        value = fused_linear_distill(h, w.requires_grad_(True), t, temperature=3.0)
    assert value.item() == pytest.approx(one[0].item(), rel=1e-6) and not value.requires_grad


def test_all_tokens_ignored_gives_zero():
    h, w, th, tw, labels, _mask = inputs(6)
    value, grad_h, grad_w = grads_of(
        lambda h_, w_: fused_linear_distill(h_, w_, (th, tw), labels=torch.full_like(labels, -100)), h, w
    )
    assert value.item() == 0.0 and not grad_h.any() and not grad_w.any()
    assert math.isfinite(value.item())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"teacher": torch.zeros(N_BATCH, N_SEQ, V + 1)}, "vocabulary mismatch"),
        ({"teacher": (torch.zeros(N_BATCH, N_SEQ, H_T), torch.zeros(V - 2, H_T))}, "vocabulary mismatch"),
        ({"teacher": torch.zeros(N_BATCH, N_SEQ - 1, V)}, "token shape"),
        ({"loss": "kl"}, "loss must be one of"),
        ({"loss": "ptloss"}, "needs epsilon"),
        ({"epsilon": [0.1]}, "only used by loss='ptloss'"),
        ({"mask": torch.ones(N_BATCH, N_SEQ)}, "mask must be a bool"),
        ({"labels": torch.full((N_BATCH, N_SEQ), V)}, r"labels must be in \[0, 49\]"),
        ({"ce_weight": 1.0}, "ce_weight > 0 needs labels"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"num_items": 0}, "num_items"),
        ({"loss": "jsd", "jsd_beta": 1.0}, "jsd_beta"),
        ({"weight": torch.zeros(V, H + 1)}, "features"),
    ],
)
def test_bad_input_is_one_clear_error(change, message):
    h, w, th, tw, _labels, _mask = inputs()
    args = {"teacher": (th, tw), "weight": w, **change}
    teacher, weight = args.pop("teacher"), args.pop("weight")
    with pytest.raises(ValueError, match=message):
        fused_linear_distill(h, weight, teacher, **args)
