"""The run directory every command writes (DESIGN §3.4) and the Accelerator a run uses: one public module.

A run directory is complete exactly when ``summary.json`` exists: it is removed when a run starts and written
last. ``prepare_out`` refuses to reuse a directory unless asked (``--resume``/``--overwrite``); reports (a
method's selection table, an evaluation) are written atomically, on the main process only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

import kdlab
from kdlab.config import RunBase, TrackingConfig, TrainConfig, dump_config
from kdlab.errors import ConfigError
from kdlab.io import atomic_write_json, atomic_write_text

from .config_paths import absolute_paths
from .runguard import SUMMARY, contents


def prepare_out(out: Path, resume: bool, overwrite: bool, acc: Accelerator) -> None:
    """Make ``out`` ready for a run: refuse a finished or unfinished run there unless resuming or overwriting.
    The run's lock (``engine.runguard``) stays: an overwrite empties the directory around it."""
    if acc.is_main_process:
        if contents(out) and not resume:
            if not overwrite:
                state = "a finished run" if (out / SUMMARY).exists() else "an unfinished run (use --resume)"
                raise ConfigError(f"run directory {out} already holds {state}; pass --overwrite or choose another out")
            for path in contents(out):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        out.mkdir(parents=True, exist_ok=True)
        (out / SUMMARY).unlink(missing_ok=True)
    acc.wait_for_everyone()


def write_config(out: Path, cfg: RunBase) -> None:
    """config.yaml with every path absolute, and where the config's own model modules were found: what
    ``kdlab evaluate RUN`` (and ``export``, ``report``, ``teacher.run``) need from any working directory."""
    from kdlab.models.trust import save_roots

    atomic_write_text(out / "config.yaml", dump_config(absolute_paths(cfg)))
    save_roots(out)


def use_cpu(train: TrainConfig) -> bool:
    """CPU when asked or when there is no GPU; Accelerate then runs torchrun's processes with gloo."""
    return train.cpu or not torch.cuda.is_available()


def new_accelerator(**kwargs: Any) -> Accelerator:
    """A fresh Accelerator per run: Accelerate keeps one global state per process (mixed precision, ...),
    which would make a second run in the same Python process with other settings fail. The process
    group (torchrun/accelerate launch) is kept."""
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(**kwargs)


def run_accelerator(train: TrainConfig, tracking: TrackingConfig, out: Path) -> Accelerator:
    """The Accelerator of a training run, with the trackers the config asks for (checked before anything runs);
    ``train.threads`` sets torch's CPU threads for the process."""
    if train.threads is not None:
        torch.set_num_threads(train.threads)
    trackers = [name for name, on in (("tensorboard", tracking.tensorboard), ("mlflow", tracking.mlflow)) if on]
    for name in trackers:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"tracking.{name} needs the tracking extra: pip install 'kdlab[tracking]'")
    if tracking.mlflow:  # a local sqlite store in the run directory unless told otherwise
        import mlflow

        default = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out.resolve()}/mlflow.db"
        mlflow.set_tracking_uri(tracking.mlflow_uri or default)
    return new_accelerator(
        cpu=use_cpu(train), mixed_precision=train.mixed_precision, log_with=trackers or None, project_dir=str(out)
    )


def start_trackers(acc: Accelerator, tracking: TrackingConfig, name: str, config: dict[str, Any]) -> None:
    if acc.trackers is not None and (tracking.tensorboard or tracking.mlflow):
        acc.init_trackers(name, config=flat(config))


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b": value}`` with scalar values (what trackers accept)."""
    result: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            result.update(flat(value, f"{name}."))
        else:
            result[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return result


def write_report(
    out: Path, stem: str, payload: dict[str, Any], plot: Callable[[Path], None] | None, acc: Accelerator
) -> tuple[Path, Path | None]:
    """``<out>/<stem>.json`` (and ``<stem>.png`` drawn by ``plot``) on the main process; every process waits."""
    json_path, png_path = out / f"{stem}.json", (out / f"{stem}.png" if plot is not None else None)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_path, payload)
        if plot is not None and png_path is not None:
            plot(png_path)
    acc.wait_for_everyone()
    return json_path, png_path


def write_summary(out: Path, summary: dict[str, Any], acc: Accelerator) -> None:
    """summary.json, last: from now on the run directory is complete."""
    if acc.is_main_process:
        atomic_write_json(out / SUMMARY, summary)
    if acc.trackers:
        acc.end_training()


def write_evaluation(run: Path, result: dict[str, Any]) -> dict[str, Any]:
    """evaluation.json, and the same under "evaluation" in summary.json."""
    atomic_write_json(run / "evaluation.json", result)
    summary_path = run / SUMMARY
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        summary["evaluation"] = result
        atomic_write_json(summary_path, summary)
    return result


def versions(**more: str) -> dict[str, str]:
    return {"kdlab": kdlab.__version__, "torch": torch.__version__, **more, "python": platform.python_version()}
