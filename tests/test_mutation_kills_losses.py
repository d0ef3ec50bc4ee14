"""Tests that kill mutants mutmut found alive in kdlab.losses (see benchmarks/results/mutation.md).

Every value is checked against a float64 reference written out here from the formula, never against another kdlab
call: the loss modules' defaults and their mask, the (N, L, C) row layout, and the token-row kernels.
"""

from __future__ import annotations

import pytest
import torch

from kdlab.losses.modules import CrossEntropy, DKDLoss, FocalKD, KDLoss, LabelSmoothingKD, Poly1KD, PTLoss

torch.manual_seed(0)
S = torch.randn(3, 4, 5, dtype=torch.float64) * 2
T = torch.randn(3, 4, 5, dtype=torch.float64) * 2
Y = torch.randint(0, 5, (3, 4))
MASK = torch.tensor([[True, False, True, True], [False, False, True, False], [True, True, False, True]])


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    e = torch.exp(logits / temperature - (logits / temperature).amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def _kl_rows(p_t: torch.Tensor, p_s: torch.Tensor) -> torch.Tensor:
    return (p_t * (p_t.log() - p_s.log())).sum(-1)


def _ref_kd(temperature: float) -> torch.Tensor:
    return temperature**2 * _kl_rows(_probs(T, temperature), _probs(S, temperature))


def _ref_pt(eps: list[float], temperature: float) -> torch.Tensor:
    p_t, p_s = _probs(T, temperature), _probs(S, temperature)
    poly = sum(e * (1 - p_s) ** (m + 1) for m, e in enumerate(eps))
    return temperature**2 * (_kl_rows(p_t, p_s) + (p_t * poly).sum(-1))


def _ref_ls(smoothing: float, temperature: float) -> torch.Tensor:
    p_t = (1 - smoothing) * _probs(T, temperature) + smoothing / T.shape[-1]
    return temperature**2 * _kl_rows(p_t, _probs(S, temperature))


def _ref_focal(gamma: float, temperature: float) -> torch.Tensor:
    p_t, p_s = _probs(T, temperature), _probs(S, temperature)
    return temperature**2 * ((p_t * p_t.log()).sum(-1) - (p_t * (1 - p_s) ** gamma * p_s.log()).sum(-1))


def _ref_dkd(alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """Decoupled KD (Zhao et al. 2022) row by row: binary target/non-target KL and the KL among non-targets."""
    p_t, p_s = _probs(T, temperature), _probs(S, temperature)
    gt = torch.nn.functional.one_hot(Y, 5).bool()
    bt = torch.stack([p_t[gt].reshape(Y.shape), 1 - p_t[gt].reshape(Y.shape)], -1)
    bs = torch.stack([p_s[gt].reshape(Y.shape), 1 - p_s[gt].reshape(Y.shape)], -1)
    nt = p_t.masked_fill(gt, 0) / (1 - p_t[gt].reshape(Y.shape)).unsqueeze(-1)
    ns = p_s.masked_fill(gt, 0) / (1 - p_s[gt].reshape(Y.shape)).unsqueeze(-1)
    nckd = torch.where(gt, 0.0, nt * (nt.clamp_min(1e-300).log() - ns.clamp_min(1e-300).log())).sum(-1)
    return temperature**2 * (alpha * _kl_rows(bt, bs) + beta * nckd)


def _ref_ce(smoothing: float) -> torch.Tensor:
    log_p = _probs(S, 1.0).log()
    nll = -log_p.gather(-1, Y.unsqueeze(-1)).squeeze(-1)
    return (1 - smoothing) * nll - smoothing * log_p.mean(-1)


CASES = [  # module built with its defaults, the reference at those defaults
    (KDLoss, lambda: _ref_kd(4.0)),
    (lambda: PTLoss([0.3, -0.2]), lambda: _ref_pt([0.3, -0.2], 1.0)),
    (Poly1KD, lambda: _ref_pt([1.0], 1.0)),
    (LabelSmoothingKD, lambda: _ref_ls(0.1, 4.0)),
    (FocalKD, lambda: _ref_focal(2.0, 1.0)),
]


@pytest.mark.parametrize(("build", "reference"), CASES)
def test_loss_modules_use_their_documented_defaults_and_the_mask(build, reference):
    module, rows = build(), reference()
    assert torch.allclose(module(S, T), rows.mean(), atol=1e-10, rtol=1e-10)
    assert torch.allclose(module(S, T, mask=MASK), rows[MASK].mean(), atol=1e-10, rtol=1e-10)
    assert module.reduction == "batchmean"


def test_dkd_module_defaults_and_its_refusal_of_a_mask():
    module = DKDLoss()
    assert torch.allclose(module(S, T, Y), _ref_dkd(1.0, 8.0, 4.0).mean(), atol=1e-9, rtol=1e-9)
    with pytest.raises(ValueError, match="dkd does not take a mask"):
        module(S, T, Y, mask=MASK)


def test_cross_entropy_module_defaults_mask_and_ignore_index():
    module = CrossEntropy()
    rows = _ref_ce(0.0)
    assert torch.allclose(module(S, None, Y), rows.mean(), atol=1e-10, rtol=1e-10)
    assert torch.allclose(module(S, None, Y, mask=MASK), rows[MASK].mean(), atol=1e-10, rtol=1e-10)
    ignored = Y.masked_fill(~MASK, -100)  # the default ignore_index
    assert torch.allclose(module(S, None, ignored), rows[MASK].mean(), atol=1e-10, rtol=1e-10)
    smoothed = CrossEntropy(label_smoothing=0.2, ignore_index=7)
    ignored = Y.masked_fill(~MASK, 7)
    expected = _ref_ce(0.2)[MASK].mean()
    assert torch.allclose(smoothed(S, None, ignored), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    ("module", "call", "message"),
    [
        (KDLoss(), lambda m: m(S), "KDLoss needs teacher_logits"),
        (FocalKD(), lambda m: m(S), "FocalKD needs teacher_logits"),
        (DKDLoss(), lambda m: m(S, T), r"DKDLoss needs target \(the hard labels\)"),
        (CrossEntropy(), lambda m: m(S, T), r"CrossEntropy needs target"),
    ],
)
def test_loss_modules_name_what_they_miss(module, call, message):
    with pytest.raises(ValueError, match=message):
        call(module)


def test_ptloss_module_keeps_its_own_float64_copy_of_epsilon():
    eps = torch.tensor([0.25, -0.125], dtype=torch.float32)
    module = PTLoss(eps, temperature=2.0)
    eps.add_(1.0)  # the caller's tensor changes; the module's buffer does not
    assert module.epsilon.dtype == torch.float64
    assert module.epsilon.tolist() == [0.25, -0.125]
    assert PTLoss([0.1]).epsilon.dtype == torch.float64
    assert torch.allclose(module(S, T), _ref_pt([0.25, -0.125], 2.0).mean(), atol=1e-10, rtol=1e-10)


# ---- the sparse teacher: tail draws, vocabulary checks ----


def _reference_tail_draws(logits: torch.Tensor, k: int, s: int, seed: int) -> tuple[list[list[int]], list[float]]:
    """Systematic sampling written out row by row in float64: offset u = 1 − U(0, 1], draws at (u + i) / s."""
    offsets = 1.0 - torch.rand(logits.shape[0], 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    draws, entropies = [], []
    for row, u in zip(logits.double(), offsets[:, 0].tolist(), strict=True):
        top = set(row.topk(k).indices.tolist())
        tail = [j for j in range(len(row)) if j not in top and row[j] > float("-inf")]
        if not tail:
            draws.append([int(row.topk(k).indices[0])] * s)
            entropies.append(0.0)
            continue
        weights = torch.exp(row[tail] - row[tail].max())
        q = (weights / weights.sum()).tolist()
        entropies.append(-sum(p * torch.log(torch.tensor(p, dtype=torch.float64)).item() for p in q if p > 0))
        cdf, picks = [], []
        for p in q:
            cdf.append((cdf[-1] if cdf else 0.0) + p)
        for i in range(s):
            target = (u + i) / s * cdf[-1]
            picks.append(tail[min(next(n for n, c in enumerate(cdf) if c >= target - 1e-15), len(tail) - 1)])
        draws.append(picks)
    return draws, entropies


def test_tail_draws_follow_the_generator_and_systematic_sampling():
    from kdlab.losses.sparse_teacher import sparse_teacher_from_logits

    logits = torch.tensor(
        [
            [0.0, 1.0, float("-inf"), float("-inf"), float("-inf")],  # the top 2 hold everything: empty tail
            [3.0, 0.5, -1.0, 2.0, 0.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
            [-2.0, 4.0, 0.3, 0.2, 0.1],
        ]
    )
    torch.manual_seed(123)  # the global generator must not be the one drawn from
    torch.rand(7)
    sparse = sparse_teacher_from_logits(logits, 2, tail_samples=6, generator=torch.Generator().manual_seed(5))
    draws, entropies = _reference_tail_draws(logits, 2, 6, seed=5)
    assert sparse.tail_samples.dtype == torch.int32
    assert sparse.tail_samples.tolist()[1:] == draws[1:]
    assert sparse.tail_samples[0].tolist() == [1] * 6  # no tail: the top class stands in, with weight r = 0
    assert torch.allclose(sparse.tail_entropy.double(), torch.tensor(entropies, dtype=torch.float64), atol=1e-6)


def _sparse(indices: list[list[int]], samples: list[list[int]] | None = None):
    from kdlab.losses.sparse_teacher import SparseTeacher

    idx = torch.tensor(indices, dtype=torch.int32)
    extra = () if samples is None else (torch.tensor(samples, dtype=torch.int32), torch.zeros(len(indices)))
    return SparseTeacher(torch.zeros(idx.shape), idx, torch.zeros(len(indices)), *extra)


@pytest.mark.parametrize(
    ("indices", "samples", "message"),
    [
        ([[5]], None, r"indices must be in \[0, 4\]"),  # a single stored index, equal to the vocabulary size
        ([[0, 4], [1, 5]], None, r"indices must be in \[0, 4\]"),
        ([[2, 2]], None, "repeat a class"),
        ([[1, 3, 3]], None, "repeat a class"),  # the repeat is not in the first pair
        ([[0, 1]], [[2, 5]], r"tail samples must be in \[0, 4\]"),
    ],
)
def test_sparse_teacher_vocabulary_check_at_its_edges(indices, samples, message):
    with pytest.raises(ValueError, match=message):
        _sparse(indices, samples).check_vocab(5)


def test_sparse_teacher_accepts_the_last_class_and_single_indices():
    _sparse([[4]]).check_vocab(5)
    _sparse([[0, 4], [3, 1]], [[2, 3], [4, 0]]).check_vocab(5)


@pytest.mark.parametrize(
    "samples",
    [
        torch.zeros(2, 3),  # floating point
        torch.zeros(2, dtype=torch.int32),  # one dim short
        torch.zeros(3, 2, dtype=torch.int32),  # other tokens
    ],
)
def test_sparse_teacher_refuses_malformed_tail_samples(samples):
    from kdlab.losses.sparse_teacher import SparseTeacher

    with pytest.raises(ValueError, match="tail_samples must be integers"):
        SparseTeacher(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int32), torch.zeros(2), samples, torch.zeros(2))


def test_sparse_teacher_to_moves_every_tensor():
    sparse = _sparse([[0, 4], [3, 1]], [[2, 3], [4, 0]])
    moved = sparse.to("cpu")
    assert moved.indices.tolist() == [[0, 4], [3, 1]] and moved.tail_samples.tolist() == [[2, 3], [4, 0]]


# ---- cross_entropy: label smoothing's range, the compute dtype, the NaN report ----


def test_cross_entropy_label_smoothing_range_and_compute_dtype():
    from kdlab.losses import cross_entropy

    logits = (torch.randn(6, 5, dtype=torch.float64) * 3).to(torch.bfloat16)
    target = torch.randint(0, 5, (6,))
    log_p = torch.log_softmax(logits.double(), -1)
    full = -log_p.mean(-1).mean()  # smoothing 1: the uniform target
    assert torch.allclose(cross_entropy(logits, target, label_smoothing=1.0).double(), full, atol=1e-6, rtol=0)
    nll = -log_p.gather(-1, target[:, None]).mean()
    assert torch.allclose(cross_entropy(logits, target).double(), nll, atol=1e-6, rtol=0)  # float32, not bfloat16
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(logits, target, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"^logits must"):
        cross_entropy(torch.randn(5), target[:5])
    bad = logits.float()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="logits contains NaN"):
        cross_entropy(bad, target)


# ---- fused_linear_distill: a sparse teacher's buckets, the backward's scale ----


def _bucket_kd_reference(hidden, weight, values, indices, log_rest) -> torch.Tensor:
    """Mean over tokens of KL(Q ‖ P) over the k + 1 buckets, in float64 (see kdlab.losses.sparse_teacher)."""
    p = torch.softmax(hidden.double() @ weight.double().t(), -1)
    r = log_rest.double().exp()
    q_top = (1 - r)[:, None] * torch.softmax(values.double(), -1)
    p_top = p.gather(-1, indices.long())
    q = torch.cat([q_top, r[:, None]], -1)
    p_b = torch.cat([p_top, (1 - p_top.sum(-1))[:, None]], -1)
    return (q * (q.log() - p_b.log())).sum(-1).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_linear_sparse_buckets_match_a_float64_reference(dtype):
    from kdlab.losses import fused_linear_distill
    from kdlab.losses.sparse_teacher import SparseTeacher

    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(7, 4, generator=gen, dtype=torch.float64).to(dtype)
    weight = torch.randn(9, 4, generator=gen, dtype=torch.float64).to(dtype)
    indices = torch.stack([torch.randperm(9, generator=gen)[:3] for _ in range(7)]).int()
    values = (torch.randn(7, 3, generator=gen) * 4).to(torch.float16)  # stored as the cache stores them
    log_rest = torch.log(torch.rand(7, generator=gen) * 0.5 + 0.01).float()
    got = fused_linear_distill(hidden, weight, SparseTeacher(values, indices, log_rest), loss="kd")
    expected = _bucket_kd_reference(hidden, weight, values, indices, log_rest)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got.double(), expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_fused_linear_backward_scales_by_the_outer_gradient(factor):
    from kdlab.losses import fused_linear_distill

    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    (factor * fused_linear_distill(hidden, weight, teacher, loss="kd")).backward()
    # reference: autograd through the dense float64 formula
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    q = torch.softmax(teacher, -1)
    (factor * (q * (q.log() - torch.log_softmax(h @ w.t(), -1))).sum(-1).mean()).backward()
    assert torch.allclose(hidden.grad, h.grad, atol=1e-12) and torch.allclose(weight.grad, w.grad, atol=1e-12)


def _parts(b: int = 2, length: int = 3, k: int = 4, s: int = 2) -> dict[str, torch.Tensor]:
    """A valid (B, L, k) sparse teacher with tail samples: leading dims (B, L) differ from (B,)."""
    return {
        "values": torch.zeros(b, length, k),
        "indices": torch.zeros(b, length, k, dtype=torch.int32),
        "log_rest": torch.zeros(b, length),
        "tail_samples": torch.zeros(b, length, s, dtype=torch.int32),
        "tail_entropy": torch.zeros(b, length),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"values": torch.zeros(2, 3, 4, dtype=torch.int32)}, "values must be floating point"),
        ({"values": torch.zeros(2, 3, 0), "indices": torch.zeros(2, 3, 0, dtype=torch.int32)}, "values must be"),
        ({"indices": torch.zeros(2, 3, 4)}, "indices must be integers"),
        ({"indices": torch.zeros(2, 3, 5, dtype=torch.int32)}, "indices must be integers"),
        ({"log_rest": torch.zeros(2)}, "log_rest must be floating point"),
        ({"log_rest": torch.zeros(2, 3, dtype=torch.int64)}, "log_rest must be floating point"),
        ({"tail_samples": torch.zeros(2, 3, 0, dtype=torch.int32)}, "tail_samples must be integers"),
        ({"tail_samples": torch.zeros(2, 4, 2, dtype=torch.int32)}, "tail_samples must be integers"),
        ({"tail_samples": torch.zeros(2, 3, 2)}, "tail_samples must be integers"),
        ({"tail_samples": [[0, 1]]}, "tail_samples must be integers"),
        ({"tail_entropy": torch.zeros(2)}, "tail_entropy must be floating point"),
        ({"tail_entropy": torch.zeros(2, 3, dtype=torch.int64)}, "tail_entropy must be floating point"),
        ({"tail_entropy": [0.0]}, "tail_entropy must be floating point"),
    ],
)
def test_sparse_teacher_refuses_each_malformed_part(change, message):
    from kdlab.losses.sparse_teacher import SparseTeacher

    with pytest.raises(ValueError, match=message):
        SparseTeacher(**{**_parts(), **change})


