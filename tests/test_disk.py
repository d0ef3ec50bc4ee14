"""DiSK (scaffolding): the hinted loss against hand computations and KD, phase-pure gradients, the dual variable,
the budget met on a toy problem, and an interrupted run resuming bit-identically (student, guide, dual variable)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdlab.api import distill, train
from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
from kdlab.engine import Splits, StepInfo, fit
from kdlab.errors import ConfigError
from kdlab.losses import budget_constraint, hardness, hinted_kd_loss, kd_loss, topk_label_mask
from kdlab.methods import Outputs, SetupContext, StepState, build


def _context(num_classes: int) -> SetupContext:
    def never(*_):
        raise AssertionError("not used")

    return SetupContext(num_classes, "cpu", None, never, never, never, never)


def _method(num_classes: int = 5, **params):
    method = build("disk", params, num_classes)
    method.setup(_context(num_classes))
    return method


# ---- the losses ----


def test_with_no_guide_all_classes_and_one_temperature_the_hinted_loss_is_t2_cross_entropy_and_has_kds_gradient():
    g = torch.Generator().manual_seed(0)
    s = (3 * torch.randn(6, 7, generator=g, dtype=torch.float64)).requires_grad_()
    t = 3 * torch.randn(6, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (6,), generator=g)
    T = 2.5
    hinted = hinted_kd_loss(s, t, y, torch.zeros(6, dtype=torch.float64), 7, T, T)
    q, log_p = torch.softmax(t / T, -1), torch.log_softmax(s / T, -1)
    torch.testing.assert_close(hinted, T * T * -(q * log_p).sum(-1).mean())  # T² · H(q, p)
    entropy = -(q * q.log()).sum(-1).mean()
    kd = kd_loss(s, t, T)
    torch.testing.assert_close(hinted, kd + T * T * entropy)  # KD plus a constant
    (grad_hinted,) = torch.autograd.grad(hinted, s)
    (grad_kd,) = torch.autograd.grad(kd_loss(s, t, T), s)
    torch.testing.assert_close(grad_hinted, grad_kd, rtol=1e-12, atol=1e-12)


def test_hinted_loss_with_a_guide_and_a_top_k_mask_matches_a_row_by_row_computation():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    y, guide = torch.tensor([0, 5, 2, 3]), torch.tensor([0.0, 0.3, 0.9, 0.5], dtype=torch.float64)
    got = hinted_kd_loss(s, t, y, guide, 2, 3.5, 4.0, reduction="none")
    for i in range(4):
        keep = set(t[i].argsort(descending=True)[:2].tolist()) | {int(y[i])}
        logits = [float(t[i, c]) / 4.0 if c in keep else float(t[i].min()) for c in range(6)]
        target = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
        p = torch.softmax(s[i] / 3.5, 0)
        want = -sum(target[c] * torch.log(p[c] + guide[i]) for c in keep) * 3.5 * 4.0
        torch.testing.assert_close(got[i], want)
    assert got[2] < hinted_kd_loss(s[2:3], t[2:3], y[2:3], torch.zeros(1, dtype=torch.float64), 2, 3.5, 4.0)


def test_guide_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 4, 0])
    guide = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda gv: hinted_kd_loss(s, t, y, gv, 2), (guide,))


def test_mask_hardness_and_budget_by_hand():
    t = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, 4.0]])
    mask = topk_label_mask(t, torch.tensor([3, 1]), 2)
    assert mask.tolist() == [[True, False, True, True], [False, True, False, True]]
    s = torch.tensor([[0.0, 0.0, 2.0, 0.0], [-20.0, 0.0, 0.0, 20.0]])  # row 0: wrong (2 ≠ 3), row 1 wrong (3 ≠ 1)
    h = hardness(s, t, max_ce=5.0)
    torch.testing.assert_close(h[0], -torch.log_softmax(s[0], 0)[0])  # CE against the teacher's argmax (0)
    assert float(h[1]) == 5.0  # capped at c_max
    c = budget_constraint(torch.tensor([0.5, 0.25]), h, s, torch.tensor([3, 1]))
    torch.testing.assert_close(c, (0.5 * h[0] + 0.25 * h[1]) / 2)
    c_one_error = budget_constraint(torch.tensor([0.5, 0.25]), h, s, torch.tensor([2, 1]))
    torch.testing.assert_close(c_one_error, 0.5 * h[0] + 0.25 * h[1])


# ---- the method: phases, dual variable, budget ----


def _batch(n: int = 8, c: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    return {"y": y, "index": torch.arange(n)}, torch.randn(n, c, generator=g), 3 * torch.randn(n, c, generator=g)


def test_the_guide_gets_gradients_only_in_guide_steps_and_the_student_only_in_student_steps():
    method = _method(warmup_epochs=1, student_epochs=2, guide_epochs=1, top_k=2)
    assert [method.phase(e) for e in range(6)] == ["guide", "student", "student", "guide", "student", "student"]
    guide = method.modules()["guide"]
    batch, s_logits, t_logits = _batch()
    for epoch, phase in ((0, "guide"), (1, "student"), (3, "guide")):
        guide.zero_grad(set_to_none=True)
        s = s_logits.clone().requires_grad_()
        state = StepState(epoch, 0, 8, float(epoch))
        assert method.trains(state) == (phase,)
        terms = method.compute(batch, Outputs(logits=s), Outputs(logits=t_logits), state)
        sum(terms.values()).backward()
        guide_grads = [p.grad for p in guide.parameters()]
        if phase == "guide":
            assert set(terms) == {"hint", "budget", "guide_reg"}
            assert s.grad is None
            assert all(gr is not None and gr.abs().sum() > 0 for gr in guide_grads)
        else:
            assert set(terms) == {"hint", "ce"}
            assert s.grad is not None and s.grad.abs().sum() > 0
            assert all(gr is None for gr in guide_grads)


def test_the_dual_variable_rises_when_the_budget_is_violated_and_not_otherwise():
    method = _method(warmup_epochs=0, student_epochs=1, guide_epochs=1, budget_max=0.01, budget_min=0.01, top_k=2)
    with torch.no_grad():
        method.guide.net[-1].bias.fill_(10.0)  # g ≈ 1 everywhere: far over a 0.01 budget
    batch, s, t = _batch()
    start = method.dual
    for epoch in range(3):  # a dual step at each cycle start (epochs 0 and 2) from the previous epoch's measurement
        method.compute(batch, Outputs(logits=s), Outputs(logits=t), StepState(epoch, 0, 3, float(epoch)))
    values = method.current_values(StepState(2, 0, 3, 2.0))
    assert values["constraint"] > 0.5 and values["violation"] > 0.4
    assert method.dual == pytest.approx(start + 2.0 * method._last_violation) and method.dual > start
    relaxed = _method(warmup_epochs=0, student_epochs=1, guide_epochs=1, budget_max=100.0, budget_min=100.0)
    for epoch in range(3):
        relaxed.compute(batch, Outputs(logits=s), Outputs(logits=t), StepState(epoch, 0, 3, float(epoch)))
    assert relaxed.dual == relaxed.params.dual_init  # met with room: ReLU(c − ε) = 0, no step
    signed = _method(warmup_epochs=0, student_epochs=1, guide_epochs=1, budget_max=100.0, budget_min=100.0,
                     dual_step="signed", dual_init=5.0)  # fmt: skip
    for epoch in range(3):
        signed.compute(batch, Outputs(logits=s), Outputs(logits=t), StepState(epoch, 0, 3, float(epoch)))
    assert signed.dual == signed.params.multiplier_min  # slack: the signed step falls to the floor


def test_on_a_toy_problem_the_dual_steps_bring_the_constraint_under_the_budget():
    """A fixed student that errs on a third of the rows; the guide alone trains. Without the budget it would help
    everywhere (the hinted loss falls as g rises); with it the epoch's constraint ends at or under ε."""
    torch.manual_seed(0)
    n, c, eps = 96, 4, 0.3
    t = 4 * torch.randn(n, c)
    y = t.argmax(1)
    s = t.clone()
    s[: n // 3] = torch.roll(t[: n // 3], 1, dims=1)  # wrong, and hard, on the first third
    method = _method(c, warmup_epochs=0, student_epochs=1, guide_epochs=1, budget_max=eps, budget_min=eps,
                     top_k=2, dual_init=0.0, multiplier_min=0.0, rho=20.0)  # fmt: skip
    optimizer = torch.optim.Adam(method.modules()["guide"].parameters(), lr=0.05)
    history = []
    for epoch in range(30):
        for rows in torch.arange(n).split(32):
            batch = {"y": y[rows], "index": rows}
            state = StepState(epoch, 0, 30, float(epoch))
            terms = method.compute(
                batch, Outputs(logits=s[rows].clone().requires_grad_()), Outputs(logits=t[rows]), state
            )
            if method.phase(epoch) == "guide":
                optimizer.zero_grad()
                sum(terms.values()).backward()
                optimizer.step()
        history.append((method.current_values(StepState(epoch, 0, 30, epoch))["constraint"], method.dual))
    first_constraint = history[0][0]
    assert first_constraint > eps  # violated at the start: the guide sits near 0.5
    assert max(d for _, d in history) > 0  # the dual variable rose
    assert history[-1][0] <= eps + 1e-3, history[-6:]


def test_bad_settings_are_one_line():
    with pytest.raises(ConfigError, match="budget_min"):
        build("disk", {"budget_min": 0.9, "budget_max": 0.1}, 3)
    with pytest.raises(ConfigError, match="teacher_layer"):
        build("disk", {"guide_inputs": ["teacher_features"]}, 3)


# ---- through the engine ----


def _splits() -> Splits:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return Splits(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], num_classes=3)


