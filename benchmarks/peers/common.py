"""What every peer-benchmark variant shares; imports only torch and ``kdlab.models`` (torch alone), so the
torchdistill virtual environment can use it from the source tree without installing kdlab's dependencies.

The work directory (made once by ``run.py``) holds the Fashion-MNIST tensors, the trained teacher and the
student's initial weights; every variant starts from exactly these, draws the same batches (the epoch
permutation is ``torch.randperm`` under the generator of ``kdlab.engine.batches.epoch_permutation``) and
optimises the same loss, so their losses and accuracies must agree to float rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import models

# the KD objective of torchdistill's KDLoss: alpha · CE + (1 - alpha) · T² · KL(p_t ‖ p_s), batchmean
T, ALPHA = 4.0, 0.1
BETA = 1.0 - ALPHA
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
BATCH = 128
TEACHER = {"name": "cnn", "width": 32}
STUDENT = {"name": "cnn", "width": 8}
WARMUP_STEPS = 20  # steady-state samples/s is measured from this optimizer step to the epoch's last one
LOSS_TAIL = 100  # the reported training loss: mean over the epoch's last this many steps


def build(spec: dict, num_classes: int = 10, in_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return models.create(spec["name"], num_classes, in_shape, **kwargs)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of kdlab's epoch permutation, so a RandomSampler draws the very same order."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def load_work(work: Path) -> dict[str, Tensor]:
    return torch.load(work / "data.pt")


def load_models(work: Path, seed: int) -> tuple[nn.Module, nn.Module]:
    teacher = build(TEACHER)
    teacher.load_state_dict(torch.load(work / "teacher.pt"))
    student = build(STUDENT)
    student.load_state_dict(torch.load(work / f"student-init-{seed}.pt"))
    return teacher.eval().requires_grad_(False), student


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)


def kd_objective(student_logits: Tensor, teacher_logits: Tensor, y: Tensor) -> Tensor:
    """The floor's loss, written the shortest correct way."""
    kl = F.kl_div(
        F.log_softmax(student_logits / T, -1),
        F.log_softmax(teacher_logits / T, -1),
        log_target=True,
        reduction="batchmean",
    )
    return ALPHA * F.cross_entropy(student_logits, y) + BETA * T * T * kl


@torch.inference_mode()
def test_metrics(student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy, CE and the KD objective on the test split, and top-1 agreement with the teacher."""
    student.eval()
    s = torch.cat([student(x[i : i + 1000]) for i in range(0, len(x), 1000)]).float()
    t = torch.cat([teacher(x[i : i + 1000]) for i in range(0, len(x), 1000)]).float()
    return {
        "test_accuracy": float((s.argmax(1) == y).float().mean()),
        "test_ce": float(F.cross_entropy(s, y)),
        "test_kd_objective": float(kd_objective(s, t, y)),
        "test_agreement": float((s.argmax(1) == t.argmax(1)).float().mean()),
    }


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (VmHWM: reset at exec, unlike getrusage's ru_maxrss,
    which a child inherits from the process that started it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Clock:
    """Times a training call: ``start()`` before it, ``step(loss)`` after every optimizer step."""

    batch: int
    t0: float = 0.0
    stamps: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def step(self, loss: float) -> None:
        self.stamps.append(time.perf_counter())
        self.losses.append(loss)

    def result(self) -> dict[str, float]:
        steps = len(self.stamps)
        steady = (steps - WARMUP_STEPS) * self.batch / (self.stamps[-1] - self.stamps[WARMUP_STEPS - 1])
        tail = self.losses[-LOSS_TAIL:]
        return {
            "steps": steps,
            "epoch_seconds": self.stamps[-1] - self.t0,
            "steady_samples_per_second": steady,
            "steady_seconds": self.stamps[-1] - self.stamps[WARMUP_STEPS - 1],
            "train_loss_tail": sum(tail) / len(tail),
            "first_losses": self.losses[:5],
            "first_step_seconds": self.stamps[0] - self.t0,
        }
