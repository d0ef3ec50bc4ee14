"""The ``train.pid_*`` keys: the partial information decomposition of a run's layer pair logged over epochs
(``kdlab.engine.pid_log``, docs/rid.md), and the check that only the classification tasks take them.

``train.pid_every: N`` (0: off) — after every N-th epoch and the last, the PID (Red/Uni/Syn, ``kdlab.eval.pid``)
of the method's first layer pair, or of ``train.pid_layers: [STUDENT_LAYER, TEACHER_LAYER]`` for a method that
taps none, on the first ``train.pid_rows`` validation rows with ``train.pid_clusters`` clusters per side, one line
per measurement in ``<run>/pid.jsonl``. The keys are fields of ``TrainConfig``; the check lives here (mixed into
``RunBase``) so the shared config module stays one screen per concern.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator


class PIDTasks(BaseModel):
    """Mixed into ``RunBase``: ``train.pid_every`` is measured by the classification step (classify and
    text_classify); any other task refuses it instead of ignoring it."""

    @model_validator(mode="after")
    def _pid_is_for_classification(self) -> Any:
        train, task = getattr(self, "train", None), getattr(self, "task", "classify")
        if train is not None and getattr(train, "pid_every", 0) and task not in ("classify", "text_classify"):
            raise ValueError("train.pid_every is for task: classify and text_classify")
        return self
