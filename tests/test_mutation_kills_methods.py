"""Tests that kill mutants mutmut found alive in kdlab.methods (see benchmarks/results/mutation.md).

The token-level branch shared by the language-model methods (``methods.token``) is checked against float64
references written here: next-token cross-entropy through the fused path, what the fused loss receives as the
teacher, and the registry's listings.
"""

from __future__ import annotations

import pytest
import torch

from kdlab.losses.sparse_teacher import SparseTeacher
from kdlab.methods import Outputs, StepState, build
from kdlab.methods.base import available, supporting
from kdlab.methods.token import teacher_input, teacher_outputs

STATE = StepState(epoch=0, step=0, epochs=1, progress=0.0)
GEN = torch.Generator().manual_seed(11)
HIDDEN = torch.randn(2, 3, 4, generator=GEN, dtype=torch.float64)
WEIGHT = torch.randn(6, 4, generator=GEN, dtype=torch.float64)
TARGETS = torch.tensor([[1, 5, -100], [0, -100, 3]])


def _ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ over counted tokens of −log softmax(h·Wᵀ)[target] in float64; -100 tokens do not count."""
    log_p = torch.log_softmax(hidden.double() @ weight.double().t(), -1)
    keep = targets != -100
    return -log_p[keep].gather(-1, targets[keep][:, None]).sum()


def test_token_cross_entropy_counts_the_targets_and_divides_by_num_items():
    method = build("ce", {}, 6, task="causal_lm")
    batch = {"targets": TARGETS, "ignore_index": -100, "num_items": 10}
    terms = method.compute(batch, Outputs(hidden=HIDDEN, head_weight=WEIGHT), None, STATE)
    assert list(terms) == ["ce"]
    assert torch.allclose(terms["ce"], _ce_sum(HIDDEN, WEIGHT, TARGETS) / 10, atol=1e-12)
    # without ignore_index in the batch every token counts (and a negative target reads as class 0)
    plain = method.compute({"targets": TARGETS.clamp(min=0)}, Outputs(hidden=HIDDEN, head_weight=WEIGHT), None, STATE)
    assert torch.allclose(plain["ce"], _ce_sum(HIDDEN, WEIGHT, TARGETS.clamp(min=0)) / 6, atol=1e-12)


def test_token_method_without_a_teacher_weight_is_alpha_times_cross_entropy():
    method = build("kd", {"alpha": 0.5, "beta": 0.0}, 6, task="causal_lm")
    teacher = Outputs(logits=torch.randn(2, 3, 6, dtype=torch.float64))
    batch = {"targets": TARGETS, "ignore_index": -100}
    terms = method.compute(batch, Outputs(hidden=HIDDEN, head_weight=WEIGHT), teacher, STATE)
    assert torch.allclose(terms["ce"], 0.5 * _ce_sum(HIDDEN, WEIGHT, TARGETS) / 4, atol=1e-12)
    assert method.describe() == "kd(alpha=0.5, beta=0.0, T=1.0)"


def test_token_loss_casts_a_mixed_precision_head_to_the_hidden_dtype():
    method = build("ce", {}, 6, task="causal_lm")
    hidden = HIDDEN.float()
    terms = method.compute({"targets": TARGETS.clamp(min=0)}, Outputs(hidden=hidden, head_weight=WEIGHT), None, STATE)
    assert terms["ce"].dtype == torch.float32
    expected = _ce_sum(hidden, WEIGHT.float(), TARGETS.clamp(min=0)) / 6
    assert torch.allclose(terms["ce"].double(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="hidden states and head weight"):
        method.compute({"targets": TARGETS}, Outputs(hidden=HIDDEN), None, STATE)


def _sparse_with_tail() -> SparseTeacher:
    return SparseTeacher(
        torch.zeros(2, 2),
        torch.tensor([[0, 1], [2, 3]]),
        torch.full((2,), -1.0),
        torch.zeros(2, 3, dtype=torch.int32),
        torch.zeros(2),
    )


@pytest.mark.parametrize(
    ("loss", "temperature", "keeps_tail"),
    [("kd", 1.0, True), ("ptloss", 1.0, True), ("kd", 2.0, False), ("reverse_kl", 1.0, False), ("jsd", 1.0, False)],
)
def test_tail_samples_reach_the_fused_loss_only_where_they_serve(loss, temperature, keeps_tail):
    given = teacher_input(Outputs(sparse=_sparse_with_tail()), loss, temperature)
    assert isinstance(given, SparseTeacher)
    assert given.has_tail_samples is keeps_tail
    assert given.indices.tolist() == [[0, 1], [2, 3]]


def test_teacher_outputs_is_the_inverse_of_teacher_input():
    sparse = _sparse_with_tail()
    assert teacher_outputs(sparse).sparse is sparse
    pair = teacher_outputs((HIDDEN, WEIGHT))
    assert pair.hidden is HIDDEN and pair.head_weight is WEIGHT and pair.logits is None
    logits = torch.zeros(2, 3, 6)
    assert teacher_outputs(logits).logits is logits
    assert teacher_input(teacher_outputs((HIDDEN, WEIGHT)), "kd", 1.0) == (HIDDEN, WEIGHT)


def test_method_listings():
    names = available()
    assert names == sorted(names) and {"kd", "ptloss", "dkd", "fitnets", "reverse_kl"} <= set(names)
    lm = supporting("causal_lm")
    assert {"kd", "reverse_kl", "jsd", "ce"} <= set(lm) and "fitnets" not in lm and "dkd" not in lm


# ---- DKD's warm-up ramp, PTLoss's selection settings ----


def _dkd_reference(student, teacher, y, alpha, beta, temperature):
    from test_mutation_kills_losses import _ref_dkd_rows

    return _ref_dkd_rows(student, teacher, y, alpha, beta, temperature).mean()


@pytest.mark.parametrize(("warmup", "progress", "ramp"), [(0.0, 0.3, 1.0), (2.0, 3.0, 1.0), (2.0, 0.5, 0.25)])
def test_dkd_ramp_rises_to_one_and_stays(warmup, progress, ramp):
    gen = torch.Generator().manual_seed(12)
    s, t = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    method = build("dkd", {"warmup_epochs": warmup, "ce_weight": 0.0, "alpha": 0.5, "beta": 2.0}, 4)
    state = StepState(epoch=int(progress), step=0, epochs=4, progress=progress)
    terms = method.compute({"y": y}, Outputs(logits=s), Outputs(logits=t), state)
    assert list(terms) == ["dkd"]
    assert torch.allclose(terms["dkd"], ramp * _dkd_reference(s, t, y, 0.5, 2.0, 4.0), atol=1e-12)


def test_ptloss_selection_uses_the_method_settings():
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(60, 3, generator=gen) * 3
    labels = torch.randint(0, 3, (60,), generator=gen)
    settings = {
        "epsilon": "auto",
        "candidates": 6,
        "order": 2,
        "per_class": True,
        "scale": 0.5,
        "selection_seed": 3,
        "selection_metric": "tv",
    }
    method = build("ptloss", settings, 3)
    chosen = method.select(logits, labels)
    assert method.selection is chosen and chosen.metric == "tv"
    assert chosen.candidates.shape == (6, 3, 2) and method.epsilon.shape == (3, 2)  # per class, order 2
    bound = 0.5 / torch.tensor([1.0, 2.0])
    assert bool((chosen.candidates.abs() <= bound).all())  # eps_m in [-scale/m, scale/m]
    other = build("ptloss", {**settings, "selection_seed": 4}, 3).select(logits, labels)
    assert not torch.equal(other.candidates, chosen.candidates)
    shared = build("ptloss", {**settings, "per_class": False}, 3).select(logits, labels)
    assert shared.candidates.shape == (6, 2)


@pytest.mark.parametrize(("task", "rows"), [("classify", None), ("causal_lm", 40)])
def test_ptloss_setup_selects_on_the_validation_rows_and_reports(task, rows, tmp_path):
    from kdlab.methods.base import SetupContext

    gen = torch.Generator().manual_seed(14)
    logits, labels = torch.randn(40, 3, generator=gen) * 3, torch.randint(0, 3, (40,), generator=gen)
    asked, reports = [], []

    def teacher_logits(split, n=None):
        asked.append(("logits", split, n))
        return logits

    def validation_labels(split, n=None):
        asked.append(("labels", split, n))
        return labels

    def write_report(stem, payload, plot):
        reports.append((stem, payload))
        plot(tmp_path / f"{stem}.png")

    settings = {"epsilon": "auto", "candidates": 4, "order": 2}
    if task == "causal_lm":
        settings["selection_tokens"] = 40
    method = build("ptloss", settings, 3, task=task)
    method.setup(SetupContext(3, "cpu", None, teacher_logits, validation_labels, lambda *a: {}, write_report))
    assert asked == [("logits", "val", rows), ("labels", "val", rows)]
    assert method.epsilon is not None and method.selection is not None
    assert reports == [("ptloss_selection", method.selection.to_dict())]
    assert torch.equal(method.epsilon, method.selection.epsilon.float())
    assert (tmp_path / "ptloss_selection.png").stat().st_size > 0


def _reference_candidates(shape: tuple[int, ...], scale: float, seed: int) -> torch.Tensor:
    """eps_m uniform in [-scale/m, scale/m], a float64 draw of Generator(seed), row 0 = 0 (the documented recipe)."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    m = torch.arange(1, shape[-1] + 1, dtype=torch.float64)
    draws = (u * 2 - 1) * scale / m
    draws[0] = 0.0
    return draws


