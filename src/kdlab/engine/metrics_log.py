"""metrics.jsonl (one JSON object per logged step or epoch) plus Accelerate's trackers, main process only."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from accelerate import Accelerator


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    def __init__(self, path: Path, accelerator: Accelerator, resume_offset: int | None) -> None:
        self.path = path
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        if self.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_offset is None:
                path.write_text("")
            else:  # drop lines logged after the checkpoint we resume from: they will be logged again
                with open(path, "r+b") as handle:
                    handle.truncate(resume_offset)

    def offset(self) -> int:
        return os.path.getsize(self.path) if self.main and self.path.exists() else 0

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.main:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        numeric = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.accelerator.trackers:
            self.accelerator.log(numeric, step=step)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