def test_sparse_teacher_accepts_one_class_and_one_sample_and_mixes_no_tails_in_cat():
    from kdlab.losses.sparse_teacher import SparseTeacher

    one = SparseTeacher(**_parts(k=1, s=1))
    assert one.k == 1 and one.tail_samples.shape == (2, 3, 1)
    assert SparseTeacher(torch.zeros(3), torch.zeros(3, dtype=torch.int32), torch.zeros(())).k == 3
    plain = {k: v for k, v in _parts().items() if not k.startswith("tail")}
    with pytest.raises(ValueError, match="tail"):
        SparseTeacher.cat([SparseTeacher(**_parts()), SparseTeacher(**plain)])


# ---- proxy teacher and DKD on (N, L, C) inputs: the class axis is the last, not the second ----


def test_proxy_teacher_on_token_shaped_probabilities_matches_the_m1_closed_form():
    from test_proxy_teacher_bruteforce import closed_form_m1

    from kdlab.losses import proxy_teacher

    gen = torch.Generator().manual_seed(8)
    probs = torch.softmax(torch.randn(2, 3, 5, generator=gen, dtype=torch.float64) * 2, -1)
    shared, per_class = torch.tensor([0.4], dtype=torch.float64), torch.linspace(-0.5, 0.8, 5, dtype=torch.float64)
    for epsilon in (shared, per_class[:, None]):
        got = proxy_teacher(probs, epsilon)
        expected = closed_form_m1(probs.reshape(-1, 5), epsilon).reshape(2, 3, 5)
        assert got.shape == (2, 3, 5)
        assert torch.allclose(got, expected, atol=1e-9, rtol=0)