def test_epsilon_candidates_follow_the_documented_recipe_and_defaults():
    from kdlab.methods.selection import sample_epsilons, select_ptloss_epsilon

    assert torch.allclose(sample_epsilons(), _reference_candidates((64, 5), 1.0, 0), rtol=1e-15, atol=0)
    got = sample_epsilons(3, 2, num_classes=4, scale=0.5, seed=9)
    assert torch.allclose(got, _reference_candidates((3, 4, 2), 0.5, 9), rtol=1e-15, atol=0)
    assert sample_epsilons(1, 1).tolist() == [[0.0]]  # one candidate: the unperturbed KD
    for bad in ({"candidates": 0}, {"order": 0}, {"scale": 0.0}, {"scale": 1.5}):
        with pytest.raises(ValueError, match="must be"):
            sample_epsilons(**bad)
    logits, labels = (
        torch.randn(8, 3, generator=torch.Generator().manual_seed(1)),
        torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]),
    )
    chosen = select_ptloss_epsilon(logits, labels)
    assert torch.allclose(chosen.candidates, _reference_candidates((64, 5), 1.0, 0), rtol=1e-15, atol=0)
    payload = chosen.to_dict()
    assert list(payload) == ["metric", "temperature", "chosen_index", "epsilon", "candidates"]
    assert payload["metric"] == "l2" and payload["temperature"] == 1.0 and payload["epsilon"] == chosen.epsilon.tolist()
    first = payload["candidates"][1]
    assert first["index"] == 1 and first["epsilon"] == chosen.candidates[1].tolist() and "l2" in first


