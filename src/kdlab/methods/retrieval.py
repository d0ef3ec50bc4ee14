"""ReAugKD's knowledge base (KB): the teacher's projected, normalised embeddings and soft labels of every training
row, searchable by inner product — and the retrieval-augmented prediction that blends the soft labels of a
query's nearest entries with the student's own.

The KB is kept on disk as safetensors (embeddings, soft labels, the teacher projection that made them) with
string metadata — the data and teacher fingerprints it was built for and a SHA-256 of its tensors — never as a
pickle. The FAISS index is rebuilt from the embeddings on load (exact inner product: ``flat``, the default;
``hnsw``: an approximate graph index for large KBs), so the file is the single source of truth.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from kdlab.errors import CacheError

KB_DIR = "kb"
KB_FILE = "knowledge_base.safetensors"
INDEX_KINDS = ("flat", "hnsw")
HNSW_NEIGHBOURS = 32  # graph degree of the approximate index (FAISS's usual default range 16..64)


def content_digest(*tensors: Tensor) -> str:
    """SHA-256 over the tensors' shapes and bytes: what a KB (or its inputs) was made of."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass
class KnowledgeBase:
    """``embeddings`` (N, D) unit rows, ``soft_labels`` (N, C) teacher probabilities, ``projection`` (D, D_t)
    the linear map from the teacher's layer to D; ``fingerprints`` of the data and teacher it was built for."""

    embeddings: Tensor
    soft_labels: Tensor
    projection: Tensor
    fingerprints: dict[str, str]
    index_kind: str = "flat"
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.index_kind not in INDEX_KINDS:
            raise ValueError(f"index must be one of {INDEX_KINDS}, got {self.index_kind!r}")
        self.embeddings = self.embeddings.detach().float().cpu().contiguous()
        self.soft_labels = self.soft_labels.detach().float().cpu().contiguous()
        self.projection = self.projection.detach().float().cpu().contiguous()
        self._index = self._build_index()

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def digest(self) -> str:
        return content_digest(self.embeddings, self.soft_labels, self.projection)

    def _build_index(self) -> Any:
        import faiss  # here, not at import: every `kdlab` command imports the methods, few build an index

        faiss.omp_set_num_threads(torch.get_num_threads())  # no more threads than torch is allowed
        dim = self.embeddings.shape[1]
        if self.index_kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 128
        index.add(self.embeddings.numpy())
        return index

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Inner products (N, k), highest first, and the KB rows (N, k) of each query's ``k`` nearest entries.
        Queries are normalised here: the inner product is the cosine similarity."""
        k = min(int(k), len(self))
        q = torch.nn.functional.normalize(queries.detach().float().cpu(), dim=1).contiguous().numpy()
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        scores, ids = self._index.search(np.ascontiguousarray(q), k)
        return torch.from_numpy(scores), torch.from_numpy(ids).long()

    def retrieve(self, queries: Tensor, k: int, temperature: float) -> Tensor:
        """r(x) = Σ_{j∈NN_k(x)} softmax_j(cos(v, u_j) / τ) · y^t_j: the neighbours' soft labels, (N, C)."""
        scores, ids = self.search(queries, k)
        return aggregate(scores, ids, self.soft_labels, temperature)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / KB_FILE
        tmp = path.with_suffix(".tmp")
        metadata = {
            "format": "kdlab-reaugkd-kb-1",
            "fingerprints": json.dumps(self.fingerprints, sort_keys=True),
            "index": self.index_kind,
            "settings": json.dumps(self.settings, sort_keys=True),
            "sha256": self.digest,
        }
        tensors = {"embeddings": self.embeddings, "soft_labels": self.soft_labels, "projection": self.projection}
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory: Path, expect: dict[str, str] | None = None) -> KnowledgeBase:
        """The KB saved in ``directory``; its fingerprints must equal ``expect`` where both name one (a KB made for
        other data or another teacher is a one-line ``CacheError``), and its tensors their recorded SHA-256."""
        path = directory / KB_FILE
        if not path.is_file():
            raise CacheError(f"no ReAugKD knowledge base at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as err:  # a truncated or foreign file
            raise CacheError(f"{path} is not a readable knowledge base: {str(err).splitlines()[0]}") from None
        if meta.get("format") != "kdlab-reaugkd-kb-1" or set(tensors) != {"embeddings", "soft_labels", "projection"}:
            raise CacheError(f"{path} is not a kdlab ReAugKD knowledge base")
        fingerprints = json.loads(meta["fingerprints"])
        for what, value in (expect or {}).items():
            if value and fingerprints.get(what) and fingerprints[what] != value:
                raise CacheError(
                    f"the knowledge base {path} was made for another {what} (fingerprint {fingerprints[what][:12]}, "
                    f"this run's {value[:12]}); rebuild it with the run's own {what}"
                )
        kb = cls(
            tensors["embeddings"],
            tensors["soft_labels"],
            tensors["projection"],
            fingerprints,
            meta.get("index", "flat"),
            json.loads(meta.get("settings", "{}")),
        )
        if kb.digest != meta.get("sha256"):
            raise CacheError(f"the knowledge base {path} does not match its recorded SHA-256 (changed or damaged)")
        return kb


def aggregate(scores: Tensor, ids: Tensor, soft_labels: Tensor, temperature: float) -> Tensor:
    """The neighbours' soft labels weighted by a softmax of their similarities at ``temperature``."""
    weights = torch.softmax(scores.double() / temperature, dim=1)
    return torch.einsum("nk,nkc->nc", weights, soft_labels[ids].double()).float()


def blend(student_probs: Tensor, retrieved: Tensor, beta: float) -> Tensor:
    """p(x) = β · r(x) + (1 − β) · p_s(x); at β = 0 exactly the student's probabilities."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return student_probs
    return beta * retrieved.to(student_probs) + (1.0 - beta) * student_probs


@dataclass
class BlendChoice:
    k: int
    beta: float
    val_accuracy: float
    table: list[dict[str, float]]


def choose_blend(
    kb: KnowledgeBase,
    student_logits: Tensor,
    queries: Tensor,
    labels: Tensor,
    ks: list[int],
    betas: list[float],
    temperature: float,
) -> BlendChoice:
    """k and β with the best accuracy on (validation) rows; ties go to the smaller β, then the smaller k (the
    cheaper, more student-like predictor). One search at the largest k serves every k (results are sorted)."""
    probs = torch.softmax(student_logits.float().cpu(), dim=1)
    labels = labels.cpu()
    scores, ids = kb.search(queries, max(ks))
    table, best = [], None
    for k in sorted(ks):
        retrieved = aggregate(scores[:, :k], ids[:, :k], kb.soft_labels, temperature)
        for beta in sorted(betas):
            acc = float((blend(probs, retrieved, beta).argmax(1) == labels).float().mean())
            table.append({"k": k, "beta": beta, "accuracy": acc})
            key = (-acc, beta, k)
            if best is None or key < best[0]:
                best = (key, k, beta, acc)
    assert best is not None
    return BlendChoice(best[1], best[2], best[3], table)