def test_dkd_on_a_single_token_per_row():
    from kdlab.losses import dkd_loss

    s, t, y = S[:, :1], T[:, :1], Y[:, :1]  # (3, 1, 5): the second axis has one entry
    rows = _ref_dkd_rows(s, t, y, 1.0, 8.0, 4.0)
    assert torch.allclose(dkd_loss(s, t, y, 1.0, 8.0, 4.0), rows.mean(), atol=1e-9, rtol=1e-9)


def _ref_dkd_rows(s, t, y, alpha, beta, temperature):
    p_t, p_s = _probs(t, temperature), _probs(s, temperature)
    gt = torch.nn.functional.one_hot(y, s.shape[-1]).bool()
    tt, ts = (p_t * gt).sum(-1), (p_s * gt).sum(-1)
    tckd = tt * (tt / ts).log() + (1 - tt) * ((1 - tt) / (1 - ts)).log()
    nt = p_t.masked_fill(gt, 0) / (1 - tt).unsqueeze(-1)
    ns = p_s.masked_fill(gt, 0) / (1 - ts).unsqueeze(-1)
    nckd = torch.where(gt, 0.0, nt * (nt.clamp_min(1e-300).log() - ns.clamp_min(1e-300).log())).sum(-1)
    return temperature**2 * (alpha * tckd + beta * nckd)