def test_engine_alternation_moves_only_the_phases_parameters_and_logs_g_per_example(tmp_path):
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(6, 3), torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                                                   torch.nn.Linear(16, 3))  # fmt: skip
    method = build("disk", {"warmup_epochs": 1, "student_epochs": 1, "guide_epochs": 1, "top_k": 2}, 3)
    cfg = TrainConfig(epochs=4, batch_size=16, progress=False, cpu=True, train_eval_size=0)
    snapshots: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def snap(info: StepInfo) -> None:
        flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()]).clone()  # noqa: E731
        snapshots.append((info.epoch, flat(student), flat(method.modules()["guide"])))

    fit(student, _splits(), method, cfg, OptimizerConfig(lr=0.1), SchedulerConfig(name="constant"),
        out_dir=str(tmp_path), teacher=teacher, callbacks=[snap])  # fmt: skip
    for (_, s0, g0), (epoch, s1, g1) in itertools.pairwise(snapshots):
        moved_student, moved_guide = not torch.equal(s0, s1), not torch.equal(g0, g1)
        assert (moved_student, moved_guide) == ((True, False) if method.phase(epoch) == "student" else (False, True))
    assert (tmp_path / "method" / "guide.safetensors").is_file()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"method/' in x]
    assert [r["method/phase"] for r in records] == ["guide", "student", "guide", "student"]
    examples = records[-1]["method/examples"]
    assert examples["index"] == list(range(64)) and len(examples["g"]) == 64 and len(examples["h"]) == 64
    assert all(0 <= v <= 1 for v in examples["g"])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disk") / "teacher"
    model = {"name": "mlp", "kwargs": {"hidden": [32]}}
    train({"out": str(out), "data": {"name": "digits"}, "model": model, "train": {"epochs": 2, "progress": False}})
    return out


