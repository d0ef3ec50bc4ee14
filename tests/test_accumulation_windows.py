"""The last, shorter accumulation window of an epoch, for the image task, against a float64 loop written here.

``kdlab.engine.fit`` with ``grad_accum = 3`` over 22 rows in micro-batches of 4 makes two optimizer steps. With
``drop_last``: 5 micro-batches, windows of 3 and 2 (12 and 8 rows; dividing the last by ``grad_accum`` instead of
by 2 scales its gradient by 2/3). Without (the default): 6 micro-batches, the last of 2 rows, windows of 12 and
10 rows — the partial batch must count per row (weighting it as a whole batch doubles its rows' weight). The
reference is plain SGD on a float64 copy of the student: one step per window, on the mean cross-entropy of the
window's rows, taken from the epoch permutation in order.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
from kdlab.engine import Splits, fit
from kdlab.engine.batches import epoch_permutation
from kdlab.methods import build

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS, FEATURES, CLASSES = 22, 5, 3
BATCH, ACCUM, LR, SEED = 4, 3, 0.5, 7


def _data() -> Splits:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(ROWS + 12, FEATURES, generator=gen)
    y = torch.randint(0, CLASSES, (ROWS + 12,), generator=gen)
    return Splits(x[:ROWS], y[:ROWS], x[ROWS : ROWS + 6], y[ROWS : ROWS + 6], x[ROWS + 6 :], y[ROWS + 6 :], CLASSES)


def _student() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(FEATURES, 6), nn.Tanh(), nn.Linear(6, CLASSES))


def _reference(student: nn.Module, data: Splits, drop_last: bool) -> dict[str, torch.Tensor]:
    """SGD in float64: per window, one step on the mean cross-entropy over exactly the window's rows."""
    model = copy.deepcopy(student).double()
    used = ROWS // BATCH * BATCH if drop_last else ROWS
    order = epoch_permutation(ROWS, SEED, 0)[:used]
    window = ACCUM * BATCH
    windows = [order[start : start + window] for start in range(0, used, window)]
    assert [len(w) for w in windows] == ([12, 8] if drop_last else [12, 10])
    for rows in windows:
        logits = model(data.x_train[rows].double())
        loss = nn.functional.cross_entropy(logits, data.y_train[rows])  # the mean over the window's rows
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= LR * g
    return {k: v.float() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("drop_last", [True, False])
def test_the_last_shorter_window_is_the_mean_over_its_own_rows(tmp_path, drop_last):
    data, student = _data(), _student()
    expected = _reference(student, data, drop_last)
    cfg = TrainConfig(
        epochs=1,
        batch_size=BATCH,
        grad_accum=ACCUM,
        drop_last=drop_last,
        cpu=True,
        progress=False,
        train_eval_size=0,
    )
    result = fit(
        student,
        data,
        build("ce", {}, CLASSES),
        cfg,
        OptimizerConfig(name="sgd", lr=LR, momentum=0.0, nesterov=False, weight_decay=0.0),
        SchedulerConfig(name="constant"),
        out_dir=tmp_path / "run",
        seed=SEED,
    )
    assert result.steps == 2
    trained = student.state_dict()
    assert trained.keys() == expected.keys()
    moved = max(float((trained[k] - v).abs().max()) for k, v in _student().state_dict().items())
    assert moved > 0.05  # the steps are large enough for a 2/3 scaling of the last one to show
    for key, value in expected.items():
        torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6)