def _dense_kd_reference(hidden, weight, teacher_logits, temperature=1.0):
    """Mean over tokens of T² · KL(softmax(t/T) ‖ softmax(h·Wᵀ/T)), float64 autograd."""
    log_p = torch.log_softmax(hidden @ weight.t() / temperature, -1)
    q = torch.softmax(teacher_logits.double() / temperature, -1)
    return temperature**2 * (q * (q.log() - log_p)).sum(-1).mean()


def test_fused_linear_chunks_add_up_with_and_without_gradients():
    from kdlab.losses import fused_linear_distill

    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    teacher = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    expected = _dense_kd_reference(hidden, weight, teacher)
    with torch.no_grad():
        got = fused_linear_distill(hidden, weight, teacher, chunk_size=2)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    # half precision: weight gradients of every chunk accumulate in float32
    h16 = hidden.to(torch.bfloat16).requires_grad_()
    w16 = weight.to(torch.bfloat16).requires_grad_()
    fused_linear_distill(h16, w16, teacher.float(), chunk_size=2).backward()
    h, w = h16.detach().double().requires_grad_(), w16.detach().double().requires_grad_()
    _dense_kd_reference(h, w, teacher.float()).backward()
    assert torch.allclose(w16.grad.double(), w.grad, atol=2e-2, rtol=2e-2)
    assert torch.allclose(h16.grad.double(), h.grad, atol=2e-2, rtol=2e-2)


