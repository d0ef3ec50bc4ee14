"""Loss-weight schedules: exact values at given epochs, one-line config errors, and the loss a run logs per epoch."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.config import ConfigError, OptimizerConfig, SchedulerConfig, TrainConfig
from kdlab.engine import Splits, fit
from kdlab.methods import Outputs, StepState, build
from kdlab.methods.schedule import Constant, Cosine, Linear, Step, value_at

LINEAR = {"schedule": "linear", "start": 0.9, "end": 0.1}
STEP = {"schedule": "step", "milestones": [2, 3], "values": [1.0, 0.5, 0.25]}
COSINE = {"schedule": "cosine", "start": 4.0, "end": 1.0}


def test_values_at_given_epochs():
    linear = Linear(**LINEAR)
    assert [value_at(linear, e, 5) for e in (1, 2, 3, 4, 5, 6)] == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1, 0.1])
    short = Linear(schedule="linear", start=0.0, end=1.0, epochs=3)  # reaches `end` at epoch 3 of 10, then stays
    assert [value_at(short, e, 10) for e in (1, 2, 3, 10)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    cosine = Cosine(**COSINE)
    # 4 - 3 * (1 - cos(pi * t)) / 2 with t = (e - 1) / 4
    assert value_at(cosine, 2, 5) == pytest.approx(4 - 3 * (1 - math.cos(math.pi / 4)) / 2)
    assert [value_at(cosine, e, 5) for e in (1, 3, 5)] == pytest.approx([4.0, 2.5, 1.0])
    step = Step(**STEP)
    assert [value_at(step, e, 5) for e in (1, 2, 3, 4, 5)] == [1.0, 1.0, 0.5, 0.25, 0.25]
    assert value_at(Constant(schedule="constant", value=0.3), 7, 9) == 0.3
    assert value_at(0.7, 3, 5) == 0.7
    assert value_at(Linear(**LINEAR), 1, 1) == 0.1  # `end` is reached at the last epoch, even the first


def test_kd_until_epoch_switches_to_cross_entropy_only():
    method = build("kd", {"alpha": LINEAR, "beta": STEP, "temperature": COSINE, "kd_until_epoch": 3}, 10)
    values = [method.current_values(StepState(e - 1, 0, 5, e - 1.0)) for e in (1, 3, 4, 5)]
    assert values[0] == pytest.approx({"alpha": 0.9, "beta": 1.0, "temperature": 4.0})
    assert values[1] == pytest.approx({"alpha": 0.5, "beta": 0.5, "temperature": 2.5})
    assert values[2]["alpha"] == 1.0 and values[2]["beta"] == 0.0
    assert values[3] == pytest.approx({"alpha": 1.0, "beta": 0.0, "temperature": 1.0})


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"alpha": {"schedule": "linaer", "start": 1, "end": 0}}, "method.alpha: unknown schedule 'linaer'"),
        ({"beta": {"schedule": "linear", "strat": 1, "end": 0}}, "unknown schedule key 'strat'"),
        ({"beta": {"schedule": "linear", "start": 1, "end": -0.5}}, "must be >= 0.0 at every epoch (got -0.5)"),
        ({"temperature": {"schedule": "step", "milestones": [2], "values": [4, 0]}}, "must be > 0.0"),
        ({"alpha": {"schedule": "step", "milestones": [2], "values": [1]}}, "one more value than milestones"),
        ({"alpha": {"schedule": "step", "milestones": [3, 2], "values": [1, 2, 3]}}, "increasing epochs"),
        ({"alpha": {"start": 1}}, "needs a 'schedule' key"),
        ({"alpha": "high"}, "expected a number or a schedule"),
    ],
)
def test_bad_schedules_are_one_line_config_errors(params, fragment):
    with pytest.raises(ConfigError) as err:
        build("kd", params, 10)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_compute_matches_a_hand_computation_at_an_epoch():
    method = build("kd", {"alpha": LINEAR, "beta": STEP, "temperature": COSINE}, 4)
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    terms = method.compute(
        {"y": y}, Outputs(logits=s), Outputs(logits=t), StepState(2, 0, 5, 2.5)
    )  # epoch 3: alpha .5, beta .5, T 2.5
    T = 2.5
    kl = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(s, y))
    torch.testing.assert_close(terms["kd"], 0.5 * kl)


def test_a_run_logs_the_values_in_effect_and_its_loss_follows_them(tmp_path):
    """One full batch per epoch and a vanishing learning rate: each epoch's logged loss is the initial model's."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    splits = Splits(x, y, x[:8], y[:8], x[:8], y[:8], num_classes=3)
    student, teacher = nn.Linear(5, 3), nn.Linear(5, 3)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    params = {"alpha": LINEAR, "beta": STEP, "temperature": COSINE, "kd_until_epoch": 3}
    cfg = TrainConfig(epochs=4, batch_size=32, progress=False, cpu=True, log_every_steps=1000)
    optimizer = OptimizerConfig(name="sgd", lr=1e-12, momentum=0.0, weight_decay=0.0)
    fit(student, splits, build("kd", params, 3), cfg, optimizer, SchedulerConfig(name="constant"), out_dir=tmp_path,
        teacher=teacher)  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    with torch.no_grad():
        s = F.linear(x, initial["weight"], initial["bias"])
        t = teacher(x)
    for record in records:
        e = record["epoch"]
        alpha, beta, T = (
            value_at(Linear(**LINEAR), e, 4),
            value_at(Step(**STEP), e, 4),
            value_at(Cosine(**COSINE), e, 4),
        )
        if e > 3:
            alpha, beta = 1.0, 0.0
        assert record["method/alpha"] == pytest.approx(alpha)
        assert record["method/beta"] == pytest.approx(beta)
        assert record["method/temperature"] == pytest.approx(T)
        kl = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
        assert record["train/ce"] == pytest.approx(alpha * float(F.cross_entropy(s, y)), rel=1e-5)
        if beta > 0:
            assert record["train/kd"] == pytest.approx(beta * float(kl), rel=1e-5)
        else:
            assert "train/kd" not in record
