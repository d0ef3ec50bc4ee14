"""Behaviour of kdlab.losses beyond the reference values: inputs, reductions, dtypes, backends, registry."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from kdlab import losses
from kdlab.losses import _fused, cross_entropy, dkd_loss, focal_kd, kd_loss, label_smoothing_kd, poly1_kd, ptloss

PAIRWISE = {
    "kd_loss": lambda s, t, **kw: kd_loss(s, t, 2.0, **kw),
    "ptloss": lambda s, t, **kw: ptloss(s, t, torch.tensor([0.3, -0.2, 0.1]), 2.0, **kw),
    "poly1_kd": lambda s, t, **kw: poly1_kd(s, t, 0.5, 2.0, **kw),
    "label_smoothing_kd": lambda s, t, **kw: label_smoothing_kd(s, t, 0.2, 2.0, **kw),
    "focal_kd": lambda s, t, **kw: focal_kd(s, t, 2.0, 2.0, **kw),
}


def _naive_kl_rows(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    p_t = torch.softmax(t.double() / temperature, -1)
    p_s = torch.softmax(s.double() / temperature, -1)
    return temperature**2 * (p_t * (p_t.log() - p_s.log())).sum(-1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: kd_loss(torch.randn(5), torch.randn(5)), "shape (N, C)"),
        (lambda: kd_loss(torch.randn(4, 5), torch.randn(4, 6)), "different class counts"),
        (lambda: kd_loss(torch.randn(4, 5), torch.randn(3, 5)), "same shape"),
        (lambda: kd_loss(torch.randn(4, 5), torch.randn(4, 5), temperature=0.0), "positive"),
        (lambda: kd_loss(torch.randn(4, 5), torch.randn(4, 5), temperature=-1), "positive"),
        (lambda: kd_loss(torch.randn(4, 5), torch.randn(4, 5), reduction="mean"), "batchmean"),
        (lambda: kd_loss(torch.randn(4, 5), torch.randn(4, 5), mask=torch.ones(3, dtype=torch.bool)), "mask"),
        (lambda: kd_loss(torch.randint(0, 3, (4, 5)), torch.randn(4, 5)), "floating-point"),
        (lambda: ptloss(torch.randn(4, 5), torch.randn(4, 5), torch.zeros(4, 2)), "(C, M)"),
        (lambda: ptloss(torch.randn(4, 5), torch.randn(4, 5), torch.zeros(2, 2, 2)), "(C, M)"),
        (lambda: ptloss(torch.randn(4, 5), torch.randn(4, 5), torch.zeros(0)), "M>=1"),
        (lambda: ptloss(torch.randn(4, 5), torch.randn(4, 5), "abc"), "epsilon"),
        (lambda: ptloss(torch.randn(4, 5), torch.randn(4, 5), [float("nan")]), "NaN"),
        (lambda: dkd_loss(torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 5])), "in [0, 4]"),
        (lambda: dkd_loss(torch.randn(4, 5), torch.randn(4, 5), torch.zeros(4)), "integer"),
        (lambda: cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 2])), "shape (4,)"),
    ],
)
def test_bad_input_is_one_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        call()


@pytest.mark.parametrize("name", sorted(PAIRWISE))
@pytest.mark.parametrize("where", ["student", "teacher"])
def test_nan_logits_are_named(name, where):
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    (s if where == "student" else t)[1, 2] = float("nan")
    with pytest.raises(ValueError, match=f"{where}_logits contains NaN"):
        PAIRWISE[name](s, t)


def test_nan_in_masked_rows_is_ignored():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    s[1] = float("nan")
    mask = torch.tensor([True, False, True])
    expected = _naive_kl_rows(s[mask], t[mask], 2.0).mean()
    assert torch.isclose(kd_loss(s, t, 2.0, mask=mask).double(), expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_reductions_and_mask_agree_with_row_selection(name):
    fn = PAIRWISE[name]
    s, t = torch.randn(3, 5, 7, dtype=torch.float64), torch.randn(3, 5, 7, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.4
    rows = fn(s, t, reduction="none")
    assert rows.shape == (3, 5)
    masked_rows = fn(s, t, reduction="none", mask=mask)
    torch.testing.assert_close(masked_rows, torch.where(mask, rows, 0.0))
    torch.testing.assert_close(fn(s, t, reduction="sum", mask=mask), rows[mask].sum())
    torch.testing.assert_close(fn(s, t, mask=mask), rows[mask].mean())
    torch.testing.assert_close(fn(s[mask], t[mask]), rows[mask].mean())
    empty = torch.zeros(3, 5, dtype=torch.bool)
    assert fn(s, t, mask=empty).item() == 0.0


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_half_precision_inputs_are_computed_in_float32(name):
    s, t = torch.randn(6, 11), torch.randn(6, 11)
    expected = PAIRWISE[name](s, t)
    low = s.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = PAIRWISE[name](low, t.bfloat16())
    assert value.dtype == torch.float32
    value.backward()
    assert low.grad.dtype == torch.bfloat16
    reference = PAIRWISE[name](s.bfloat16().float(), t.bfloat16().float())
    torch.testing.assert_close(value, reference, atol=1e-5, rtol=1e-5)
    assert abs(value.item() - expected.item()) < 0.05 * abs(expected.item()) + 0.05


def test_teacher_gradient_path_matches_fused_path():
    s = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    eps = torch.tensor([0.2, -0.3, 0.1], dtype=torch.float64)
    value = ptloss(s, t, eps, 1.5)  # teacher needs a gradient: plain autograd reference path
    grad_s, grad_t = torch.autograd.grad(value, (s, t))
    fused = ptloss(s, t.detach(), eps, 1.5)  # fused analytic-gradient path
    (fused_grad_s,) = torch.autograd.grad(fused, s)
    torch.testing.assert_close(value, fused)
    torch.testing.assert_close(grad_s, fused_grad_s)
    assert torch.autograd.gradcheck(lambda x: ptloss(s.detach(), x, eps, 1.5), (t.detach().requires_grad_(),))
    assert grad_t.abs().sum() > 0


def test_learnable_epsilon_gets_a_gradient():
    s, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    eps = torch.tensor([0.1, 0.2], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(ptloss(s, t, eps), eps)
    p_t, u = torch.softmax(t, -1), 1 - torch.softmax(s, -1)
    torch.testing.assert_close(grad, torch.stack([(p_t * u).sum(-1).mean(), (p_t * u * u).sum(-1).mean()]))


def test_eager_chunks_give_the_same_values_and_gradients(monkeypatch):
    s = torch.randn(37, 50, dtype=torch.float64, requires_grad=True)
    t = torch.randn(37, 50, dtype=torch.float64)
    eps = torch.randn(50, 4, dtype=torch.float64) * 0.1
    losses.set_backend("eager")
    whole = ptloss(s, t, eps, 3.0, reduction="none")
    (grad_whole,) = torch.autograd.grad(whole.sum(), s)
    monkeypatch.setattr(_fused, "_CHUNK_ELEMENTS", 160)  # 3 rows per chunk
    chunked = ptloss(s, t, eps, 3.0, reduction="none")
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), s)
    torch.testing.assert_close(whole, chunked)
    torch.testing.assert_close(grad_whole, grad_chunked)


@contextlib.contextmanager
def really_compiled(monkeypatch):
    """Inside: backend 'compile' must run the compiled kernel. A fresh torch.compile (dynamo's caches reset) must
    compile at least one frame, and the eager kernel must not run. Where torch.compile fails on this machine (no C++
    compiler, ...), the loss falls back to eager with a warning: then the test is skipped with that reason, instead
    of comparing eager with eager."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    monkeypatch.setitem(_fused._state, "compiled", {})
    monkeypatch.setitem(_fused._state, "compile_failed", False)  # an earlier failure would hide this one
    eager_calls = []
    real_eager = _fused._eager_all

    def counted_eager(*args, **kwargs):
        eager_calls.append(args[0].shape)
        return real_eager(*args, **kwargs)

    monkeypatch.setattr(_fused, "_eager_all", counted_eager)
    frames = counters["frames"]["ok"]
    losses.set_backend("compile")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    failed = [str(w.message) for w in caught if "torch.compile of the loss kernel failed" in str(w.message)]
    if failed or _fused._state.get("compile_failed"):
        pytest.skip(f"the compiled loss kernel cannot run here, it fell back to eager: {failed[:1]}")
    assert not eager_calls, f"backend 'compile' ran the eager kernel on {eager_calls}"
    assert counters["frames"]["ok"] > frames, "torch.compile compiled no frame"


def test_compiled_backend_matches_eager(monkeypatch):
    s = torch.randn(16, 33, requires_grad=True)
    t = torch.randn(16, 33)
    cases = (torch.tensor([0.3, -0.1, 0.05]), torch.randn(33, 2) * 0.2, None)

    def run(eps):
        value = kd_loss(s, t, 2.0) if eps is None else ptloss(s, t, eps, 2.0)
        (grad,) = torch.autograd.grad(value, s)
        return value, grad

    losses.set_backend("eager")
    eager = [run(eps) for eps in cases]
    with really_compiled(monkeypatch):
        compiled = [run(eps) for eps in cases]
    for (value, grad), (compiled_value, compiled_grad) in zip(eager, compiled, strict=True):
        torch.testing.assert_close(compiled_value, value, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(compiled_grad, grad, atol=1e-6, rtol=1e-5)


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend"):
        losses.set_backend("cuda-magic")


def _masked_class_reference(name: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """float64 PAIRWISE[name] (T = 2) for a teacher whose class 0 has logit -inf: q_0 is exactly 0, so class 0's
    terms vanish (sums over the live classes 1..C-1 only; label smoothing gives class 0 the mass a/C back)."""
    temperature = 2.0
    log_p = torch.log_softmax(s.double() / temperature, -1)
    q = torch.zeros_like(log_p)
    q[:, 1:] = torch.softmax(t[:, 1:].double() / temperature, -1)
    live = slice(1, None)
    if name == "label_smoothing_kd":
        q, live = 0.8 * q + 0.2 / s.shape[-1], slice(None)
    q, log_p_live, u = q[:, live], log_p[:, live], 1 - log_p[:, live].exp()
    rows = (q * (q.log() - log_p_live)).sum(-1)
    if name == "ptloss":
        rows = rows + sum(e * (q * u**m).sum(-1) for m, e in enumerate((0.3, -0.2, 0.1), start=1))
    elif name == "poly1_kd":
        rows = rows + 0.5 * (q * u).sum(-1)
    return temperature**2 * rows.mean()


@pytest.mark.parametrize("name", ["kd_loss", "ptloss", "poly1_kd", "label_smoothing_kd"])
def test_minus_infinity_teacher_logits_are_allowed(name):
    """A masked teacher class (logit -inf) is a probability of exactly 0: value and gradient equal a float64
    reference that drops the class (not the same function at a large negative logit)."""
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6)
    t[:, 0] = -torch.inf
    value = PAIRWISE[name](s, t)
    (grad,) = torch.autograd.grad(value, s)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    s64 = s.detach().double().requires_grad_(True)
    expected = _masked_class_reference(name, s64, t)
    (expected_grad,) = torch.autograd.grad(expected, s64)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-6)


def test_ptloss_with_zero_epsilon_is_kd_for_every_backend_and_shape(monkeypatch):
    s, t = torch.randn(2, 3, 40), torch.randn(2, 3, 40)
    losses.set_backend("eager")
    for shape in [(1,), (5,), (40, 3)]:
        torch.testing.assert_close(ptloss(s, t, torch.zeros(shape), 3.0), kd_loss(s, t, 3.0))
    with really_compiled(monkeypatch):
        pairs = [(ptloss(s, t, torch.zeros(shape), 3.0), kd_loss(s, t, 3.0)) for shape in [(1,), (5,), (40, 3)]]
    for value, kd in pairs:
        torch.testing.assert_close(value, kd)


def test_cross_entropy_ignore_index_and_mask_through_module():
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    target = torch.tensor([[0, 4, -100], [2, -100, 1]])
    keep = target != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(cross_entropy(logits, target), expected)
    module = losses.get("ce")
    mask = torch.tensor([[True, False, True], [True, True, True]])
    expected_masked = torch.nn.functional.cross_entropy(logits[keep & mask], target[keep & mask])
    torch.testing.assert_close(module(logits, target=target, mask=mask), expected_masked)


def test_registry_lists_builds_and_matches_functions():
    assert losses.available() == ["ce", "dkd", "focal_kd", "kd", "label_smoothing_kd", "poly1", "ptloss"]
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    eps = [[0.1, -0.2]] * 5
    pairs = {
        "kd": (dict(temperature=3.0), kd_loss(s, t, 3.0)),
        "ptloss": (dict(epsilon=eps, temperature=2.0), ptloss(s, t, torch.tensor(eps), 2.0)),
        "poly1": (dict(epsilon=0.7), poly1_kd(s, t, 0.7)),
        "label_smoothing_kd": (dict(smoothing=0.3), label_smoothing_kd(s, t, 0.3)),
        "focal_kd": (dict(gamma=1.0), focal_kd(s, t, 1.0)),
        "dkd": (dict(beta=2.0), dkd_loss(s, t, y, beta=2.0)),
        "ce": (dict(label_smoothing=0.1), cross_entropy(s, y, label_smoothing=0.1)),
    }
    for name, (kwargs, expected) in pairs.items():
        module = losses.get(name, **kwargs)
        torch.testing.assert_close(module(s, t, target=y), expected)
    with pytest.raises(ValueError, match="unknown loss 'kld'"):
        losses.get("kld")
    with pytest.raises(ValueError, match="bad arguments"):
        losses.get("kd", temprature=2.0)
    with pytest.raises(ValueError, match="needs teacher_logits"):
        losses.get("kd")(s)
    with pytest.raises(ValueError, match="needs target"):
        losses.get("dkd")(s, t)


def test_ptloss_module_moves_epsilon_with_the_module():
    module = losses.get("ptloss", epsilon=[0.1, 0.2]).to(torch.float32)
    assert "epsilon" in dict(module.named_buffers())
    assert module.requires_teacher and not module.requires_target


def test_dkd_pieces_decompose_kd_and_ignore_the_target_logit():
    s, t = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    y = torch.randint(0, 6, (8,))
    tckd, nckd = losses.dkd_terms(s, t, y, temperature=2.0)
    p_t_target = torch.softmax(t / 2.0, -1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(tckd + (1 - p_t_target) * nckd, _naive_kl_rows(s, t, 2.0))
    shifted = s.clone()
    shifted[torch.arange(8), y] += 5.0  # moves only the target logit
    torch.testing.assert_close(losses.dkd_terms(shifted, t, y, 2.0)[1], nckd)
    assert dkd_loss(t, t, y).abs().item() < 1e-12