def test_fused_linear_keeps_a_float32_teacher_exact_for_a_float64_student():
    from kdlab.losses import fused_linear_distill

    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    weight = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    t_hidden = torch.randn(5, 4, generator=gen)
    t_weight = torch.randn(8, 4, generator=gen)
    logits32 = torch.randn(5, 8, generator=gen) * 5
    expected = _dense_kd_reference(hidden, weight, logits32, 2.0)
    assert torch.allclose(fused_linear_distill(hidden, weight, logits32, temperature=2.0), expected, atol=1e-12)
    expected = _dense_kd_reference(hidden, weight, t_hidden.double() @ t_weight.double().t())
    got = fused_linear_distill(hidden, weight, (t_hidden, t_weight))
    assert torch.allclose(got, expected, atol=1e-6)  # the teacher's product is float32
    exact = _dense_kd_reference(hidden, weight, t_hidden @ t_weight.t())
    assert torch.allclose(got, exact, atol=1e-12)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.zeros(5), "labels must be an integer tensor"),
        (torch.zeros(5, dtype=torch.complex64), "labels must be an integer tensor"),
        (torch.zeros(4, dtype=torch.int64), "labels must be an integer tensor"),
        ([0, 1, 2, 3, 4], "labels must be an integer tensor"),
    ],
)
def test_fused_linear_refuses_malformed_labels(labels, message):
    from kdlab.losses import fused_linear_distill

    with pytest.raises(ValueError, match=message):
        fused_linear_distill(torch.randn(5, 3), torch.randn(6, 3), torch.randn(5, 6), labels=labels, ce_weight=1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), torch.tensor(float("nan"))])