def test_ptloss_method_keeps_a_float32_epsilon_and_describes_it():
    method = build("ptloss", {"epsilon": [0.123456, -0.5]}, 3)
    assert method.epsilon.dtype == torch.float32 and method.selection is None and method.num_classes == 3
    assert method.describe() == "ptloss(alpha=0.1, beta=0.9, T=1.0, eps=[0.1235, -0.5])"
    assert build("ptloss", {"epsilon": "auto"}, 3).describe() == "ptloss(alpha=0.1, beta=0.9, T=1.0, eps=auto)"


def test_proxy_scores_against_hand_values():
    from kdlab.methods.selection import proxy_scores

    proxy = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    scores = proxy_scores(proxy, labels)
    q_y = torch.tensor([0.7, 0.3, 0.5], dtype=torch.float64)
    l2 = ((proxy**2).sum(1) - 2 * q_y + 1).mean()
    assert scores["l2"] == pytest.approx(float(l2), abs=1e-15)
    assert scores["tv"] == pytest.approx(float((1 - q_y).mean()), abs=1e-15)
    assert scores["nll"] == pytest.approx(float(-q_y.log().mean()), abs=1e-15)
    assert scores["accuracy"] == pytest.approx(2 / 3, abs=1e-15)  # rows 0 and 2 right, row 1 says class 2
    assert set(scores) == {"l2", "tv", "nll", "ece", "accuracy"} and 0 <= scores["ece"] <= 1


def test_registering_a_method_by_name():
    from kdlab.methods import base

    class Mine(base.Method):
        pass

    class Other(base.Method):
        pass

    try:
        assert base.register("mutation_test_method")(Mine) is Mine
        assert Mine.name == "mutation_test_method" and base.get_class("mutation_test_method") is Mine
        base.register("mutation_test_method")(Mine)  # the same class again is fine
        with pytest.raises(Exception, match="mutation_test_method"):
            base.register("mutation_test_method")(Other)
    finally:
        base._METHODS.pop("mutation_test_method", None)


