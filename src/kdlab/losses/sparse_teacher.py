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
"""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        v, i, r = self.values, self.indices, self.log_rest
        if not all(isinstance(x, Tensor) for x in (v, i, r)):
            raise ValueError("SparseTeacher needs three tensors: values, indices, log_rest")
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

    def flat(self) -> SparseTeacher:
        """The same teacher with the leading dims flattened into rows."""
        return SparseTeacher(
            self.values.reshape(-1, self.k), self.indices.reshape(-1, self.k), self.log_rest.reshape(-1)
        )

    def to(self, device: torch.device | str) -> SparseTeacher:
        return SparseTeacher(self.values.to(device), self.indices.to(device), self.log_rest.to(device))

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


@torch.no_grad()
def sparse_teacher_from_logits(
    logits: Tensor, k: int, values_dtype: torch.dtype = torch.float16, chunk_rows: int = 1024
) -> SparseTeacher:
    """Keep the top-k of dense teacher logits (..., V); ``log_rest`` is computed exactly (log-sum-exp of the rest)."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise ValueError(f"logits must be a floating-point tensor of shape (..., V), got {logits!r:.60}")
    vocab = logits.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an integer in [1, {vocab}] (the vocabulary), got {k!r}")
    rows = logits.reshape(-1, vocab)
    work = torch.float64 if rows.dtype == torch.float64 else torch.float32
    values = [rows.new_zeros((0, k), dtype=values_dtype)]
    indices = [torch.zeros((0, k), dtype=torch.int32, device=rows.device)]
    log_rest = [rows.new_zeros(0, dtype=torch.float32)]
    for start in range(0, rows.shape[0], chunk_rows):
        x = rows[start : start + chunk_rows].to(work)
        top, idx = x.topk(k, dim=-1)
        lse = torch.logsumexp(x, dim=-1)
        rest = torch.logsumexp(x.scatter(-1, idx, float("-inf")), dim=-1) - lse
        values.append((top - top[:, :1]).clamp(min=torch.finfo(values_dtype).min).to(values_dtype))
        indices.append(idx.to(torch.int32))
        log_rest.append(rest.float())
    lead = logits.shape[:-1]
    return SparseTeacher(
        torch.cat(values).reshape(*lead, k), torch.cat(indices).reshape(*lead, k), torch.cat(log_rest).reshape(lead)
    )


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


def spread_bucket_grad(grad_buckets: Tensor, indices: Tensor, z_rest: Tensor, lse_rest: Tensor) -> Tensor:
    """d f / d z (R, V) from d f / d (bucket logits): top-k classes copy theirs, rest classes share theirs.

    A rest class j gets p_j / P_rest · (d f / d ζ_rest) = softmax over the rest classes · that. ``z_rest``
    is consumed (the result is written into it).
    """
    safe = lse_rest.clamp(min=torch.finfo(lse_rest.dtype).min)  # no rest classes: exp(-inf) = 0, not NaN
    grad = z_rest.sub_(safe).exp_().mul_(grad_buckets[:, -1:])
    return grad.scatter_(-1, indices, grad_buckets[:, :-1])