def test_fused_linear_refuses_a_non_finite_token_count(bad):
    from kdlab.losses import fused_linear_distill

    with pytest.raises(ValueError, match="num_items"):
        fused_linear_distill(torch.randn(5, 3), torch.randn(6, 3), torch.randn(5, 6), num_items=bad)


def test_fused_linear_sparse_buckets_at_temperature_one_half():
    """Q_T ∝ Q^(1/T) over the k + 1 buckets, P_T the buckets of softmax(h·Wᵀ / T), times T²."""
    from kdlab.losses import fused_linear_distill
    from kdlab.losses.sparse_teacher import SparseTeacher

    gen = torch.Generator().manual_seed(9)
    hidden = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    indices = torch.stack([torch.randperm(9, generator=gen)[:3] for _ in range(6)]).int()
    values = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    log_rest = torch.log(torch.rand(6, generator=gen, dtype=torch.float64) * 0.5 + 0.01)
    temperature = 0.5
    r = log_rest.exp()
    q = torch.cat([(1 - r)[:, None] * torch.softmax(values, -1), r[:, None]], -1)
    q_t = torch.softmax(q.log() / temperature, -1)
    p = torch.softmax(hidden @ weight.t() / temperature, -1)
    p_top = p.gather(-1, indices.long())
    p_t = torch.cat([p_top, (1 - p_top.sum(-1))[:, None]], -1)
    expected = temperature**2 * (q_t * (q_t.log() - p_t.log())).sum(-1).mean()
    sparse = SparseTeacher(values, indices, log_rest)
    got = fused_linear_distill(hidden, weight, sparse, temperature=temperature)
    assert torch.allclose(got, expected, atol=1e-10, rtol=1e-10)


# ---- the functional losses' defaults, edges and NaN reports ----


def test_functional_losses_use_their_documented_defaults():
    from kdlab.losses import dkd_loss, focal_kd, label_smoothing_kd, poly1_kd

    assert torch.allclose(dkd_loss(S, T, Y), _ref_dkd_rows(S, T, Y, 1.0, 8.0, 4.0).mean(), atol=1e-9)
    assert torch.allclose(focal_kd(S, T), _ref_focal(2.0, 1.0).mean(), atol=1e-10)
    assert torch.allclose(label_smoothing_kd(S, T), _ref_ls(0.1, 4.0).mean(), atol=1e-10)
    assert torch.allclose(poly1_kd(S, T), _ref_pt([1.0], 1.0).mean(), atol=1e-10)


def test_label_smoothing_kd_at_full_smoothing_is_kd_from_the_uniform_distribution():
    from kdlab.losses import label_smoothing_kd

    assert torch.allclose(label_smoothing_kd(S, T, 1.0, 2.0), _ref_ls(1.0, 2.0).mean(), atol=1e-10)
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothing_kd(S, T, 1.5)