def test_an_interrupted_run_resumes_to_identical_student_guide_and_dual_variable(tmp_path, teacher_run):
    method = {
        "name": "disk",
        "warmup_epochs": 1,
        "student_epochs": 1,
        "guide_epochs": 1,
        "top_k": 3,
        "budget_max": 0.05,
        "budget_min": 0.05,
    }  # fmt: skip  (a tight budget: the dual variable moves)

    def cfg(out: str) -> dict:
        return {
            "out": str(tmp_path / out),
            "seed": 0,
            "data": {"name": "digits"},
            "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
            "teacher": {"run": str(teacher_run)},
            "method": method,
            "train": {"epochs": 4, "batch_size": 64, "progress": False, "checkpoint_every_steps": 7},
        }

    straight = distill(cfg("straight"))
    steps = straight["optimizer_steps"]

    def crash(info: StepInfo) -> None:
        if info.global_step == steps // 2 + 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        distill(cfg("crashed"), callbacks=[crash])
    resumed = distill(cfg("crashed"), resume=True)
    for file in ("model.safetensors", "method/guide.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / file)), load_file(str(tmp_path / "crashed" / file))
        for key in a:
            assert torch.equal(a[key], b[key]), (file, key)
    logs = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("straight", "crashed")]
    epoch_records = [[json.loads(x) for x in log if '"method/' in x] for log in logs]
    assert [r["method/dual"] for r in epoch_records[0]] == [r["method/dual"] for r in epoch_records[1]]
    assert epoch_records[0][-1]["method/dual"] > 5.0  # the budget was violated: μ rose from its start
    assert epoch_records[0][-1]["method/examples"] == epoch_records[1][-1]["method/examples"]
    assert resumed["test_accuracy"] == straight["test_accuracy"]
