"""The sparse (top-k + rest bucket) teacher: exactness at k = V, the bucket maths by hand, the on-disk format."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_fused_linear import EPS5, reference_rows

from kdlab.losses import SparseTeacher, fused_linear_distill, sparse_teacher_from_logits
from kdlab.teacher.logit_cache import CacheError
from kdlab.teacher.sparse_cache import (
    SparseLogitCache,
    decode_indices,
    default_tail_samples,
    encode_indices,
    token_bytes,
    write_sparse_cache,
)

V, H = 40, 6
LOSSES = [("kd", None), ("ptloss", [0.7]), ("ptloss", EPS5), ("reverse_kl", None), ("jsd", None)]


def student(seed: int, rows: int = 10):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rows, H, generator=gen),
        torch.randn(V, H, generator=gen),
        torch.randn(rows, V, generator=gen) * 3,
    )


def value_and_grads(h, w, teacher, **opts):
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    value = fused_linear_distill(h, w, teacher, **opts)
    value.backward()
    return value.detach(), h.grad, w.grad


def test_from_logits_keeps_top_k_and_the_exact_rest_mass():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 0.0]])
    sparse = sparse_teacher_from_logits(logits, 2)
    assert sparse.values.dtype == torch.float16 and sparse.indices.dtype == torch.int32
    assert sparse.indices.tolist() == [[3, 0]]
    assert sparse.values.float().tolist() == [[0.0, -1.0]]  # shifted so the row maximum is 0
    p = torch.softmax(logits.double(), -1)[0]
    assert sparse.log_rest.item() == pytest.approx(math.log(p[1] + p[2] + p[4]), rel=1e-6)
    assert sparse_teacher_from_logits(logits, 5).log_rest.item() == float("-inf")


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize(("kind", "eps"), LOSSES)
def test_k_equal_to_vocabulary_equals_the_dense_teacher(kind, eps, temperature):
    h, w, t = student(0)
    sparse = sparse_teacher_from_logits(t, V, values_dtype=torch.float32)
    opts = {"loss": kind, "epsilon": eps, "temperature": temperature, "chunk_size": 4}
    dense = value_and_grads(h, w, t, **opts)
    bucketed = value_and_grads(h, w, sparse, **opts)
    assert bucketed[0].item() == pytest.approx(dense[0].item(), rel=1e-5)
    torch.testing.assert_close(bucketed[1], dense[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bucketed[2], dense[2], rtol=1e-4, atol=1e-6)


def test_float16_values_stay_close_to_the_dense_teacher():
    h, w, t = student(1)
    dense = value_and_grads(h, w, t, loss="ptloss", epsilon=EPS5)
    sparse = value_and_grads(h, w, sparse_teacher_from_logits(t, V), loss="ptloss", epsilon=EPS5)
    assert sparse[0].item() == pytest.approx(dense[0].item(), rel=2e-3)


def test_rest_bucket_by_hand():
    # teacher probabilities (0.5, 0.3, 0.15, 0.05), k = 2: buckets Q = (0.5, 0.3, rest 0.2);
    # student logits 0: p = 1/4 each, buckets P = (0.25, 0.25, rest 0.5).
    # KL(Q || P) = 0.5 ln 2 + 0.3 ln 1.2 + 0.2 ln 0.4 = 0.3465736 + 0.0546968 - 0.1832581 = 0.2180123
    teacher = sparse_teacher_from_logits(torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log(), 2)
    assert teacher.log_rest.item() == pytest.approx(math.log(0.2), rel=1e-6)
    h = torch.zeros(1, 4, requires_grad=True)
    value = fused_linear_distill(h, torch.eye(4), teacher, loss="kd")
    value.backward()
    assert value.item() == pytest.approx(0.2180123, abs=2e-4)  # float16 values: ~1e-4
    # top-k classes: p - Q = (-0.25, -0.05); rest classes share p_j (1 - Q_rest / P_rest) = 0.25 * 0.6 = 0.15
    torch.testing.assert_close(h.grad, torch.tensor([[-0.25, -0.05, 0.15, 0.15]]), rtol=0, atol=3e-4)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("kind", "eps"), LOSSES)
def test_bucket_loss_matches_a_materialised_bucket_reference(kind, eps, temperature):
    h, w, t = student(2, rows=8)
    sparse = sparse_teacher_from_logits(t, 5, values_dtype=torch.float32)
    fused = value_and_grads(h, w, sparse, loss=kind, epsilon=eps, temperature=temperature, chunk_size=3)

    def bucket_reference(h_, w_):
        p = torch.softmax((h_ @ w_.t()).double() / temperature, -1)
        idx = sparse.indices.long()
        p_top = p.gather(1, idx)
        p_buckets = torch.cat([p_top, 1 - p_top.sum(1, keepdim=True)], 1)
        q_top = torch.softmax(sparse.values.double(), -1) * (1 - sparse.log_rest.double().exp())[:, None]
        q_buckets = torch.cat([q_top, sparse.log_rest.double().exp()[:, None]], 1)
        # tempering the buckets: softmax(log Q / T); reference_rows divides by T itself, so pass log Q
        rows = reference_rows(kind, p_buckets.log() * temperature, q_buckets.log(), temperature, eps)
        return rows.mean()

    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref_value = bucket_reference(hh, ww)
    ref_value.backward()
    assert fused[0].item() == pytest.approx(ref_value.item(), rel=1e-4)
    torch.testing.assert_close(fused[1], hh.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused[2], ww.grad, rtol=1e-4, atol=1e-6)


def test_sparse_teacher_input_errors():
    h, w, t = student(3, rows=4)
    good = sparse_teacher_from_logits(t, 3)
    with pytest.raises(ValueError, match="indices must be in"):
        fused_linear_distill(h, w[:20], sparse_teacher_from_logits(t, 3))
    repeated = SparseTeacher(good.values, good.indices[:, [0, 0, 1]], good.log_rest)
    with pytest.raises(ValueError, match="repeat"):
        fused_linear_distill(h, w, repeated)
    with pytest.raises(ValueError, match="per-class epsilon"):
        fused_linear_distill(h, w, good, loss="ptloss", epsilon=torch.zeros(V, 2))
    with pytest.raises(ValueError, match="token shape"):
        fused_linear_distill(h[:3], w, good)
    with pytest.raises(ValueError, match="log_rest"):
        SparseTeacher(good.values, good.indices, good.log_rest[:2])


@pytest.mark.parametrize("vocab", [2, 256, 257, 2048, 32000, 128256, 300000])
def test_index_packing_round_trips(vocab):
    gen = torch.Generator().manual_seed(vocab)
    idx = torch.randint(0, vocab, (5, 13), generator=gen, dtype=torch.int32)
    idx[0, 0], idx[0, 1] = vocab - 1, 0
    packed = encode_indices(idx, vocab)
    bits = (vocab - 1).bit_length()
    assert packed.dtype == torch.uint8 and packed.shape == (5, math.ceil(13 * bits / 8))
    assert torch.equal(decode_indices(packed, vocab, 13), idx)


def test_index_packing_layout_by_hand():
    """11 bits per index at 2,048 classes, least significant bit first: 1 = bit 0, 2047 = bits 11..21."""
    packed = encode_indices(torch.tensor([[1, 2047]]), 2048)
    assert packed.tolist() == [[0b00000001, 0b11111000, 0b00111111]]
    assert default_tail_samples(64, 2048) == 54 and token_bytes(64, 54, 2048) == 299
    assert default_tail_samples(64, 32000) == 22 and token_bytes(64, 22, 32000) == 298
    assert default_tail_samples(64, 128256) == 12 and token_bytes(64, 12, 128256) == 298
    assert default_tail_samples(64, 64) == 0 and default_tail_samples(200, 2048) == 0


def synthetic_sparse(rows: int, vocab: int, k: int) -> SparseTeacher:
    gen = torch.Generator().manual_seed(rows)
    step = vocab // k  # k distinct classes per row, spread over the whole vocabulary
    indices = (torch.arange(k) * step + torch.arange(rows)[:, None] * 7) % vocab
    values = (torch.randn(rows, k, generator=gen) * 3).sort(-1, descending=True).values
    return SparseTeacher((values - values[:, :1]).half(), indices.int(), -torch.rand(rows, generator=gen) * 5)


def test_cache_round_trip_shards_fingerprint_and_size(tmp_path):
    vocab, k = 128256, 64
    sparse = synthetic_sparse(400, vocab, k)
    assert int(sparse.indices.max()) >= 1 << 16  # the 17th bit is exercised
    fp = {"data": "d" * 64, "tokenizer": "t" * 64, "teacher": "m" * 64}
    parts = [SparseTeacher(sparse.values[:150], sparse.indices[:150], sparse.log_rest[:150])]
    parts.append(SparseTeacher(sparse.values[150:], sparse.indices[150:], sparse.log_rest[150:]))
    out = write_sparse_cache(tmp_path / "cache", parts, vocab_size=vocab, fingerprint=fp, rows_per_shard=128)
    index = json.loads((out / "index.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [128, 128, 128, 16]
    cache = SparseLogitCache(out, expected_fingerprint=fp)
    assert len(cache) == 400 and cache.k == k and cache.vocab_size == vocab
    back = cache.read(100, 300)  # crosses two shard boundaries
    assert torch.equal(back.indices, sparse.indices[100:300].long())
    assert torch.equal(back.values, sparse.values[100:300])
    assert torch.equal(back.log_rest, sparse.log_rest[100:300])
    # fp16 values + 64 indices of 17 bits + fp32 log_rest = 128 + 136 + 4 = 268 bytes/token
    assert cache.payload_bytes_per_token == 268
    assert cache.bytes_per_token < 300  # with the safetensors headers and index.json, here ~1 KB per shard
    with pytest.raises(CacheError, match="made for other tokenizer"):
        SparseLogitCache(out, expected_fingerprint={**fp, "tokenizer": "x" * 64})
    with pytest.raises(CacheError, match="exists"):
        write_sparse_cache(out, sparse, vocab_size=vocab, fingerprint=fp)
    assert not list(tmp_path.glob(".*"))  # no temporary directory left behind
    small = write_sparse_cache(tmp_path / "v32k", synthetic_sparse(10, 32000, k), vocab_size=32000, fingerprint=fp)
    assert SparseLogitCache(small).payload_bytes_per_token == 128 + 120 + 4  # 15 bits per index
    # a cache of the first format (16-bit index halves) is refused with what to do, not misread
    index = json.loads((small / "index.json").read_text())
    (small / "index.json").write_text(json.dumps({**index, "format": "kdlab-sparse-lm-1"}))
    with pytest.raises(CacheError, match="format 'kdlab-sparse-lm-1', this kdlab reads 'kdlab-sparse-lm-2'; re-create"):
        SparseLogitCache(small)


def test_cached_teacher_gives_the_same_loss(tmp_path):
    h, w, t = student(4)
    sparse = sparse_teacher_from_logits(t, 8)
    write_sparse_cache(tmp_path / "c", sparse, vocab_size=V, fingerprint={"teacher": "abc"})
    loaded = SparseLogitCache(tmp_path / "c").read()
    a = fused_linear_distill(h, w, sparse, loss="jsd")
    b = fused_linear_distill(h, w, loaded, loss="jsd")
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_failed_write_leaves_nothing(tmp_path):
    good = synthetic_sparse(8, 1000, 4)
    bad = SparseTeacher(good.values, good.indices + 5000, good.log_rest)  # indices outside the vocabulary
    with pytest.raises(ValueError, match="indices must be in"):
        write_sparse_cache(tmp_path / "c", [good, bad], vocab_size=1000, fingerprint={}, rows_per_shard=4)
    assert list(tmp_path.iterdir()) == []
