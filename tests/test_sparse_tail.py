"""Tail samples of the sparse teacher: KL(q ‖ p) = bucket KL + r · KL(q̃ ‖ p̃), the tail term estimated from classes
drawn from the teacher's tail. Checked by hand, against the dense loss when the draws match q̃ exactly, against
autograd of the estimator written out, for unbiasedness, and through the on-disk cache."""

from __future__ import annotations

import math

import pytest
import torch
from test_fused_linear import EPS5
from test_sparse_teacher import V, student, value_and_grads

from kdlab.losses import SparseTeacher, fused_linear_distill, sparse_teacher_from_logits
from kdlab.teacher.sparse_cache import SparseLogitCache, write_sparse_cache


def with_tail(sparse: SparseTeacher, samples: list[list[int]], q: torch.Tensor) -> SparseTeacher:
    """``sparse`` plus the given draws and the exact entropy of the renormalised tail of q (R, V)."""
    entropy = []
    for row in range(q.shape[0]):
        tail = torch.ones(q.shape[1], dtype=torch.bool)
        tail[sparse.indices[row].long()] = False
        q_tail = q[row, tail] / q[row, tail].sum()
        entropy.append(-(q_tail * q_tail.log()).sum())
    return SparseTeacher(sparse.values, sparse.indices, sparse.log_rest, torch.tensor(samples), torch.stack(entropy))


def test_tail_samples_by_hand():
    # teacher (0.5, 0.3, 0.15, 0.05), k = 2: rest mass r = 0.2, tail q̃ = (0.75, 0.25), H(q̃) = 0.5623351.
    # Student logits 0: p = 1/4, p̃ = (1/2, 1/2). Draws (2, 2, 2, 3) match q̃ exactly, so the estimate is the KL:
    # bucket KL 0.2180123 + 0.2 · (ln 2 − 0.5623351) = 0.2441747 = KL(q ‖ p) = 0.5 ln 2 + 0.3 ln 1.2 + 0.15 ln 0.6
    # + 0.05 ln 0.2; its gradient w.r.t. the logits is p − q on every class.
    q = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    teacher = with_tail(sparse_teacher_from_logits(q.log(), 2), [[2, 2, 2, 3]], q)
    assert teacher.tail_entropy.item() == pytest.approx(0.5623351, abs=1e-7)
    h = torch.zeros(1, 4, requires_grad=True)
    value = fused_linear_distill(h, torch.eye(4), teacher, loss="kd")
    value.backward()
    assert value.item() == pytest.approx(0.2441747, abs=2e-4)  # float16 stored values: ~1e-4
    torch.testing.assert_close(h.grad, torch.tensor([[-0.25, -0.05, 0.10, 0.20]]), rtol=0, atol=3e-4)
    # draws that miss q̃ give another value: (3, 3, 3, 3) → 0.2180123 + 0.2 · (ln 2 − 0.5623351) as well (p̃ is
    # uniform), but the gradient now pushes all the tail mass to class 3
    h.grad = None
    other = with_tail(sparse_teacher_from_logits(q.log(), 2), [[3, 3, 3, 3]], q)
    fused_linear_distill(h, torch.eye(4), other, loss="kd").backward()
    torch.testing.assert_close(h.grad, torch.tensor([[-0.25, -0.05, 0.25, 0.05]]), rtol=0, atol=3e-4)


def designed_teacher(rows: int = 4):
    """Teachers over V = 8 classes whose tail (6 classes outside the top 2) has probabilities in eighths of r, so
    that 8 draws can match it exactly."""
    gen = torch.Generator().manual_seed(0)
    q = torch.zeros(rows, 8, dtype=torch.float64)
    draws = []
    for row in range(rows):
        top = torch.randperm(8, generator=gen)[:2]
        rest = [c for c in range(8) if c not in top.tolist()]
        counts = torch.tensor([1, 2, 1, 3, 1, 0])[torch.randperm(6, generator=gen)]  # sums to 8, one class unseen
        r = 0.05 + 0.08 * row  # small enough that the two top classes stay the top 2
        q[row, rest] = r * counts.double() / 8 + 1e-12  # the unseen class: (almost) no mass
        q[row, top] = (1 - r) * torch.tensor([0.7, 0.3], dtype=torch.float64)
        draws.append([c for c, n in zip(rest, counts.tolist(), strict=True) for _ in range(n)])
    return q / q.sum(-1, keepdim=True), draws