def test_token_distillation_passes_the_batch_settings_to_the_fused_loss():
    """kd at T = 1 on a sparse teacher with tail samples (they serve kd at T = 1), a custom ignore_index and
    num_items, against the documented estimator written out here."""
    gen = torch.Generator().manual_seed(15)
    hidden, weight = HIDDEN[0], WEIGHT  # 3 tokens
    indices = torch.tensor([[0, 1], [2, 3], [4, 5]])
    samples = torch.tensor([[2, 3], [0, 5], [1, 2]])
    values = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    log_rest = torch.log(torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64))
    entropy = torch.tensor([0.6, 0.5, 0.4], dtype=torch.float64)
    sparse = SparseTeacher(values, indices.int(), log_rest, samples.int(), entropy)
    method = build("kd", {"alpha": 0.5, "beta": 2.0}, 6, task="causal_lm")
    targets = torch.tensor([1, -1, 4])  # -1 is this batch's ignore_index
    batch = {"targets": targets, "ignore_index": -1, "num_items": 4}
    terms = method.compute(batch, Outputs(hidden=hidden, head_weight=weight), Outputs(sparse=sparse), STATE)

    log_p = torch.log_softmax(hidden @ weight.t(), -1)
    p = log_p.exp()
    r = log_rest.exp()
    q_top = (1 - r)[:, None] * torch.softmax(values, -1)
    p_top = p.gather(-1, indices)
    p_rest = 1 - p_top.sum(-1)
    kd = (q_top * (q_top.log() - p_top.log())).sum(-1) + r * (r.log() - p_rest.log())
    kd = kd + r * ((-(p.gather(-1, samples) / p_rest[:, None]).log()).mean(-1) - entropy)
    keep = targets != -1
    ce = -log_p[keep].gather(-1, targets[keep][:, None]).squeeze(-1)
    expected = 2.0 * (kd[keep].sum() + 0.5 / 2.0 * ce.sum()) / 4
    assert list(terms) == ["kd+ce"]
    assert torch.allclose(terms["kd+ce"], expected, atol=1e-12)


def test_a_bad_step_schedule_reads_as_one_plain_sentence():
    from kdlab.methods.schedule import _parse

    with pytest.raises(ValueError) as caught:
        _parse({"schedule": "step", "milestones": [3], "values": [1.0]})
    assert (
        str(caught.value) == "schedule: step needs one more value than milestones (values[0] applies before the first)"
    )


def test_token_ptloss_selects_a_shared_epsilon():
    gen = torch.Generator().manual_seed(16)
    logits, labels = torch.randn(30, 6, generator=gen) * 2, torch.randint(0, 6, (30,), generator=gen)
    method = build("ptloss", {"epsilon": "auto", "candidates": 3, "order": 2}, 6, task="causal_lm")
    chosen = method.select(logits, labels)
    assert chosen.candidates.shape == (3, 2) and method.epsilon.shape == (2,)  # no per-class epsilon for tokens


# ---- descriptions, CE's parameters, feature methods' modules ----


def test_descriptions_and_ce_parameters():
    assert (
        build("dkd", {}, 3).describe() == "dkd(ce_weight=1.0, alpha=1.0, beta=1.0, temperature=4.0, warmup_epochs=20.0)"
    )
    ce = build("ce", {"label_smoothing": 0.2}, 3)
    assert ce.describe() == "ce(label_smoothing=0.2)" and build("ce", {}, 6, task="causal_lm").describe() == "ce"
    logits = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(17))
    y = torch.tensor([0, 2, 1, 2])
    log_p = torch.log_softmax(logits, -1)
    expected = (0.8 * -log_p.gather(1, y[:, None]).squeeze(1) - 0.2 * log_p.mean(-1)).mean()
    terms = ce.compute({"y": y}, Outputs(logits=logits), None, STATE)
    assert list(terms) == ["ce"] and torch.allclose(terms["ce"], expected, atol=1e-12)
    with pytest.raises(Exception, match="label_smoothing"):  # language models take no CE parameters
        build("ce", {"label_smoothing": 0.1}, 6, task="causal_lm")


