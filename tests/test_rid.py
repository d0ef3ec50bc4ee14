"""RID: its two losses against hand computations, the round/phase schedule, filters and student stepping only in
their own phases (through the engine), and a resume in the middle of a round that ends bit for bit where an
uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from kdlab.config import ModelConfig, NuisanceConfig, OptimizerConfig, SchedulerConfig, TrainConfig
from kdlab.engine import Splits, StepInfo, fit
from kdlab.methods import Outputs, SetupContext, StepState, build
from kdlab.teacher.nuisance import NoiseChannels
from kdlab.teacher.source import TeacherSource


def _context(shapes: dict[str, dict[str, tuple[int, ...]]]) -> SetupContext:
    def never(*_):
        raise AssertionError("not used")

    return SetupContext(
        num_classes=3,
        device="cpu",
        out_dir=None,
        teacher_logits=never,
        labels=never,
        feature_shapes=lambda side, names: {n: shapes[side][n] for n in names},
        write_report=never,
    )


def _method(**params):
    method = build("rid", {"student_layer": "a", "teacher_layer": "b", **params}, 3)
    method.setup(_context({"student": {"a": (4,)}, "teacher": {"b": (6,)}}))
    for module in method.modules().values():
        module.double()
    return method


def _by_hand(method, s, t, y, variance_term="square"):
    """f_t, h, f_s written out with the modules' weights (BN in training mode: batch statistics)."""
    (tf,), (sf,) = method.modules()["teacher_filters"], method.modules()["student_filters"]

    def mlp(seq, x):
        h = x @ seq[0].weight.T
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + seq[1].eps) * seq[1].weight + seq[1].bias
        return torch.relu(h) @ seq[3].weight.T

    filtered, mapped = mlp(tf.filter, t), mlp(sf.filter, s)
    head = torch.relu(filtered) @ tf.head[2].weight.T + tf.head[2].bias
    variance = torch.log1p(torch.exp(sf.raw_variance)) + 1e-3
    gap = ((mapped - filtered) ** 2 / variance).mean()
    penalty = (variance**2).mean() if variance_term == "square" else variance.log().mean()
    return F.cross_entropy(head, y), gap, penalty


@pytest.mark.parametrize("variance_term", ["square", "log"])
def test_both_phases_losses_match_a_hand_computation(variance_term):
    method = _method(alpha=0.7, feature_weight=0.3, rounds=2, filter_ratio=0.25, variance_term=variance_term)
    with torch.no_grad():
        method.modules()["student_filters"][0].raw_variance.copy_(torch.linspace(-1, 2, 6, dtype=torch.float64))
    s, t = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    logits, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    head_ce, gap, penalty = _by_hand(method, s, t, y, variance_term)
    ce = F.cross_entropy(logits, y)

    def terms(progress: float) -> dict[str, torch.Tensor]:
        state = StepState(int(progress), 0, 4, progress)
        return method.compute({"y": y}, Outputs(logits, {"a": s}), Outputs(logits, {"b": t}), state)

    first_filter, later_filter, student = terms(0.2), terms(2.3), terms(1.0)  # rounds of 2 epochs, 1/4 filtering
    torch.testing.assert_close(first_filter["filter_ce"], head_ce)
    assert float(first_filter["filter_align"].detach()) == 0.0  # the first round: no student filter to align to yet
    torch.testing.assert_close(later_filter["filter_align"], gap)
    torch.testing.assert_close(student["rid"], 0.3 * (gap + penalty))
    torch.testing.assert_close(student["ce"], 0.7 * ce)
    assert student["rid"].requires_grad and not student["filter_ce"].requires_grad
    assert later_filter["filter_align"].requires_grad and not later_filter["rid"].requires_grad


def test_rounds_split_the_epochs_and_start_with_the_filter_phase():
    method = _method(rounds=10, filter_ratio=0.25)  # the authors' defaults: 10 rounds, 1/4 filter phase
    phases = [method.phase(StepState(0, 0, 20, p / 4)) for p in range(80)]  # 20 epochs, 4 steps each
    assert phases[:8] == [(0, True), (0, True), (0, False), (0, False), (0, False), (0, False), (0, False), (0, False)]
    assert phases[8] == (1, True) and phases[-1] == (9, False)
    assert method.trains(StepState(0, 0, 20, 0.0)) == ("teacher_filters",)
    assert method.trains(StepState(0, 0, 20, 1.0)) == ("student", "student_filters")
    defaults = build("rid", {"student_layer": "a", "teacher_layer": "b"}, 3).params
    assert (defaults.alpha, defaults.feature_weight, defaults.rounds, defaults.filter_ratio) == (1.0, 0.1, 10, 0.25)


