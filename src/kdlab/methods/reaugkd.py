"""ReAugKD, retrieval-augmented KD (Zhang et al., ACL 2023 short): keep the teacher's knowledge as a searchable
memory the student queries at inference, instead of throwing the teacher away after distillation.

Three stages, all in one run:
1. ``setup``: a linear projection P of the teacher's embedding (``teacher_layer``) to the student's embedding size
   (``student_layer``), trained with a supervised contrastive loss on every training row; the teacher is frozen
   (its features are computed once), only P learns. Done in ``setup`` rather than as an alternating phase: P
   depends on the teacher alone, and the knowledge base must exist, fixed, before the student's first step.
2. ``setup``: the knowledge base (KB, ``methods.retrieval``): normalise(P h_t(x_j)) and the teacher's soft labels
   σ(z_t(x_j)/T_kb) of every training row, in a FAISS inner-product index, saved as ``<out>/kb/`` (safetensors,
   fingerprinted). A resumed run loads it (and checks it against its checkpoint); a fresh run rebuilds it
   bit-identically (seeded, no global RNG touched).
3. ``compute``: ce_weight · CE + kd_weight · KD_T + relation_weight · KL(A ‖ B), where A and B are the
   teacher–teacher and student–teacher similarity distributions over teacher entries — the batch's own
   (``relation: batch``), each row's nearest KB entries (``kb``), or both.

At inference (``predictor``): p(x) = β · Σ_{j∈NN_k} softmax(cos(v, u_j)/τ_s) y^t_j + (1 − β) · σ(z_s(x)), with k
and β chosen on validation. Reconstructed from the abstract and the authors' blog; see docs/reaugkd.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from kdlab.errors import CacheError, ConfigError
from kdlab.losses import cross_entropy, kd_loss, relational_loss, supcon_loss

from .base import Method, MethodParams, Outputs, Requires, SetupContext, StepState, register
from .retrieval import KB_DIR, KB_FILE, KnowledgeBase, blend, choose_blend, content_digest


class ReAugKDParams(MethodParams):
    student_layer: str = Field(..., description="student submodule whose (D,) output is its embedding")
    teacher_layer: str = Field(..., description="teacher submodule whose (D_t,) output is projected to D")
    ce_weight: float = Field(0.1, ge=0, description="weight of the hard-label cross-entropy")
    kd_weight: float = Field(0.9, ge=0, description="weight of Hinton's KD term")
    temperature: float = Field(4.0, gt=0, description="temperature of the KD term")
    relation_weight: float = Field(1.0, ge=0, description="weight of the relational loss (0: the ablation)")
    relation: Literal["batch", "kb", "both"] = Field("batch", description="teacher entries the relation runs over")
    relation_k: int = Field(32, ge=2, description="KB entries per row for relation: kb/both")
    teacher_temperature: float = Field(0.2, gt=0, description="τ_t of the teacher–teacher similarities")
    student_temperature: float = Field(0.2, gt=0, description="τ_s of the student–teacher similarities (and retrieval)")
    supcon_temperature: float = Field(0.07, gt=0, description="τ of stage 1's supervised contrastive loss")
    projection_epochs: int = Field(10, ge=0, description="stage 1 epochs over the training rows")
    projection_lr: float = Field(1e-3, gt=0)
    projection_batch: int = Field(512, ge=2)
    projection_seed: int = 0
    kb_temperature: float = Field(1.0, gt=0, description="temperature of the teacher soft labels stored in the KB")
    index: Literal["flat", "hnsw"] = Field("flat", description="flat: exact inner product; hnsw: approximate")
    retrieval_k: list[int] = Field([1, 4, 8, 16, 32], min_length=1, description="k candidates (chosen on val)")
    retrieval_beta: list[float] = Field(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], min_length=1, description="β candidates (val)"
    )


def train_projection(
    features: Tensor, labels: Tensor, dim: int, p: ReAugKDParams, device: Any
) -> tuple[Tensor, list[float]]:
    """Stage 1: P (dim × D_t, no bias) trained with SupCon on the frozen teacher's features; seeded on its own
    generator, so the same inputs give the same P bit for bit. Returns P's weight and the loss per epoch."""
    x, y = features.float().to(device), labels.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.projection_seed)
        layer = nn.Linear(x.shape[1], dim, bias=False).to(device)
    order = torch.Generator().manual_seed(p.projection_seed)
    optimizer = torch.optim.Adam(layer.parameters(), lr=p.projection_lr)
    losses = []
    with torch.enable_grad():
        for _ in range(p.projection_epochs):
            total, batches = 0.0, 0
            for index in torch.randperm(len(x), generator=order).split(p.projection_batch):
                if len(index) < 2:
                    continue
                loss = supcon_loss(layer(x[index.to(device)]), y[index.to(device)], p.supcon_temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, batches = total + float(loss.detach()), batches + 1
            losses.append(total / max(batches, 1))
    return layer.weight.detach().cpu(), losses


@register("reaugkd")
class ReAugKDMethod(Method):
    Params = ReAugKDParams
    params: ReAugKDParams
    fingerprinted = True

    def __init__(self, params: ReAugKDParams, num_classes: int) -> None:
        super().__init__(params, num_classes)
        self.kb: KnowledgeBase | None = None
        self._projection: Tensor | None = None  # P on the training device
        self._kb_embeddings: Tensor | None = None

    def requires(self) -> Requires:
        return Requires(student_features=(self.params.student_layer,), teacher_features=(self.params.teacher_layer,))

    def kb_settings(self) -> dict[str, Any]:
        """What else (besides data and teacher) makes a KB: a KB built with other settings is rebuilt."""
        keep = ("teacher_layer", "supcon_temperature", "projection_epochs", "projection_lr", "projection_batch")
        return {k: getattr(self.params, k) for k in (*keep, "projection_seed", "kb_temperature", "index")}

    def setup(self, ctx: SetupContext) -> None:
        p = self.params
        s_shape = ctx.feature_shapes("student", (p.student_layer,))[p.student_layer]
        t_shape = ctx.feature_shapes("teacher", (p.teacher_layer,))[p.teacher_layer]
        if len(s_shape) != 1 or len(t_shape) != 1:
            raise ConfigError(
                f"config: reaugkd embeddings must be (D,) vectors: student {p.student_layer!r} is {s_shape}, teacher "
                f"{p.teacher_layer!r} is {t_shape} (choose a layer after pooling/flattening)"
            )
        saved = None if ctx.out_dir is None else ctx.out_dir / KB_DIR
        kb = None
        if saved is not None and (saved / KB_FILE).is_file():  # a resumed run: keep its KB
            kb = KnowledgeBase.load(saved, expect=ctx.fingerprints)
            if kb.settings != self.kb_settings() or kb.embeddings.shape[1] != s_shape[0]:
                kb = None
        if kb is None:
            kb = self._build(ctx, s_shape[0], t_shape[0])
            if saved is not None and ctx.write_file is not None:
                ctx.write_file(f"{KB_DIR}/{KB_FILE}", lambda path: kb.save(path.parent))
        self.kb = kb
        self._projection = kb.projection.to(ctx.device)
        self._kb_embeddings = kb.embeddings.to(ctx.device)

    def _build(self, ctx: SetupContext, dim: int, teacher_dim: int) -> KnowledgeBase:
        p = self.params
        features = ctx.teacher_features("train", (p.teacher_layer,))[p.teacher_layer].float().cpu()
        logits, labels = ctx.teacher_logits("train").float().cpu(), ctx.labels("train").cpu()
        weight, losses = train_projection(features, labels, dim, p, ctx.device)
        with torch.no_grad():
            embeddings = F.normalize(features @ weight.T, dim=1)
            soft = torch.softmax(logits / p.kb_temperature, dim=1)
        fingerprints = dict(ctx.fingerprints) or {
            "data": content_digest(labels),
            "teacher": content_digest(logits, features),
        }
        kb = KnowledgeBase(embeddings, soft, weight, fingerprints, p.index, self.kb_settings())
        ctx.write_report(
            "reaugkd_kb",
            {
                "rows": len(kb),
                "embedding_dim": dim,
                "teacher_dim": teacher_dim,
                "index": p.index,
                "supcon_loss_per_epoch": losses,
                "sha256": kb.digest,
                "fingerprints": fingerprints,
                "kb_train_knn_accuracy": float((soft.argmax(1) == labels).float().mean()),
            },
            None,
        )
        return kb

    def project(self, teacher_features: Tensor) -> Tensor:
        """The teacher's embedding in the KB's space (P fixed after stage 1: no gradient)."""
        assert self._projection is not None, "reaugkd needs setup()"
        return teacher_features.float() @ self._projection.T

    def compute(
        self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        assert teacher is not None and self.kb is not None, "reaugkd needs setup() and a teacher"
        p = self.params
        terms: dict[str, Tensor] = {}
        if p.ce_weight > 0:
            terms["ce"] = p.ce_weight * cross_entropy(student.logits, batch["y"])
        if p.kd_weight > 0:
            terms["kd"] = p.kd_weight * kd_loss(student.logits, teacher.logits, p.temperature)
        if p.relation_weight > 0:
            v = student.features[p.student_layer].float()
            u = F.normalize(self.project(teacher.features[p.teacher_layer]), dim=1)
            relation = torch.zeros((), device=v.device)
            if p.relation in ("batch", "both"):
                relation = relation + relational_loss(u, v, u, p.teacher_temperature, p.student_temperature)
            if p.relation in ("kb", "both"):
                _, ids = self.kb.search(u, p.relation_k)
                assert self._kb_embeddings is not None
                keys = self._kb_embeddings[ids.to(self._kb_embeddings.device)]
                relation = relation + relational_loss(u, v, keys, p.teacher_temperature, p.student_temperature)
            terms["relation"] = p.relation_weight * relation
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {} if self.kb is None else {"kb_sha256": self.kb.digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.kb is not None and state.get("kb_sha256") not in (None, self.kb.digest):
            raise CacheError(
                "the run's knowledge base differs from the one its checkpoint trained with "
                f"({state['kb_sha256'][:12]} vs {self.kb.digest[:12]}); start the run again"
            )

    def predictor(self, run_dir: Path, fingerprints: dict[str, str]) -> RetrievalPredictor | None:
        if not (run_dir / KB_DIR / KB_FILE).is_file():
            raise CacheError(f"{run_dir} is a reaugkd run without its knowledge base ({KB_DIR}/{KB_FILE})")
        kb = KnowledgeBase.load(run_dir / KB_DIR, expect=fingerprints)
        return RetrievalPredictor(kb, self.params, [run_dir / KB_DIR / KB_FILE])


class RetrievalPredictor:
    """The student plus its KB (``Method.predictor``): k and β chosen on validation, then blended probabilities."""

    def __init__(self, kb: KnowledgeBase, params: ReAugKDParams, files: list[Path]) -> None:
        self.kb, self.params, self.files = kb, params, files
        self.features = (params.student_layer,)
        self.temperature = params.student_temperature
        self.k, self.beta = max(params.retrieval_k), 0.5  # until ``choose`` (no validation rows: these)

    def _query(self, features: dict[str, Tensor]) -> Tensor:
        return features[self.params.student_layer].float().cpu()

    def choose(self, logits: Tensor, features: dict[str, Tensor], labels: Tensor) -> dict[str, Any]:
        if len(labels) == 0:
            return {"k": self.k, "beta": self.beta, "chosen_on": "defaults (no validation rows)"}
        p = self.params
        choice = choose_blend(
            self.kb, logits, self._query(features), labels, p.retrieval_k, p.retrieval_beta, self.temperature
        )
        self.k, self.beta = choice.k, choice.beta
        return {
            "k": choice.k,
            "beta": choice.beta,
            "val_accuracy": choice.val_accuracy,
            "chosen_on": "val",
            "candidates": choice.table,
        }

    def probabilities(self, logits: Tensor, features: dict[str, Tensor]) -> Tensor:
        probs = torch.softmax(logits.float().cpu(), dim=1)  # searched even at β = 0: latency counts the lookup
        return blend(probs, self.kb.retrieve(self._query(features), self.k, self.temperature), self.beta)

    def metrics(self, logits: Tensor, features: dict[str, Tensor], labels: Tensor) -> dict[str, float]:
        labels = labels.cpu()
        if len(labels) == 0:
            return {}
        retrieved = self.kb.retrieve(self._query(features), self.k, self.temperature)
        probs = torch.softmax(logits.float().cpu(), dim=1)
        blended = blend(probs, retrieved, self.beta)
        return {
            "accuracy_without_retrieval": float((probs.argmax(1) == labels).float().mean()),
            "accuracy_with_retrieval": float((blended.argmax(1) == labels).float().mean()),
            "knn_accuracy": float((retrieved.argmax(1) == labels).float().mean()),
            "nll_with_retrieval": float(-blended.clamp_min(1e-12).log().gather(1, labels[:, None]).mean()),
            "k": self.k,
            "beta": self.beta,
        }
