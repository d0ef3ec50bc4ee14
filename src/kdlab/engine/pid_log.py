"""``train.pid_every``: the partial information decomposition of a run's layer pair over epochs, in
``<run>/pid.jsonl`` (one line per measurement; ``kdlab report`` plots it).

Why: Red(Y: T, S) and Uni(Y: T \\ S) (``kdlab.eval.pid``) tell a student that takes what its teacher knows about
the labels from one that copies whatever the teacher carries (VID's I(T; S) can rise while Red does not: RID's
claim); a curve over epochs shows when. It is a callback of the one loop at an epoch's last optimizer step — the
weights that epoch's evaluation sees —, not a loop of its own. It reads the student in eval mode on the first
``pid_rows`` validation rows, without gradients and outside the random streams training draws from, so a run
with ``pid_every`` trains bit for bit as one without; the frozen teacher's features (a nuisance teacher's with
its noise, drawn from the run's seed) are taken once, before training. Each measurement is a point estimate
(``estimate`` with no bootstrap): ``kdlab evaluate --pid`` gives intervals on test.

Resume: the line of epoch E is written after dropping every line of epoch ≥ E, so a resumed run that replays the
end of epoch E (its checkpoint was earlier) replaces that line instead of repeating it, and the file describes
one trajectory. Only the main process measures and writes; under torchrun the others go on to the epoch's barrier.
"""

from __future__ import annotations

import json
import time

import torch

from kdlab.config import TrainConfig
from kdlab.errors import ConfigError
from kdlab.eval.pid import PID_LOG, estimate, read_log
from kdlab.io import atomic_write_text
from kdlab.methods import Method

from .loop import StepInfo
from .supervised import ClassifyStep, teacher_features


def pid_pair(
    cfg: TrainConfig, method: Method, has_teacher: bool, val_rows: int | None = None
) -> tuple[str, str] | None:
    """The (student, teacher) layers ``train.pid_every`` measures (None when it is off): ``train.pid_layers``, else
    the method's first tapped pair. ``ConfigError`` when there is none, no teacher, or too few validation rows
    (``val_rows``, when known) for ``pid_clusters``: checked before a run directory is made."""
    if not cfg.pid_every:
        return None
    if not has_teacher:
        raise ConfigError("train.pid_every needs a teacher (the T of Red(Y: T, S)): add a 'teacher' section")
    rows = cfg.pid_rows if val_rows is None else min(cfg.pid_rows, val_rows)
    if rows < cfg.pid_clusters:
        raise ConfigError(
            f"train.pid_every: {rows} validation rows for train.pid_clusters={cfg.pid_clusters}; the PID is measured "
            "on validation rows (data.val_fraction > 0, train.pid_rows)"
        )
    if cfg.pid_layers is not None:
        return cfg.pid_layers[0], cfg.pid_layers[1]
    needs = method.requires()
    if needs.student_features and needs.teacher_features:
        return needs.student_features[0], needs.teacher_features[0]
    raise ConfigError(
        f"train.pid_every: method {method.name!r} taps no layer pair; name one with "
        "train.pid_layers: [STUDENT_LAYER, TEACHER_LAYER]"
    )


class PIDLog:
    """The loop callback: at the end of every ``pid_every``-th epoch and of the last, one line of ``pid.jsonl``."""

    def __init__(
        self, step: ClassifyStep, pair: tuple[str, str], cfg: TrainConfig, *, resume: bool, main: bool, seed: int
    ) -> None:
        rows = min(cfg.pid_rows, len(step.data["y_val"]))
        self.student, self.layers, self.cfg, self.main = step.student, pair, cfg, main
        self.path = step.out_dir / PID_LOG
        self.x, self.y = step.data["x_val"][:rows], step.data["y_val"][:rows].cpu().numpy()
        self.teacher = None
        if main:
            with torch.random.fork_rng(devices=[]):  # the noise of a nuisance teacher: the run's, not training's
                torch.manual_seed(seed)
                self.teacher = step.split_teacher_features("val", (pair[1],), rows)[pair[1]].numpy()
            if not resume:
                self.path.unlink(missing_ok=True)

    def due(self, info: StepInfo) -> bool:
        epoch = info.epoch + 1
        return info.epoch_end and (epoch % self.cfg.pid_every == 0 or epoch == self.cfg.epochs)

    def __call__(self, info: StepInfo) -> None:
        if not (self.main and self.due(info)):
            return
        started = time.perf_counter()
        student_layer, teacher_layer = self.layers
        was_training = self.student.training
        with torch.random.fork_rng(devices=[]):
            features = teacher_features(self.student, self.x, (student_layer,), self.cfg.eval_batch_size, torch.float32)
        self.student.train(was_training)
        assert self.teacher is not None
        found = estimate(self.teacher, features[student_layer].numpy(), self.y, self.cfg.pid_clusters, bootstrap=0)
        line = {
            "epoch": info.epoch + 1,
            "step": info.global_step,
            "split": "val",
            "rows": found.rows,
            "clusters": found.clusters,
            "student_layer": student_layer,
            "teacher_layer": teacher_layer,
            **found.point.as_dict(),
            "seconds": round(time.perf_counter() - started, 3),
        }
        kept = [r for r in read_log(self.path.parent) if r["epoch"] < line["epoch"]]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in [*kept, line]))