@pytest.mark.parametrize(("s_dtype", "t_dtype"), [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_dkd_computes_in_float64_when_either_side_is_float64(s_dtype, t_dtype):
    from kdlab.losses import dkd_loss

    s, t = S.to(s_dtype), T.to(t_dtype)
    expected = _ref_dkd_rows(s.double(), t.double(), Y, 1.0, 2.0, 3.0).mean()
    got = dkd_loss(s, t, Y, 1.0, 2.0, 3.0)
    assert got.dtype == torch.float64
    assert torch.allclose(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("side", ["student_logits", "teacher_logits"])
def test_dkd_names_the_input_that_holds_nan(side):
    from kdlab.losses import dkd_loss

    s, t = S.clone(), T.clone()
    (s if side == "student_logits" else t)[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=f"{side} contains NaN"):
        dkd_loss(s, t, Y)


def test_targets_below_zero_are_refused():
    from kdlab.losses import dkd_loss

    with pytest.raises(ValueError, match="target values must be in"):
        dkd_loss(S, T, Y - Y.max() - 1)


def test_registering_a_loss_by_name():
    from kdlab.losses import registry

    class Mine(torch.nn.Module):
        pass

    class Other(torch.nn.Module):
        pass

    try:
        assert registry.register("mutation_test_loss")(Mine) is Mine
        assert Mine.registry_name == "mutation_test_loss"
        assert isinstance(registry.get("mutation_test_loss"), Mine)
        registry.register("mutation_test_loss")(Mine)  # the same class again is fine
        with pytest.raises(ValueError, match="already registered by"):
            registry.register("mutation_test_loss")(Other)
    finally:
        registry._REGISTRY.pop("mutation_test_loss", None)


# ---- the kernel's functional form (the compiled path's source) and fused_linear's input checks ----


@pytest.mark.parametrize("eps", [None, [0.3, -0.2, 0.1]])
def test_functional_rows_value_and_gradient_match_autograd(eps):
    from kdlab.losses._fused import functional_rows, horner_coefficients

    gen = torch.Generator().manual_seed(21)
    s, t = (
        torch.randn(4, 5, generator=gen, dtype=torch.float64) * 3,
        torch.randn(4, 5, generator=gen, dtype=torch.float64),
    )
    inv_t = torch.tensor(0.5, dtype=torch.float64)
    epsilon = None if eps is None else torch.tensor(eps, dtype=torch.float64)
    r_coef, d_coef = (None, None) if epsilon is None else horner_coefficients(epsilon)
    value, grad = functional_rows(s, t, inv_t, r_coef, d_coef, need_grad=True)
    z = (s * 0.5).requires_grad_()
    log_p, q = torch.log_softmax(z, -1), torch.softmax(t * 0.5, -1)
    rows = (q * (q.log() - log_p)).sum(-1)
    if epsilon is not None:
        u = 1 - log_p.exp()
        rows = rows + (q * sum(e * u ** (m + 1) for m, e in enumerate(epsilon))).sum(-1)
    (expected_grad,) = torch.autograd.grad(rows.sum(), z)
    assert torch.allclose(value, rows.detach(), atol=1e-12) and torch.allclose(grad, expected_grad, atol=1e-12)
    assert functional_rows(s, t, inv_t, r_coef, d_coef, need_grad=False)[1] is None


def test_functional_rows_keep_large_and_far_apart_rows_finite():
    """Row-wise max shifting: logits of 60 overflow exp in float32 unshifted; a row far below another underflows
    if shifted by the global maximum."""
    from kdlab.losses._fused import functional_rows

    s = torch.tensor([[60.0, 59.0, 0.0], [-300.0, -301.0, -299.0]])
    t = torch.tensor([[59.0, 60.0, 1.0], [-299.0, -300.0, -300.0]])
    value, grad = functional_rows(s, t, torch.tensor(1.0), None, None, need_grad=True)
    p, q = torch.softmax(s.double(), -1), torch.softmax(t.double(), -1)
    assert torch.allclose(value.double(), (q * (q.log() - p.log())).sum(-1), atol=1e-5)
    assert torch.allclose(grad.double(), p - q, atol=1e-6)


def _fld(**kw):
    from kdlab.losses import fused_linear_distill

    args = {"student_hidden": torch.randn(5, 3), "student_head_weight": torch.randn(6, 3), "teacher": torch.randn(5, 6)}
    args.update(kw)
    return fused_linear_distill(
        args.pop("student_hidden"), args.pop("student_head_weight"), args.pop("teacher"), **args
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"student_hidden": [1.0]}, r"^student_hidden must be a torch.Tensor of shape \(\.\.\., H\), got list"),
        ({"student_head_weight": [1.0]}, r"^student_head_weight must be a torch.Tensor of shape \(V, H\), got list"),
        ({"student_head_weight": torch.ones(6, 3, dtype=torch.int64)}, r"^student_head_weight must be a floating"),
        ({"student_hidden": torch.ones(5, 3, dtype=torch.int64)}, r"^student_hidden must be a floating"),
        ({"student_hidden": torch.tensor(1.0)}, r"^student_hidden must be \(\.\.\., H\) and student_head_weight"),
        ({"student_head_weight": torch.randn(6, 3, 1)}, r"^student_hidden must be \(\.\.\., H\) and student_head"),
        (
            {"teacher": ([1.0], torch.randn(6, 4))},
            r"^teacher hidden states must be a torch.Tensor of shape \(\.\.\., H_t\)",
        ),
        ({"teacher": (torch.randn(5, 4), [1.0])}, r"^teacher head weight must be a torch.Tensor of shape \(V, H_t\)"),
        (
            {"teacher": (torch.randn(5, 4), torch.ones(6, 4, dtype=torch.int64))},
            r"^teacher head weight must be a float",
        ),
        ({"teacher": (torch.ones(5, 4, dtype=torch.int64), torch.randn(6, 4))}, r"^teacher hidden states must be a f"),
        ({"teacher": (torch.randn(5, 4), torch.randn(6))}, "do not fit"),
        ({"teacher": torch.ones(5, 6, dtype=torch.int64)}, r"^teacher logits must be a floating-point tensor"),
        ({"mask": [True] * 5}, r"mask must be a bool tensor of the token shape \(5,\), got list$"),
        ({"mask": torch.ones(5, dtype=torch.int64)}, r"got torch.int64 \(5,\)$"),
        ({"loss": "jsd", "jsd_beta": "x"}, r"^jsd_beta must be a number"),
        ({"loss": "jsd", "jsd_beta": 0.0}, r"jsd_beta must be in \(0, 1\)"),
        ({"num_items": -3}, r"^num_items must be a finite number >= 0.0"),
        ({"num_items": "x"}, r"^num_items must be a number"),
        ({"ce_weight": -1.0, "labels": torch.zeros(5, dtype=torch.int64)}, r"^ce_weight must be a finite number >= 0"),
        ({"ce_weight": "x"}, r"^ce_weight must be a number"),
        ({"chunk_size": True}, "chunk_size must be a positive integer"),
    ],
)
def test_fused_linear_input_errors_say_what_is_wrong(kw, message):
    with pytest.raises(ValueError, match=message):
        _fld(**kw)


