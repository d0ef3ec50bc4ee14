"""A sparse teacher for language models: per token the top-k logits, their indices and the mass outside them.

The losses see the teacher as a distribution over k + 1 *buckets*: the k stored classes and one "rest"
bucket holding everything else. At temperature 1,

    Q_i    = (1 − r) · softmax(values)_i      (i = 1..k)       r = exp(log_rest)
    Q_rest = r

and the student is aggregated into the same buckets: P_i = p_s[index_i], P_rest = 1 − Σ_i P_i (computed as
a log-sum-exp over the classes outside the top k, so a tiny rest mass keeps its precision). KD, PTLoss,
reverse KL and JSD are then evaluated over these k + 1 buckets, the rest bucket counted as one class.
The student's gradient inside the rest bucket is shared out in proportion to its own probabilities.

Temperature T ≠ 1 is applied to the *bucket* log-probabilities of both sides: Q_T ∝ Q^(1/T) over the k + 1
buckets and P_T the buckets of softmax(s / T). The tail's shape is not stored, so the tempered teacher
over the full vocabulary cannot be recovered; tempering the buckets is the exact operation on what is
stored. With k = vocabulary (r = 0) every definition equals the dense loss exactly, at every T.

``values`` are stored shifted so each row's maximum is 0 (softmax does not change), which keeps float16's
relative precision on the largest probabilities.

**Tail samples** (optional). The bucket loss is exact on what is stored, but it teaches the student only *how
much* mass the tail gets, not how to spread it; when the top k holds most but not nearly all of the
teacher's mass (small LMs), the student's tail stays untrained and its perplexity on tokens outside the
teacher's top k suffers. Forward KL splits exactly as

    KL(q ‖ p) = KL over the k + 1 buckets + r · KL(q̃ ‖ p̃),    q̃, p̃ = q, p restricted to the tail and renormalised,

and r · KL(q̃ ‖ p̃) = r · (E_{j∼q̃}[−log p̃_j] − H(q̃)). ``tail_samples`` (..., s) are s classes drawn from q̃
when the cache is written (systematic sampling: each class's count is within one of s · q̃_j) and
``tail_entropy`` (...) is H(q̃); the losses then add r · (mean_j −log p̃_j − H(q̃)), an unbiased estimate
of the tail term in value and gradient (s · 2 bytes + 4 per token). PTLoss's
perturbation Σ_k q_k Σ_m ε_m (1 − p_k)^m is linear in q too: its tail part r · E_{q̃}[Σ_m ε_m (1 − p_j)^m] is
estimated from the same samples (and the rest bucket's own perturbation term is dropped). Samples are draws
at temperature 1, so they serve ``kd`` and ``ptloss`` at T = 1 only; reverse KL and JSD are not linear in q.
With k = V the tail is empty (r = 0) and the samples carry no weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


@dataclass(frozen=True)
class SparseTeacher:
    """Top-k teacher logits ``values`` (..., k), their class ``indices`` (..., k) and ``log_rest`` (...).

    ``log_rest`` is the log of the teacher's probability mass outside the top k at temperature 1
    (−inf when the k classes hold everything, e.g. k = vocabulary). Leading dims are tokens.
    """

    values: Tensor
    indices: Tensor
    log_rest: Tensor
    tail_samples: Tensor | None = None  # (..., s) classes drawn from the teacher's tail (outside the top k)
    tail_entropy: Tensor | None = None  # (...) entropy of the renormalised tail, so the loss value is a KL

    def __post_init__(self) -> None:
        v, i, r = self.values, self.indices, self.log_rest
        if not all(isinstance(x, Tensor) for x in (v, i, r)):
            raise ValueError("SparseTeacher needs three tensors: values, indices, log_rest")
        samples, entropy = self.tail_samples, self.tail_entropy
        if (samples is None) != (entropy is None):
            raise ValueError("SparseTeacher needs both tail_samples and tail_entropy, or neither")
        if samples is not None and (
            not isinstance(samples, Tensor)
            or samples.dtype not in _INT_DTYPES
            or samples.dim() != v.dim()
            or samples.shape[:-1] != v.shape[:-1]
            or samples.shape[-1] < 1
        ):
            raise ValueError(
                f"SparseTeacher.tail_samples must be integers of shape {(*tuple(v.shape[:-1]), 's')}, got "
                f"{getattr(samples, 'dtype', type(samples).__name__)} {tuple(getattr(samples, 'shape', ()))}"
            )
        if entropy is not None and (
            not isinstance(entropy, Tensor) or not entropy.is_floating_point() or entropy.shape != v.shape[:-1]
        ):
            raise ValueError(f"SparseTeacher.tail_entropy must be floating point of shape {tuple(v.shape[:-1])}")
        if not v.is_floating_point() or v.dim() < 1 or v.shape[-1] < 1:
            raise ValueError(
                f"SparseTeacher.values must be floating point of shape (..., k), got {v.dtype} {tuple(v.shape)}"
            )
        if i.dtype not in _INT_DTYPES or i.shape != v.shape:
            raise ValueError(
                f"SparseTeacher.indices must be integers of the values' shape {tuple(v.shape)}, "
                f"got {i.dtype} {tuple(i.shape)}"
            )
        if not r.is_floating_point() or r.shape != v.shape[:-1]:
            raise ValueError(
                f"SparseTeacher.log_rest must be floating point of shape {tuple(v.shape[:-1])}, got {tuple(r.shape)}"
            )

    @property
    def k(self) -> int:
        return self.values.shape[-1]

    @property
    def lead_shape(self) -> torch.Size:
        return self.values.shape[:-1]

    @property
    def has_tail_samples(self) -> bool:
        return self.tail_samples is not None

    def tensors(self) -> tuple[Tensor, ...]:
        """values, indices, log_rest[, tail_samples, tail_entropy]: what ``map`` and ``cat`` work on."""
        tail = (self.tail_samples, self.tail_entropy) if self.has_tail_samples else ()
        return (self.values, self.indices, self.log_rest, *tail)

    def map(self, fn: Callable[[Tensor], Tensor]) -> SparseTeacher:
        """The teacher with ``fn`` applied to every tensor (row selection, reshape of leading dims, device)."""
        return SparseTeacher(*(fn(t) for t in self.tensors()))

    def rows(self, index) -> SparseTeacher:
        """Token rows ``index`` (a slice or an index tensor) of the leading dimension."""
        return self.map(lambda t: t[index])

    @staticmethod
    def cat(parts: list[SparseTeacher]) -> SparseTeacher:
        """Rows of several teachers, in order (all with or all without tail samples)."""
        if len({p.has_tail_samples for p in parts}) > 1:
            raise ValueError("cannot concatenate sparse teachers with and without tail samples")
        return SparseTeacher(*(torch.cat(ts) for ts in zip(*(p.tensors() for p in parts), strict=True)))

    def without_tail_samples(self) -> SparseTeacher:
        return SparseTeacher(self.values, self.indices, self.log_rest)

    def flat(self) -> SparseTeacher:
        """The same teacher with the leading dims flattened into rows."""
        lead = self.values.dim() - 1
        return self.map(lambda t: t.reshape(-1, *t.shape[lead:]))

    def to(self, device: torch.device | str) -> SparseTeacher:
        return self.map(lambda t: t.to(device))

    def check_vocab(self, vocab_size: int) -> None:
        """One ValueError if an index is outside the vocabulary or repeated within a row."""
        if self.k > vocab_size:
            raise ValueError(f"sparse teacher has k={self.k} classes per token but the vocabulary has {vocab_size}")
        if self.indices.numel() == 0:
            return
        lo, hi = int(self.indices.min()), int(self.indices.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"sparse teacher indices must be in [0, {vocab_size - 1}] (the student head's vocabulary), "
                f"got values from {lo} to {hi}: do teacher and student share a tokenizer?"
            )
        ordered = self.indices.reshape(-1, self.k).sort(dim=-1).values
        if self.k > 1 and bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise ValueError("sparse teacher indices repeat a class within a token")
        if self.has_tail_samples and self.tail_samples.numel():
            lo, hi = int(self.tail_samples.min()), int(self.tail_samples.max())
            if lo < 0 or hi >= vocab_size:
                raise ValueError(f"sparse teacher tail samples must be in [0, {vocab_size - 1}], got {lo} to {hi}")


def tail_samples_serve(loss: str, temperature: float) -> bool:
    """Tail samples are draws at T = 1 for the expectations in KD and PTLoss; other losses use the rest bucket."""
    return loss in ("kd", "ptloss") and temperature == 1.0


@torch.no_grad()
def sparse_teacher_from_logits(
    logits: Tensor,
    k: int,
    values_dtype: torch.dtype = torch.float16,
    chunk_rows: int = 1024,
    *,
    tail_samples: int = 0,
    generator: torch.Generator | None = None,
) -> SparseTeacher:
    """Keep the top-k of dense teacher logits (..., V); ``log_rest`` is computed exactly (log-sum-exp of the rest).

    ``tail_samples`` = s > 0 also draws s classes per token from the teacher's renormalised tail (systematic
    sampling, offsets from ``generator``) and records the tail's entropy; see the module docstring.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise ValueError(f"logits must be a floating-point tensor of shape (..., V), got {logits!r:.60}")
    vocab = logits.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an integer in [1, {vocab}] (the vocabulary), got {k!r}")
    if not isinstance(tail_samples, int) or tail_samples < 0:
        raise ValueError(f"tail_samples must be a non-negative integer, got {tail_samples!r}")
    rows = logits.reshape(-1, vocab)
    work = torch.float64 if rows.dtype == torch.float64 else torch.float32
    parts = []
    for start in range(0, rows.shape[0], chunk_rows):
        x = rows[start : start + chunk_rows].to(work)
        top, idx = x.topk(k, dim=-1)
        lse = torch.logsumexp(x, dim=-1)
        tail = x.scatter(-1, idx, float("-inf"))
        rest = torch.logsumexp(tail, dim=-1) - lse
        values = (top - top[:, :1]).clamp(min=torch.finfo(values_dtype).min).to(values_dtype)
        extra = _draw_tail(tail, idx, tail_samples, generator) if tail_samples else ()
        parts.append(SparseTeacher(values, idx.to(torch.int32), rest.float(), *extra))
    if not parts:
        empty = rows.new_zeros((0, k))
        extra = (torch.zeros(0, tail_samples, dtype=torch.int32), rows.new_zeros(0)) if tail_samples else ()
        parts = [SparseTeacher(empty.to(values_dtype), empty.int(), rows.new_zeros(0).float(), *extra)]
    lead = logits.shape[:-1]
    return SparseTeacher.cat(parts).map(lambda t: t.reshape(*lead, *t.shape[1:]))


