"""Every loss parameter away from its neutral value, against float64 references written here.

A parameter tested only at its neutral value hides bugs: JSD's β at 0.5 hides β swapped for 1 − β, α = β hides
the weights swapped, T = 1 hides a missing T² or a temperature that never reaches the kernel, and ε of one sign
hides a sign error. Here: the fused token loss's JSD at β ∈ {0.1, 0.9}; the methods' terms (classification and
token-level) with α ≠ β, T ≠ 1 and PTLoss ε of both signs, each checked numerically. Only public kdlab functions
are imported, as the values under test.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from kdlab.losses import fused_linear_distill
from kdlab.methods import Outputs, StepState, build

F64 = torch.float64
STATE = StepState(epoch=0, step=0, epochs=1, progress=0.0)
RTOL = 1e-9


def f32(values: list[float]) -> list[float]:
    """PTLoss methods keep epsilon as float32: the reference uses the same rounded coefficients."""
    return torch.tensor(values, dtype=torch.float32).tolist()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ref_log_softmax(z: Tensor, temperature: float) -> Tensor:
    z = z.to(F64) / temperature
    return z - torch.logsumexp(z, dim=-1, keepdim=True)


def ref_divergence_rows(kind: str, s: Tensor, t: Tensor, temperature: float, eps=None, beta: float = 0.5) -> Tensor:
    """Per-row T² · D(teacher, student) on tempered softmaxes, p = student, q = teacher."""
    log_p, log_q = ref_log_softmax(s, temperature), ref_log_softmax(t, temperature)
    p, q = log_p.exp(), log_q.exp()
    if kind == "kd":
        rows = (q * (log_q - log_p)).sum(-1)
    elif kind in ("ptloss", "poly1"):  # poly1: PTLoss with M = 1, its epsilon a float64 number
        rows = (q * (log_q - log_p)).sum(-1)
        for m, e in enumerate(f32(eps) if kind == "ptloss" else eps, start=1):
            rows = rows + e * (q * (1 - p) ** m).sum(-1)
    elif kind == "reverse_kl":
        rows = (p * (log_p - log_q)).sum(-1)
    elif kind == "jsd":  # β KL(q ‖ m) + (1 − β) KL(p ‖ m), m = β q + (1 − β) p: β weighs the teacher
        log_m = (beta * q + (1 - beta) * p).log()
        rows = beta * (q * (log_q - log_m)).sum(-1) + (1 - beta) * (p * (log_p - log_m)).sum(-1)
    elif kind == "label_smoothing":
        smoothing = eps
        mixed = (1 - smoothing) * q + smoothing / s.shape[-1]
        rows = (mixed * (mixed.log() - log_p)).sum(-1)
    elif kind == "focal":  # Σ q (1 − p)^γ (−log p) − H(q)
        gamma = eps
        rows = (q * (1 - p) ** gamma * -log_p).sum(-1) + (q * log_q).sum(-1)
    else:
        raise ValueError(kind)
    return temperature**2 * rows


def ref_ce_rows(s: Tensor, y: Tensor) -> Tensor:
    log_p = ref_log_softmax(s, 1.0)
    return -log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)


def ref_dkd_rows(s: Tensor, t: Tensor, y: Tensor, alpha: float, beta: float, temperature: float) -> Tensor:
    """T² (α · KL of the (target, rest) binary split + β · KL of the non-target classes renormalised), per row."""
    rows = []
    for i in range(len(y)):
        g, others = int(y[i]), [k for k in range(s.shape[-1]) if k != int(y[i])]
        ps, pt = torch.softmax(s[i].double() / temperature, -1), torch.softmax(t[i].double() / temperature, -1)
        bs, bt = torch.stack([ps[g], 1 - ps[g]]), torch.stack([pt[g], 1 - pt[g]])
        tckd = (bt * (bt / bs).log()).sum()
        qs = torch.softmax(s[i, others].double() / temperature, -1)
        qt = torch.softmax(t[i, others].double() / temperature, -1)
        nckd = (qt * (qt / qs).log()).sum()
        rows.append(temperature**2 * (alpha * tckd + beta * nckd))
    return torch.stack(rows)


EXTRA = {"ptloss": "epsilon", "poly1": "epsilon", "label_smoothing": "smoothing", "focal": "gamma"}


def reference_terms(cfg: dict, s: Tensor, t: Tensor, y: Tensor, progress: float = 0.0) -> dict[str, Tensor]:
    """The float64 terms a classification method's config asks for, from the config's own numbers alone (every
    weight and temperature must be given): α · CE and β · D_T, or DKD's ce_weight · CE and ramp · DKD."""
    name = cfg["name"]
    if name == "dkd":
        ramp = 1.0 if cfg["warmup_epochs"] == 0 else min(progress / cfg["warmup_epochs"], 1.0)
        dkd = ref_dkd_rows(s, t, y, cfg["alpha"], cfg["beta"], cfg["temperature"]).mean()
        return {"dkd": ramp * dkd, "ce": cfg["ce_weight"] * ref_ce_rows(s, y).mean()}
    extra = cfg.get(EXTRA.get(name, ""))
    if name == "poly1":
        extra = [extra]
    div = ref_divergence_rows(name, s, t, cfg["temperature"], extra).mean()
    return {"ce": cfg["alpha"] * ref_ce_rows(s, y).mean(), name: cfg["beta"] * div}