def test_fused_linear_accepts_a_fractional_token_count_and_a_single_token():
    gen = torch.Generator().manual_seed(22)
    hidden, weight, teacher = (
        torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((5, 3), (6, 3), (5, 6))
    )
    total = _dense_kd_reference(hidden, weight, teacher) * 5
    assert torch.allclose(
        _fld(student_hidden=hidden, student_head_weight=weight, teacher=teacher, num_items=0.5), total / 0.5, atol=1e-10
    )
    one = _fld(student_hidden=hidden[0], student_head_weight=weight, teacher=teacher[0])  # (H,): one token
    assert torch.allclose(one, _dense_kd_reference(hidden[:1], weight, teacher[:1]), atol=1e-12)


def test_fused_linear_ptloss_with_tail_samples_matches_the_documented_estimator():
    """Bucket PTLoss (no perturbation on the rest bucket) + r · (mean_j −log p̃_j − H(q̃)) + r · mean_j P(1 − p_j)."""
    from kdlab.losses import fused_linear_distill
    from kdlab.losses.sparse_teacher import SparseTeacher

    gen = torch.Generator().manual_seed(23)
    hidden = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    weight = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    indices = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 0]])
    samples = torch.tensor([[2, 3, 4], [0, 5, 6], [1, 1, 2], [3, 4, 5]])  # outside each row's top k
    values = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    log_rest = torch.log(torch.tensor([0.2, 0.05, 0.4, 0.1], dtype=torch.float64))
    entropy = torch.tensor([1.1, 0.7, 1.3, 0.9], dtype=torch.float64)
    eps = [0.2, -0.1]
    sparse = SparseTeacher(values, indices.int(), log_rest, samples.int(), entropy)
    got = fused_linear_distill(hidden, weight, sparse, loss="ptloss", epsilon=eps)

    def poly(u):
        return sum(e * u ** (m + 1) for m, e in enumerate(eps))

    p = torch.softmax(hidden @ weight.t(), -1)
    r = log_rest.exp()
    q_top = (1 - r)[:, None] * torch.softmax(values, -1)
    p_top = p.gather(-1, indices)
    p_rest = 1 - p_top.sum(-1)
    bucket = (
        (q_top * (q_top.log() - p_top.log())).sum(-1) + r * (r.log() - p_rest.log()) + (q_top * poly(1 - p_top)).sum(-1)
    )
    p_j = p.gather(-1, samples)
    tail = r * ((-(p_j / p_rest[:, None]).log()).mean(-1) - entropy) + r * poly(1 - p_j).mean(-1)
    assert torch.allclose(got, (bucket + tail).mean(), atol=1e-12, rtol=1e-12)


def test_more_defaults_and_reductions():
    from kdlab.losses import kd_loss
    from kdlab.losses.dkd import dkd_terms

    assert torch.allclose(kd_loss(S, T), _ref_kd(4.0).mean(), atol=1e-10)
    tckd, nckd = dkd_terms(S, T, Y)  # temperature 4 by default, each already times T²
    assert torch.allclose(tckd, _ref_dkd_rows(S, T, Y, 1.0, 0.0, 4.0), atol=1e-10)
    assert torch.allclose(nckd, _ref_dkd_rows(S, T, Y, 0.0, 1.0, 4.0), atol=1e-10)
    assert torch.allclose(DKDLoss(reduction="sum")(S, T, Y), _ref_dkd_rows(S, T, Y, 1.0, 8.0, 4.0).sum(), atol=1e-9)


def test_proxy_teacher_input_checks():
    from test_proxy_teacher_bruteforce import closed_form_m1

    from kdlab.losses import proxy_teacher

    eps = torch.tensor([0.3], dtype=torch.float64)
    row = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # one (C,) row is accepted
    assert torch.allclose(proxy_teacher(row, eps), closed_form_m1(row[None], eps)[0], atol=1e-9)
    for bad in (torch.tensor([1, 0, 0]), torch.tensor(1.0), [0.5, 0.5]):
        with pytest.raises(ValueError, match="teacher_probs must"):
            proxy_teacher(bad, eps)