class TwoStage(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, width), nn.ReLU())
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _splits() -> Splits:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return Splits(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], num_classes=3)


def test_filters_and_student_step_only_in_their_own_phase(tmp_path):
    torch.manual_seed(0)
    student, teacher = TwoStage(4), TwoStage(12)
    method = build("rid", {"student_layer": "body", "teacher_layer": "body", "rounds": 2, "expand": 2}, 3)
    cfg = TrainConfig(epochs=4, batch_size=16, progress=False, cpu=True, train_eval_size=0)
    groups: dict[str, nn.Module] = {}
    before: dict[str, list[torch.Tensor]] = {}
    moved: list[tuple[bool, set[str]]] = []

    def snapshot() -> dict[str, list[torch.Tensor]]:
        return {name: [p.detach().clone() for p in module.parameters()] for name, module in groups.items()}

    def spy(info: StepInfo) -> None:
        nonlocal before
        after = snapshot()
        changed = {n for n in after if any(not torch.equal(a, b) for a, b in zip(after[n], before[n], strict=True))}
        progress = info.epoch + (info.step_in_epoch - 1) / 4
        moved.append((method.phase(StepState(info.epoch, 0, 4, progress))[1], changed))
        before = after

    method_setup = method.setup

    def setup(ctx):  # the modules exist after setup(): snapshot them before the first step
        nonlocal before
        method_setup(ctx)
        groups.update(student=student, **method.modules())
        before = snapshot()

    method.setup = setup  # type: ignore[method-assign]
    fit(student, _splits(), method, cfg, OptimizerConfig(lr=0.1, weight_decay=5e-4), SchedulerConfig(name="constant"),
        out_dir=str(tmp_path), teacher=teacher, callbacks=[spy])  # fmt: skip
    assert len(moved) == 16
    filter_steps = [changed for filtering, changed in moved if filtering]
    student_steps = [changed for filtering, changed in moved if not filtering]
    assert len(filter_steps) == 4 and all(c == {"teacher_filters"} for c in filter_steps), filter_steps
    assert all(c == {"student", "student_filters"} for c in student_steps), student_steps
    assert {p.name for p in (tmp_path / "method").iterdir()} == {
        "teacher_filters.safetensors",
        "student_filters.safetensors",
    }
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(student.state_dict())


def test_resume_in_the_middle_of_a_round_is_bit_identical(tmp_path):
    """16 steps, rounds of 8 with 4 filter steps; the crash after step 10 resumes from the checkpoint at step 9, in
    the second round's filter phase. The teacher's features carry noise channels: drawn again identically."""
    cfg = TrainConfig(epochs=4, batch_size=16, progress=False, cpu=True, train_eval_size=0, checkpoint_every_steps=3)
    params = {"student_layer": "body", "teacher_layer": "body", "rounds": 2, "filter_ratio": 0.5, "expand": 2}

    def run(out: Path, resume: bool = False, callbacks=None) -> tuple[nn.Module, dict[str, nn.Module]]:
        torch.manual_seed(0)
        student, teacher = TwoStage(4), TwoStage(12)
        teacher.feature_transform = NoiseChannels(0.5, 1.0)  # what teacher.nuisance: noise_channels sets
        method = build("rid", params, 3)
        fit(student, _splits(), method, cfg, OptimizerConfig(lr=0.1), SchedulerConfig(name="constant"),
            out_dir=str(out), teacher=teacher, resume=resume, callbacks=callbacks)  # fmt: skip
        return student, method.modules()

    straight, straight_modules = run(tmp_path / "straight")

    def crash(info: StepInfo) -> None:
        if info.global_step == 10:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "crashed", callbacks=[crash])
    resumed, resumed_modules = run(tmp_path / "crashed", resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for name, module in straight_modules.items():
        for a, b in zip(module.state_dict().values(), resumed_modules[name].state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_a_nuisance_teacher_has_its_own_fingerprint(tmp_path):
    weights = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(2)}, str(weights))
    model = ModelConfig(name="mlp")
    clean = TeacherSource(model, weights, tmp_path)
    noisy = TeacherSource(model, weights, tmp_path, nuisance=NuisanceConfig(kind="noise_channels"))
    untrained = TeacherSource(model, weights, tmp_path, nuisance=NuisanceConfig(kind="untrained"))
    assert len({clean.fingerprint(), noisy.fingerprint(), untrained.fingerprint()}) == 3
    assert "nuisance: noise channels" in noisy.describe()