def _feature_context(student_shape, teacher_shape):
    from kdlab.methods.base import SetupContext

    def shapes(side, names):
        return {n: student_shape if side == "student" else teacher_shape for n in names}

    return SetupContext(3, "cpu", None, None, None, shapes, None)


def test_align_and_full_precision():
    from kdlab.methods.features import align, full_precision

    a, b = torch.randn(2, 3), torch.randn(2, 5)
    assert align(a, b) == (a, b)  # vectors pass unchanged
    maps, vec = torch.randn(2, 3, 4, 4), torch.randn(2, 3)
    assert align(maps, vec) == (maps, vec)
    s, t = align(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 2, 2))
    assert s.shape == t.shape == (1, 1, 2, 2)
    assert full_precision(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert full_precision(torch.ones(2, dtype=torch.float16)).dtype == torch.float32


def test_fitnets_regressors_and_hint_against_a_hand_computation():
    method = build("fitnets", {"student_layer": "a", "teacher_layer": "b", "feature_weight": 2.0, "alpha": 0.0}, 3)
    assert method.num_classes == 3 and method.modules() == {}
    with pytest.raises(AssertionError, match="fitnets needs setup"):
        method.compute({}, Outputs(), Outputs(), STATE)
    method.setup(_feature_context((4,), (6,)))
    (regressor,) = method.modules()["regressors"]
    s, t = torch.randn(5, 4), torch.randn(5, 6)
    terms = method.compute({}, Outputs(features={"a": s}), Outputs(features={"b": t}), STATE)
    expected = 2.0 * ((s @ regressor.weight.t() - t) ** 2).mean()
    assert torch.allclose(terms["hint"], expected, atol=1e-6)


@pytest.mark.parametrize(("hidden", "width"), [(None, 6), (3, 3)])
def test_vid_heads_and_their_negative_log_likelihood(hidden, width):
    params = {"student_layer": "a", "teacher_layer": "b", "alpha": 0.0, "init_variance": 2.0}
    if hidden:
        params["hidden_channels"] = hidden
    method = build("vid", params, 3)
    assert method.num_classes == 3 and method.modules() == {}
    with pytest.raises(AssertionError, match="vid needs setup"):
        method.compute({}, Outputs(), Outputs(), STATE)
    method.setup(_feature_context((4,), (6,)))
    (head,) = method.modules()["heads"]
    assert [tuple(m.weight.shape) for m in head.mean if hasattr(m, "weight")] == [
        (width, 4),
        (width, width),
        (6, width),
    ]
    s, t = torch.randn(5, 4), torch.randn(5, 6)
    terms = method.compute({}, Outputs(features={"a": s}), Outputs(features={"b": t}), STATE)
    mu = head.mean(s)
    expected = 0.5 * ((t - mu) ** 2 / 2.0 + torch.log(torch.tensor(2.0))).mean()  # σ² starts at init_variance
    assert torch.allclose(terms["vid"], expected, atol=1e-5)


def test_feature_pairs_must_be_maps_or_vectors_alike_and_logit_terms_use_the_temperature():
    from test_mutation_kills_losses import _probs

    from kdlab.errors import ConfigError
    from kdlab.methods.features import check_pair

    for student_shape, teacher_shape in (((4,), (3, 4, 4)), ((4, 4), (4, 4)), ((2, 3, 4, 4), (2, 3, 4, 4))):
        with pytest.raises(ConfigError, match="cannot be paired"):
            check_pair(student_shape, teacher_shape, ("a", "b"))
    check_pair((4,), (6,), ("a", "b"))
    check_pair((3, 4, 4), (5, 2, 2), ("a", "b"))
    method = build(
        "fitnets", {"student_layer": "a", "teacher_layer": "b", "alpha": 0.5, "beta": 3.0, "temperature": 2.0}, 3
    )
    s, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    terms = method.logit_terms({"y": y}, Outputs(logits=s), Outputs(logits=t))
    p_t, p_s = _probs(t, 2.0), _probs(s, 2.0)
    kd = 4.0 * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    ce = -torch.log_softmax(s, -1).gather(1, y[:, None]).mean()
    assert torch.allclose(terms["kd"], 3.0 * kd, atol=1e-12) and torch.allclose(terms["ce"], 0.5 * ce, atol=1e-12)