# ---- the fused token loss: JSD's β --------------------------------------------------------------------------


def _token_inputs(seed: int = 0):
    gen = _gen(seed)
    h = torch.randn(2, 7, 6, generator=gen, dtype=F64)
    w = torch.randn(11, 6, generator=gen, dtype=F64) * 0.8
    t = torch.randn(2, 7, 11, generator=gen, dtype=F64) * 1.5
    labels = torch.randint(0, 11, (2, 7), generator=gen)
    return h, w, t, labels


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("beta", [0.1, 0.9])
def test_fused_jsd_at_beta_away_from_one_half(beta, temperature):
    h, w, t, _ = _token_inputs()
    rows = ref_divergence_rows("jsd", h @ w.t(), t, temperature, beta=beta)
    swapped = ref_divergence_rows("jsd", h @ w.t(), t, temperature, beta=1 - beta).mean()
    assert abs(float(rows.mean() - swapped)) > 1e-2  # β and 1 − β differ clearly at these inputs
    hs, ws = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    value = fused_linear_distill(hs, ws, t, loss="jsd", jsd_beta=beta, temperature=temperature, chunk_size=5)
    value.backward()
    hr, wr = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    expected = ref_divergence_rows("jsd", hr @ wr.t(), t, temperature, beta=beta).mean()
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hs.grad, hr.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ws.grad, wr.grad, rtol=1e-9, atol=1e-12)


# ---- token-level methods: α ≠ β, T ≠ 1, ε of both signs, JSD's β ---------------------------------------------

TOKEN_CASES = [
    ("kd", {"alpha": 0.3, "beta": 0.7, "temperature": 2.0}, None),
    ("kd", {"alpha": 0.0, "beta": 0.6, "temperature": 0.5}, None),
    ("ptloss", {"alpha": 0.2, "beta": 0.9, "temperature": 3.0, "epsilon": [0.4, -0.3]}, [0.4, -0.3]),
    ("ptloss", {"alpha": 0.0, "beta": 1.0, "temperature": 1.5, "epsilon": [-0.6, 0.2, 0.1]}, [-0.6, 0.2, 0.1]),
    ("reverse_kl", {"alpha": 0.4, "beta": 0.8, "temperature": 2.0}, None),
    ("jsd", {"alpha": 0.3, "beta": 0.7, "temperature": 2.0, "jsd_beta": 0.1}, None),
    ("jsd", {"alpha": 0.0, "beta": 1.0, "temperature": 1.0, "jsd_beta": 0.9}, None),
]


@pytest.mark.parametrize(
    ("name", "params", "eps"),
    TOKEN_CASES,
    ids=["-".join([n, *(f"{v}" for v in p.values())]) for n, p, _ in TOKEN_CASES],
)
def test_token_method_is_beta_divergence_plus_alpha_ce(name, params, eps):
    """The token-level term equals β · T² · D_T + α · CE (untempered), the mean over the target tokens."""
    h, w, t, labels = _token_inputs(1)
    method = build(name, params, 0, task="causal_lm")
    hs = h.clone().requires_grad_(True)
    terms = method.compute({"targets": labels}, Outputs(hidden=hs, head_weight=w), Outputs(logits=t), STATE)
    (key,) = terms
    assert key == (name if params["alpha"] == 0 else f"{name}+ce")
    hr = h.clone().requires_grad_(True)
    s = hr @ w.t()
    div = ref_divergence_rows(name, s, t, params["temperature"], eps, params.get("jsd_beta", 0.5))
    expected = (params["beta"] * div + params["alpha"] * ref_ce_rows(s, labels)).mean()
    torch.testing.assert_close(terms[key], expected, rtol=RTOL, atol=1e-10)
    (grad,) = torch.autograd.grad(terms[key], hs)
    (expected_grad,) = torch.autograd.grad(expected, hr)
    torch.testing.assert_close(grad, expected_grad, rtol=RTOL, atol=1e-10)


# ---- classification methods: the terms of α · CE + β · D with α ≠ β --------------------------------------------