def _draw_tail(tail_logits: Tensor, top: Tensor, s: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """s draws per row from q̃ = softmax over the tail classes, and q̃'s entropy (0 if the tail is empty).

    Systematic sampling: one uniform offset u per row, draws at the quantiles (u + i) / s of q̃'s cumulative
    distribution. Every class's expected count is s · q̃_j (unbiased, as with independent draws) and its actual
    count is within one of that, so the estimate's variance is far below that of s independent draws.
    """
    empty = torch.isneginf(tail_logits).all(dim=-1, keepdim=True)  # k = V (or all the rest underflows)
    log_q = torch.log_softmax(tail_logits.masked_fill(empty, 0.0).double(), dim=-1)
    q = log_q.exp()
    entropy = -(q * log_q.masked_fill(torch.isneginf(log_q), 0.0)).sum(-1)
    cdf = q.cumsum(-1)
    offset = 1.0 - torch.rand(q.shape[0], 1, generator=generator, dtype=torch.float64)  # (0, 1]: never a 0-mass class
    quantiles = (offset + torch.arange(s, dtype=torch.float64)).div_(s).mul_(cdf[:, -1:])
    samples = torch.searchsorted(cdf, quantiles.to(cdf.device)).clamp_(max=q.shape[1] - 1)
    samples = torch.where(empty, top[:, :1], samples)  # no tail: any class, its weight r is 0
    return samples.to(torch.int32), entropy.masked_fill(empty.squeeze(-1), 0.0).float()


def teacher_bucket_logits(values: Tensor, log_rest: Tensor, inv_t: float) -> Tensor:
    """(R, k + 1) tempered teacher bucket log-probabilities (up to a constant per row)."""
    log_top = torch.log_softmax(values, dim=-1) + torch.log1p(-log_rest.exp()).unsqueeze(-1)
    buckets = torch.cat([log_top, log_rest.unsqueeze(-1)], dim=-1)
    return buckets if inv_t == 1.0 else buckets * inv_t


def student_buckets(z: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bucket log-probabilities (R, k + 1) of tempered student logits z (R, V), plus what the gradient needs.

    Returns (log P, z with the top-k set to −inf, log-sum-exp of the rest (R, 1)).
    """
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    top = z.gather(-1, indices)
    z_rest = z.scatter(-1, indices, float("-inf"))
    lse_rest = torch.logsumexp(z_rest, dim=-1, keepdim=True)
    return torch.cat([top - lse, lse_rest - lse], dim=-1), z_rest, lse_rest


def tail_sample_terms(
    z: Tensor, log_rest: Tensor, samples: Tensor, entropy: Tensor, lse_rest: Tensor, epsilon: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The sampled tail term of KD (and PTLoss) at T = 1, rows (R,), from student logits z (R, V).

    Returns (value, weight on the rest bucket's gradient share, per-sample weights (R, s), PTLoss's
    coefficient of the student's softmax or None). The gradient of the value w.r.t. z is
    r · p̃ (tail classes, added through the rest bucket) − Σ_samples weight · e_j − coefficient · p.
    """
    r = log_rest.exp().unsqueeze(-1)  # (R, 1); 0 where the tail is empty
    s = samples.shape[-1]
    z_s = z.gather(-1, samples)
    neg_log_ptilde = torch.where(r > 0, lse_rest - z_s, 0.0)  # −log p̃_j; the rest lse is −inf with no tail
    value = r.squeeze(-1) * (neg_log_ptilde.mean(-1) - entropy)
    sample_weight = r.expand(-1, s) / s  # d/dz of r · mean(−log p̃_j): −r/s at each draw j (plus r · p̃)
    p_coef = None
    if epsilon is not None:  # r · mean_j Σ_m ε_m (1 − p_j)^m, p_j the full softmax
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        p_j = (z_s - lse).exp()
        u = 1 - p_j
        powers = torch.arange(1, epsilon.shape[0] + 1, dtype=z.dtype, device=z.device)
        f = (epsilon * u.unsqueeze(-1) ** powers).sum(-1)
        df_dp = -(epsilon * powers * u.unsqueeze(-1) ** (powers - 1)).sum(-1)  # d f / d p_j
        a = r / s * df_dp * p_j  # d/dz = a_j (e_j − p) per draw
        value = value + (r / s * f).sum(-1)
        sample_weight = sample_weight - a
        p_coef = a.sum(-1, keepdim=True)
    return value, r.squeeze(-1), sample_weight, p_coef


def spread_bucket_grad(grad_buckets: Tensor, indices: Tensor, z_rest: Tensor, lse_rest: Tensor) -> Tensor:
    """d f / d z (R, V) from d f / d (bucket logits): top-k classes copy theirs, rest classes share theirs.

    A rest class j gets p_j / P_rest · (d f / d ζ_rest) = softmax over the rest classes · that. ``z_rest``
    is consumed (the result is written into it).
    """
    safe = lse_rest.clamp(min=torch.finfo(lse_rest.dtype).min)  # no rest classes: exp(-inf) = 0, not NaN
    grad = z_rest.sub_(safe).exp_().mul_(grad_buckets[:, -1:])
    return grad.scatter_(-1, indices, grad_buckets[:, :-1])