@pytest.mark.parametrize(("kind", "eps"), [("kd", None), ("ptloss", [0.7]), ("ptloss", EPS5)])
def test_draws_that_match_the_tail_give_the_dense_loss_and_gradients(kind, eps):
    q, draws = designed_teacher()
    teacher = with_tail(sparse_teacher_from_logits(q.log(), 2, values_dtype=torch.float32), draws, q)
    gen = torch.Generator().manual_seed(1)
    h, w = torch.randn(4, 5, generator=gen), torch.randn(8, 5, generator=gen)
    sampled = value_and_grads(h, w, teacher, loss=kind, epsilon=eps, chunk_size=3)
    dense = value_and_grads(h, w, q.log().float(), loss=kind, epsilon=eps, chunk_size=3)
    assert sampled[0].item() == pytest.approx(dense[0].item(), rel=1e-5)
    torch.testing.assert_close(sampled[1], dense[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sampled[2], dense[2], rtol=1e-4, atol=1e-6)
    # the rest bucket alone is another loss: the samples matter
    bucket = fused_linear_distill(h, w, teacher.without_tail_samples(), loss=kind, epsilon=eps)
    assert abs(bucket.item() - dense[0].item()) > 1e-3


@pytest.mark.parametrize(("kind", "eps"), [("kd", None), ("ptloss", EPS5)])
def test_the_estimator_matches_autograd_of_its_definition(kind, eps):
    h, w, t = student(9, rows=7)
    gen = torch.Generator().manual_seed(3)
    sparse = sparse_teacher_from_logits(t, 5, values_dtype=torch.float32, tail_samples=6, generator=gen)
    fused = value_and_grads(h, w, sparse, loss=kind, epsilon=eps, chunk_size=3)

    hh, ww = h.clone().double().requires_grad_(True), w.clone().double().requires_grad_(True)
    log_p = torch.log_softmax(hh @ ww.t(), -1)
    total = []
    for row in range(7):
        top = sparse.indices[row].long()
        tail = torch.ones(V, dtype=torch.bool)
        tail[top] = False
        r = sparse.log_rest[row].double().exp()
        q_top = (1 - r) * torch.softmax(sparse.values[row].double(), -1)
        p_top, p_rest = log_p[row, top].exp(), log_p[row, tail].exp().sum()
        value = (q_top * (q_top / p_top).log()).sum() + r * (r / p_rest).log()  # KL over the k + 1 buckets
        draws = sparse.tail_samples[row].long()
        log_p_tilde = log_p[row, draws] - p_rest.log()
        value = value + r * (-log_p_tilde.mean() - sparse.tail_entropy[row].double())
        if eps is not None:  # top k: q_i f(p_i); tail: r · mean over the draws of f(p_j)
            f = lambda p: sum(e * (1 - p) ** (m + 1) for m, e in enumerate(eps))  # noqa: E731
            value = value + (q_top * f(p_top)).sum() + r * f(log_p[row, draws].exp()).mean()
        total.append(value)
    ref = torch.stack(total).mean()
    ref.backward()
    assert fused[0].item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(fused[1], hh.grad.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused[2], ww.grad.float(), rtol=1e-4, atol=1e-6)


def test_draws_follow_the_tail_and_the_estimate_is_unbiased():
    h, w, t = student(10, rows=3)
    gen = torch.Generator().manual_seed(4)
    sparse = sparse_teacher_from_logits(t.double(), 4, values_dtype=torch.float32, tail_samples=40000, generator=gen)
    q = torch.softmax(t.double(), -1)
    for row in range(3):
        tail = torch.ones(V, dtype=torch.bool)
        tail[sparse.indices[row].long()] = False
        q_tail = torch.where(tail, q[row], 0.0) / q[row, tail].sum()
        freq = torch.bincount(sparse.tail_samples[row].long(), minlength=V).double() / 40000
        assert freq[~tail].sum() == 0  # never a top-k class
        assert (freq - q_tail).abs().max() <= 1 / 40000 + 1e-12  # systematic sampling: every count within one
        entropy = -(q_tail[tail] * q_tail[tail].log()).sum()
        assert sparse.tail_entropy[row].item() == pytest.approx(entropy.item(), rel=1e-5)
    for kind, eps in (("kd", None), ("ptloss", EPS5)):
        dense = fused_linear_distill(h, w, t, loss=kind, epsilon=eps).item()
        bucket = fused_linear_distill(h, w, sparse.without_tail_samples(), loss=kind, epsilon=eps).item()
        estimate = fused_linear_distill(h, w, sparse, loss=kind, epsilon=eps).item()
        assert estimate == pytest.approx(dense, rel=1e-3) and abs(bucket - dense) > 50 * abs(estimate - dense)


def test_few_draws_are_unbiased_over_the_random_offsets():
    """Systematic sampling with s = 3: each class's mean count over many offsets is s · q̃_j."""
    logits = torch.tensor([[4.0, 1.0, 0.5, 0.0, -1.0, 0.2, 2.0]]).expand(20000, -1)
    sparse = sparse_teacher_from_logits(logits, 2, tail_samples=3, generator=torch.Generator().manual_seed(6))
    q = torch.softmax(logits[0].double(), -1)
    q_tail = q.clone()
    q_tail[[0, 6]] = 0  # the top 2
    q_tail /= q_tail.sum()
    freq = torch.bincount(sparse.tail_samples.long().flatten(), minlength=7).double() / sparse.tail_samples.numel()
    torch.testing.assert_close(freq, q_tail, rtol=0, atol=0.01)  # 60,000 draws
    counts = torch.stack([(sparse.tail_samples.long() == c).sum(-1) for c in range(7)], -1).double()
    assert ((counts - 3 * q_tail).abs() < 1).all()  # and every row's count is within one of its expectation


def test_k_equal_to_vocabulary_samples_carry_no_weight():
    h, w, t = student(11)
    sparse = sparse_teacher_from_logits(t, V, values_dtype=torch.float32, tail_samples=3)
    assert torch.equal(sparse.tail_entropy, torch.zeros(10))
    for kind, eps in (("kd", None), ("ptloss", EPS5)):
        dense = value_and_grads(h, w, t, loss=kind, epsilon=eps)
        sampled = value_and_grads(h, w, sparse, loss=kind, epsilon=eps)
        assert sampled[0].item() == pytest.approx(dense[0].item(), rel=1e-5)
        torch.testing.assert_close(sampled[1], dense[1], rtol=1e-4, atol=1e-6)


def test_tail_sample_errors():
    h, w, t = student(12, rows=4)
    sparse = sparse_teacher_from_logits(t, 3, tail_samples=2)
    for opts in ({"loss": "kd", "temperature": 2.0}, {"loss": "reverse_kl"}, {"loss": "jsd"}):
        with pytest.raises(ValueError, match="draws at temperature 1"):
            fused_linear_distill(h, w, sparse, **opts)
    fused_linear_distill(h, w, sparse.without_tail_samples(), loss="kd", temperature=2.0)  # the bucket loss works
    with pytest.raises(ValueError, match="both tail_samples and tail_entropy"):
        SparseTeacher(sparse.values, sparse.indices, sparse.log_rest, sparse.tail_samples)
    with pytest.raises(ValueError, match="tail_samples must be integers"):
        SparseTeacher(sparse.values, sparse.indices, sparse.log_rest, sparse.tail_samples[:2], sparse.tail_entropy)
    outside = SparseTeacher(
        sparse.values, sparse.indices, sparse.log_rest, sparse.tail_samples + V, sparse.tail_entropy
    )
    with pytest.raises(ValueError, match="tail samples must be in"):
        fused_linear_distill(h, w, outside)
    with pytest.raises(ValueError, match="tail_samples must be a non-negative"):
        sparse_teacher_from_logits(t, 3, tail_samples=-1)


def test_cache_round_trip_with_tail_samples(tmp_path):
    vocab, k, s = 70000, 8, 5  # above 65,536 classes: 17 bits per index
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(30, vocab, generator=gen) * 3
    sparse = sparse_teacher_from_logits(logits, k, tail_samples=s, generator=gen)
    assert int(sparse.tail_samples.max()) >= 1 << 16
    out = write_sparse_cache(
        tmp_path / "c",
        [sparse.rows(slice(0, 11)), sparse.rows(slice(11, 30))],
        vocab_size=vocab,
        fingerprint={"teacher": "t"},
        rows_per_shard=16,
    )
    cache = SparseLogitCache(out)
    assert (cache.tail_samples, cache.stored_tail_samples) == (s, s)
    back = cache.read(5, 25)  # across the shard boundary
    assert torch.equal(back.tail_samples, sparse.tail_samples[5:25].long())
    assert torch.equal(back.tail_entropy, sparse.tail_entropy[5:25])
    # by hand: 8 float16 values (16 B), 8 · 17 bits of indices (17 B), log_rest (4 B); 5 · 17 bits of samples
    # (85 bits: 11 B) and the entropy (4 B)
    assert cache.payload_bytes_per_token == 16 + 17 + 4 + 11 + 4
    plain = SparseLogitCache(out, use_tail_samples=False)
    assert plain.tail_samples == 0 and not plain.read(0, 3).has_tail_samples
    with pytest.raises(ValueError, match="same k and tail samples"):
        write_sparse_cache(
            tmp_path / "mixed",
            [sparse.rows(slice(0, 3)), sparse.without_tail_samples()],
            vocab_size=vocab,
            fingerprint={},
        )
    assert not (tmp_path / "mixed").exists()
    assert math.isfinite(fused_linear_distill(torch.randn(20, 4), torch.randn(vocab, 4), back).item())


def test_tail_samples_config_is_for_language_models():
    from kdlab.config import ConfigError, load_config

    assert load_config({"task": "causal_lm", "cache": {"tail_samples": 0}}).cache.tail_samples == 0
    with pytest.raises(ConfigError, match=r"^config: cache\.tail_samples is for task: causal_lm only$"):
        load_config({"cache": {"tail_samples": 4}})
    with pytest.raises(ConfigError, match=r"cache\.tail_samples"):
        load_config({"task": "causal_lm", "cache": {"tail_samples": -1}})
