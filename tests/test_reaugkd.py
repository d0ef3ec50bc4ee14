"""ReAugKD: SupCon and relational losses against float64 hand computations, the knowledge base's exact search,
retrieval-augmented probabilities, the KB's fingerprints, and a tiny run on digits that evaluates, predicts,
exports and resumes with its KB."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdlab.api import distill, evaluate, predict_proba, train
from kdlab.engine import StepInfo
from kdlab.errors import CacheError
from kdlab.losses import relational_loss, supcon_loss
from kdlab.methods import Outputs, StepState, build
from kdlab.methods.retrieval import KB_DIR, KB_FILE, KnowledgeBase, blend, choose_blend


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_supcon_matches_a_loop_over_anchors_and_positives():
    g = torch.Generator().manual_seed(0)
    z, y, tau = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.tensor([0, 1, 0, 2, 1, 0, 3]), 0.3
    u = _unit(z)
    anchors = []
    for i in range(7):
        positives = [p for p in range(7) if p != i and y[p] == y[i]]
        if not positives:  # classes 2 and 3 have one row: no positive, no term
            continue
        denominator = sum(math.exp(float(u[i] @ u[a]) / tau) for a in range(7) if a != i)
        terms = [math.log(math.exp(float(u[i] @ u[p]) / tau) / denominator) for p in positives]
        anchors.append(-sum(terms) / len(terms))
    torch.testing.assert_close(supcon_loss(z, y, tau), torch.tensor(sum(anchors) / len(anchors), dtype=torch.float64))
    assert float(supcon_loss(z[:3], torch.tensor([0, 1, 2]))) == 0.0  # no positives anywhere: 0, not NaN


@pytest.mark.parametrize("per_query", [False, True])
def test_relational_loss_is_kl_of_teacher_to_student_similarity_distributions(per_query):
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    keys = torch.randn(4, 5, 3, generator=g, dtype=torch.float64) if per_query else torch.randn(6, 3, generator=g)
    keys = keys.double()
    t1, t2 = 0.5, 0.25
    rows = []
    for i in range(4):
        k = _unit(keys[i] if per_query else keys)
        a = torch.softmax(_unit(u)[i] @ k.T / t1, 0)
        b = torch.softmax(_unit(v)[i] @ k.T / t2, 0)
        rows.append(sum(float(a[j] * math.log(a[j] / b[j])) for j in range(len(k))))
    got = relational_loss(u, v, keys, t1, t2)
    torch.testing.assert_close(got, torch.tensor(sum(rows) / 4, dtype=torch.float64))
    torch.testing.assert_close(relational_loss(u, v, keys, t1, t2, reduction="sum"), got * 4)
    assert float(relational_loss(u, u * 3, keys, t1, t1)) == pytest.approx(0.0, abs=1e-12)  # same directions


def _kb(n: int = 300, d: int = 8, c: int = 4, index: str = "flat", **fingerprints: str) -> KnowledgeBase:
    g = torch.Generator().manual_seed(2)
    emb = _unit(torch.randn(n, d, generator=g))
    soft = torch.softmax(torch.randn(n, c, generator=g) * 2, 1)
    return KnowledgeBase(emb, soft, torch.randn(d, 5, generator=g), fingerprints or {"data": "d1", "teacher": "t1"},
                         index)  # fmt: skip


def test_the_exact_index_returns_the_brute_force_nearest_neighbours():
    kb = _kb()
    queries = torch.randn(20, 8, generator=torch.Generator().manual_seed(3))
    scores, ids = kb.search(queries, 10)
    brute = _unit(queries) @ kb.embeddings.T
    top = brute.topk(10, dim=1)
    assert torch.equal(ids, top.indices)
    torch.testing.assert_close(scores, top.values, atol=1e-5, rtol=0)
    _, approx = _kb(index="hnsw").search(queries, 10)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(approx, top.indices, strict=True)) / 200
    assert recall > 0.9


def test_retrieval_augmented_probabilities_sum_to_one_and_are_the_students_at_beta_zero():
    kb = _kb()
    g = torch.Generator().manual_seed(4)
    logits, queries = torch.randn(16, 4, generator=g), torch.randn(16, 8, generator=g)
    student = torch.softmax(logits, 1)
    retrieved = kb.retrieve(queries, 5, 0.2)
    for beta in (0.0, 0.3, 1.0):
        p = blend(student, retrieved, beta)
        torch.testing.assert_close(p.sum(1), torch.ones(16))
    assert torch.equal(blend(student, retrieved, 0.0), student)
    scores, ids = kb.search(queries, 5)  # r(x): the neighbours' soft labels, softmax(cos / τ) weights
    w = torch.softmax(scores.double() / 0.2, 1)
    torch.testing.assert_close(retrieved.double(), (w[:, :, None] * kb.soft_labels[ids].double()).sum(1))
    labels = retrieved.argmax(1)  # labels the KB gets right: β = 1 is chosen over the student
    choice = choose_blend(kb, -logits * 5, queries, labels, [5], [0.0, 0.5, 1.0], 0.2)
    assert (choice.k, choice.beta, choice.val_accuracy) == (5, 1.0, 1.0)


def test_a_kb_for_other_data_or_another_teacher_is_refused_with_one_line(tmp_path):
    kb = _kb()
    kb.save(tmp_path)
    same = KnowledgeBase.load(tmp_path, expect={"data": "d1", "teacher": "t1"})
    assert torch.equal(same.embeddings, kb.embeddings) and same.digest == kb.digest
    for expect, word in (({"data": "d2", "teacher": "t1"}, "data"), ({"data": "d1", "teacher": "t2"}, "teacher")):
        with pytest.raises(CacheError) as err:
            KnowledgeBase.load(tmp_path, expect=expect)
        assert "\n" not in str(err.value) and f"another {word}" in str(err.value)
    raw = bytearray((tmp_path / KB_FILE).read_bytes())
    raw[-3] ^= 0xFF  # one changed byte in the soft labels
    (tmp_path / KB_FILE).write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="SHA-256"):
        KnowledgeBase.load(tmp_path)


def test_the_relational_term_reaches_the_student_embedding_and_not_the_kb():
    method = build("reaugkd", {"student_layer": "s", "teacher_layer": "t", "relation": "both", "relation_k": 4}, 4)
    kb = _kb()
    method.kb, method._projection, method._kb_embeddings = kb, kb.projection, kb.embeddings
    v = torch.randn(6, 8, requires_grad=True)
    student = Outputs(logits=torch.randn(6, 4, requires_grad=True), features={"s": v})
    teacher = Outputs(logits=torch.randn(6, 4), features={"t": torch.randn(6, 5)})
    terms = method.compute({"y": torch.tensor([0, 1, 2, 3, 0, 1])}, student, teacher, StepState(0, 0, 1, 0.0))
    assert set(terms) == {"ce", "kd", "relation"}
    terms["relation"].backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


# ---- a tiny run on digits ----

TRAIN = {"progress": False, "batch_size": 64, "optimizer": {"lr": 0.05}, "train_eval_size": 0}
METHOD = {"name": "reaugkd", "student_layer": "body.0", "teacher_layer": "body.1", "projection_epochs": 2}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reaugkd")
    out = []
    for seed in (0, 1):
        cfg = {"name": "t", "out": str(root / f"teacher{seed}"), "seed": seed, "data": {"split_seed": 0},
               "model": {"name": "mlp", "kwargs": {"hidden": [64, 32]}}, "train": {**TRAIN, "epochs": 2}}  # fmt: skip
        train(cfg)
        out.append(root / f"teacher{seed}")
    return out[0], out[1]


def _student(out: Path, teacher: Path, **train_keys) -> dict:
    return {"name": "s", "out": str(out), "data": {"split_seed": 0}, "teacher": {"run": str(teacher)},
            "model": {"name": "mlp", "kwargs": {"hidden": [16]}}, "method": METHOD,
            "train": {**TRAIN, "epochs": 2, **train_keys}}  # fmt: skip


def test_a_reaugkd_run_saves_its_kb_evaluates_with_and_without_retrieval_and_predicts(tmp_path, teachers):
    run = tmp_path / "run"
    distill(_student(run, teachers[0]))
    saved = load_file(str(run / KB_DIR / KB_FILE))
    assert saved["embeddings"].shape[1] == 16 and saved["projection"].shape == (16, 32)
    assert set(load_file(str(run / "model.safetensors"))) == {"body.0.0.weight", "body.0.0.bias", "fc.weight",
                                                                "fc.bias"}  # fmt: skip
    result = evaluate(run, ("val", "test"))
    m = result["test"]["predictor"]
    assert m["accuracy_without_retrieval"] == pytest.approx(result["test"]["accuracy"])
    assert 0 < m["knn_accuracy"] <= 1 and 0 <= m["accuracy_with_retrieval"] <= 1
    assert result["predictor"]["choice"]["chosen_on"] == "val"
    assert set(result["predictor"]["latency_ms"]) == {"batch_1", "batch_256"}
    assert result["footprint"]["predictor_file_bytes"] == (run / KB_DIR / KB_FILE).stat().st_size
    from kdlab.data import load_dataset

    raw = load_dataset("digits").x_test[:5] * 0 + 8.0  # raw pixels (0..16), any values
    p = predict_proba(run, raw)
    torch.testing.assert_close(p.sum(1), torch.ones(5))
    alone = predict_proba(run, raw, retrieval=False)
    with torch.inference_mode():
        from kdlab.api import load_model

        torch.testing.assert_close(alone, torch.softmax(load_model(run)(raw), 1))
    from kdlab.compress.export import export_run

    report = export_run(run, tmp_path / "student.onnx", latency=False)
    assert report["contains"].startswith("the student alone") and "knowledge base" in report["contains"]
    assert Path(report["knowledge_base"]).read_bytes() == (run / KB_DIR / KB_FILE).read_bytes()
    # the KB of a run with another teacher is refused, in one line
    other = tmp_path / "other"
    distill(_student(other, teachers[1], epochs=1))
    shutil.copy(other / KB_DIR / KB_FILE, run / KB_DIR / KB_FILE)
    with pytest.raises(CacheError) as err:
        evaluate(run, ("test",), latency=False)
    assert "\n" not in str(err.value) and "another teacher" in str(err.value)


def test_an_interrupted_reaugkd_run_resumes_with_its_kb_to_the_same_student(tmp_path, teachers):
    straight = distill(_student(tmp_path / "straight", teachers[0], checkpoint_every_steps=5))
    steps = straight["optimizer_steps"]

    def crash(info: StepInfo) -> None:
        if info.global_step == steps // 2 + 2:
            raise RuntimeError("simulated crash")

    cfg = _student(tmp_path / "crashed", teachers[0], checkpoint_every_steps=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill(cfg, callbacks=[crash])
    kb_file = tmp_path / "crashed" / KB_DIR / KB_FILE
    before = kb_file.stat().st_mtime_ns
    resumed = distill(cfg, resume=True)
    assert kb_file.stat().st_mtime_ns == before  # kept, not rebuilt
    kept, fresh = load_file(str(kb_file)), load_file(str(tmp_path / "straight" / KB_DIR / KB_FILE))
    assert all(torch.equal(kept[k], fresh[k]) for k in fresh)  # and what a fresh run builds, bit for bit
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "crashed" /
                                                                                      "model.safetensors"))  # fmt: skip
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed["optimizer_steps"] == steps