CLASSIFY_CASES = [
    {"name": "kd", "alpha": 0.3, "beta": 0.7, "temperature": 4.0},
    {"name": "kd", "alpha": 0.9, "beta": 0.2, "temperature": 0.5},
    {"name": "ptloss", "alpha": 0.3, "beta": 0.7, "temperature": 2.0, "epsilon": [0.4, -0.3]},
    {"name": "ptloss", "alpha": 0.1, "beta": 0.6, "temperature": 3.0, "epsilon": [-0.7, 0.25]},
    {"name": "poly1", "alpha": 0.2, "beta": 0.5, "temperature": 2.0, "epsilon": -0.8},
    {"name": "poly1", "alpha": 0.2, "beta": 0.5, "temperature": 3.0, "epsilon": 1.5},
    {"name": "label_smoothing", "alpha": 0.4, "beta": 0.3, "temperature": 2.0, "smoothing": 0.2},
    {"name": "focal", "alpha": 0.25, "beta": 0.6, "temperature": 2.0, "gamma": 1.5},
]


@pytest.mark.parametrize("cfg", CLASSIFY_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_classify_method_terms_are_alpha_ce_and_beta_divergence(cfg):
    gen = _gen(2)
    s = torch.randn(9, 6, generator=gen, dtype=F64) * 2
    t = torch.randn(9, 6, generator=gen, dtype=F64) * 2
    y = torch.randint(0, 6, (9,), generator=gen)
    name = cfg["name"]
    method = build(name, {k: v for k, v in cfg.items() if k != "name"}, 6)
    terms = method.compute({"y": y}, Outputs(logits=s), Outputs(logits=t), STATE)
    expected = reference_terms(cfg, s, t, y)
    assert set(terms) == set(expected) == {"ce", name}
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, rtol=RTOL, atol=1e-10, msg=key)
    swapped = cfg["beta"] * ref_ce_rows(s, y).mean()
    assert abs(float(terms["ce"] - swapped)) > 1e-3  # α and β swapped would show


def test_kd_method_weights_by_hand():
    """One row, two classes, numbers worked out on paper: s = (0, 0), t = (2 ln 3, 0), T = 2, y = 1.

    p = (1/2, 1/2); q = softmax(t / 2) = (3/4, 1/4); KL(q ‖ p) = 3/4 ln(3/2) + 1/4 ln(1/2); CE = ln 2.
    α = 0.3, β = 0.7: ce = 0.3 ln 2 = 0.2079442, kd = 0.7 · 4 · KL = 2.8 · 0.1308120 = 0.3662737.
    """
    import math

    method = build("kd", {"alpha": 0.3, "beta": 0.7, "temperature": 2.0}, 2)
    s = torch.zeros(1, 2, dtype=F64)
    t = torch.tensor([[2 * math.log(3), 0.0]], dtype=F64)
    terms = method.compute({"y": torch.tensor([1])}, Outputs(logits=s), Outputs(logits=t), STATE)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl == pytest.approx(0.1308120, abs=1e-7)
    assert float(terms["ce"]) == pytest.approx(0.3 * math.log(2), rel=1e-12)
    assert float(terms["kd"]) == pytest.approx(0.3662737, abs=1e-7)


def test_dkd_method_weights_and_warmup_ramp():
    """DKD's terms: ce_weight · CE and ramp · T² (α · TCKD + β · NCKD), ramp = progress / warmup_epochs."""
    gen = _gen(3)
    s = torch.randn(5, 4, generator=gen, dtype=F64) * 2
    t = torch.randn(5, 4, generator=gen, dtype=F64) * 2
    y = torch.tensor([0, 3, 1, 1, 2])
    cfg = {"name": "dkd", "ce_weight": 0.4, "alpha": 0.3, "beta": 2.5, "temperature": 2.0, "warmup_epochs": 4}
    method = build("dkd", {k: v for k, v in cfg.items() if k != "name"}, 4)
    state = StepState(epoch=1, step=10, epochs=5, progress=1.0)  # a quarter of the warm-up
    terms = method.compute({"y": y}, Outputs(logits=s), Outputs(logits=t), state)
    expected = reference_terms(cfg, s, t, y, progress=1.0)
    assert set(terms) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, rtol=RTOL, atol=1e-12, msg=key)
    full = ref_dkd_rows(s, t, y, 0.3, 2.5, 2.0).mean()
    torch.testing.assert_close(terms["dkd"], 0.25 * full, rtol=RTOL, atol=1e-12)
    swapped = ref_dkd_rows(s, t, y, 2.5, 0.3, 2.0).mean()
    assert abs(float(full - swapped)) > 1e-2  # TCKD's and NCKD's weights swapped would show
