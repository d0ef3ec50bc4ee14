"""What a training run checks and holds on its directory before and while it writes there.

A run directory is the only record of a run, so every way of spoiling it is refused up front, with one line
and before anything is written:

- ``out`` naming a file, a directory kdlab cannot write, a model import that fails or is not trusted;
- a second run on a directory in use: ``<out>/.lock`` (PID and host, created with ``O_CREAT | O_EXCL``) is held
  for the whole run by the main process (rank 0 under torchrun) and removed on exit, also on an error or
  Ctrl-C; a lock left by a dead process on this host is taken over with a warning;
- ``--resume`` with another configuration than the run's ``config.yaml`` (the keys that differ are listed;
  ``HARMLESS`` keys may change), a truncated or unsafe checkpoint, and ``--resume`` of a finished run: it says
  so and does nothing. Training a finished run for more epochs is ``--extend``, which first copies the
  finished model beside it (``finished-epoch-<N>/``).

Temporary files of atomic writes that a killed run left behind are removed once the lock is held.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from kdlab.config import RunBase, load_config
from kdlab.errors import ConfigError
from kdlab.io import TEMP_SUFFIX, set_default_mode
from kdlab.models.registry import check_import

from .checkpoint import latest_checkpoint, verify_checkpoint
from .config_paths import absolute_paths

LOCK = ".lock"
SUMMARY = "summary.json"
# Keys a resume may change: they decide what is shown, logged or kept, never the arithmetic of training.
HARMLESS = (
    "name",
    "out",
    "tracking",
    "train.progress",
    "train.log_every_steps",
    "train.threads",
    "train.eval_batch_size",
    "train.eval_every",
    "train.checkpoint_every_steps",
    "train.keep_epoch_checkpoints",
    "train.keep_checkpoints_every",
)
FINISHED_OUTPUTS = ("model.safetensors", "summary.json", "evaluation.json", "method")


def _is_main() -> bool:
    """Rank 0 (or no launcher): the process that owns the directory; the Accelerator does not exist yet."""
    return os.environ.get("RANK", "0") == "0"


def contents(out: Path) -> list[Path]:
    """What a run directory holds besides a lock and stale temporary files (without them it is free)."""
    if not out.is_dir():
        return []
    return [
        p for p in out.iterdir() if p.name != LOCK and not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX))
    ]


# ---- the lock ----


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def acquire_lock(out: Path) -> Path:
    """Create ``<out>/.lock`` for this process; refuse (ConfigError) while a live process holds it."""
    path, host = out / LOCK, socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                raise ConfigError(
                    f"run directory {out} is locked by {path}, which names no process; remove it if no run uses {out}"
                ) from None
            pid, where = holder["pid"], holder.get("host", "?")
            if where != host or _alive(pid):
                raise ConfigError(
                    f"run directory {out} is in use by kdlab process {pid} on {where} (lock {path}); wait for it "
                    "to end or choose another out"
                ) from None
            warnings.warn(f"taking over the lock of {out} left by process {pid}, which has ended", stacklevel=2)
            path.unlink(missing_ok=True)
            continue
        except OSError as err:
            raise ConfigError(f"cannot write in run directory {out}: {err.strerror}") from None
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "host": host}, handle)
        return path
    raise ConfigError(f"run directory {out}: could not take its lock {path}; try again")


def release_lock(path: Path) -> None:
    """Remove the lock if it is still this process's (a lock taken over meanwhile stays)."""
    holder = _holder(path)
    if holder is not None and holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def remove_stale_temp(out: Path) -> list[Path]:
    """Delete the temporary files and checkpoint directories (``.*.tmp``) a killed run left in ``out``."""
    removed = []
    for path in sorted(out.rglob(f".*{TEMP_SUFFIX}")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ---- resume ----


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _harmless(key: str) -> bool:
    return any(key == h or key.startswith(f"{h}.") for h in HARMLESS)


def config_changes(out: Path, cfg: RunBase) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored, new)}`` for every key of ``cfg`` that differs from ``<out>/config.yaml`` and matters."""
    path = out / "config.yaml"
    try:  # defaults filled in as for the new config; paths absolute in both (a run saves them so)
        stored = absolute_paths(load_config(path)).model_dump(mode="json")
    except ConfigError:  # written by another kdlab version: compare what it says
        stored = yaml.safe_load(path.read_text()) or {}
    old, new = _flat(stored), _flat(absolute_paths(cfg).model_dump(mode="json"))
    missing = "(absent)"
    return {
        key: (old.get(key, missing), new.get(key, missing))
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing) and not _harmless(key)
    }


def _listed(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key}: {old} -> {new}" for key, (old, new) in changes.items())


def read_summary(out: Path) -> dict[str, Any]:
    return json.loads((out / SUMMARY).read_text())


def keep_finished(out: Path, epochs: int) -> Path:
    """Copy a finished run's outputs to ``<out>/finished-epoch-<epochs>/`` before it is trained on."""
    kept = out / f"finished-epoch-{epochs}"
    if kept.exists():
        raise ConfigError(f"{kept} exists already; move it away before extending {out} again")
    kept.mkdir()
    for name in FINISHED_OUTPUTS:
        source = out / name
        if source.is_dir():
            shutil.copytree(source, kept / name)
        elif source.is_file():
            shutil.copy2(source, kept / name)
    for path in (kept, *kept.rglob("*")):
        set_default_mode(path)
    return kept


def _plan_resume(out: Path, cfg: RunBase, extend: bool) -> tuple[str, int | None]:
    """``("finished", None)``: nothing to do; ``("extend", old_epochs)``; ``("resume", None)``. Refuses (one
    ConfigError line) a changed configuration, an extension without ``--extend``, an unreadable checkpoint."""
    finished = (out / SUMMARY).is_file()
    changes = config_changes(out, cfg) if (out / "config.yaml").is_file() else {}
    epochs = changes.pop("train.epochs", None)
    if changes:
        raise ConfigError(
            f"run directory {out} was started with another configuration ({_listed(changes)}); --resume continues "
            "the same run: undo the change, or pass --overwrite to start again"
        )
    latest = latest_checkpoint(out / "checkpoints")
    if finished and epochs is None:
        return "finished", None
    if finished and epochs is not None:
        old, new = epochs
        if not extend or not isinstance(old, int) or new <= old:
            how = "pass --extend to train on" if extend is False and new > old else "only more epochs extend a run"
            raise ConfigError(
                f"run directory {out} is finished at train.epochs={old}, this config says {new}; {how} "
                f"(the finished model is kept in {out / f'finished-epoch-{old}'}/), or pass --overwrite"
            )
        if latest is None:
            raise ConfigError(f"run directory {out} has no checkpoint to extend from; pass --overwrite")
        verify_checkpoint(latest)
        return "extend", old
    if epochs is not None:
        raise ConfigError(
            f"run directory {out} was started with another configuration (train.epochs: {epochs[0]} -> "
            f"{epochs[1]}, which changes its learning-rate schedule); finish it first, then --extend it"
        )
    if latest is not None:
        verify_checkpoint(latest)
    return "resume", None


@contextmanager
def guard_run(cfg: RunBase, *, resume: bool, overwrite: bool, extend: bool = False) -> Iterator[dict | None]:
    """Check ``cfg.out`` and hold its lock while the body runs. Yields the stored summary when ``--resume`` finds
    the run finished with this configuration (nothing to do, nothing touched), else None.

    ``extend`` implies ``resume``. A directory this call created and the run left empty is removed again."""
    out = Path(cfg.out)
    resume = resume or extend
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file, not a directory; choose another out")
    check_import(cfg.model.name)  # a model that cannot be imported or is not trusted: no directory is made
    action, old_epochs = "fresh", None
    if contents(out) and not overwrite:
        if not resume:
            state = "a finished run" if (out / SUMMARY).exists() else "an unfinished run (use --resume)"
            raise ConfigError(f"run directory {out} already holds {state}; pass --overwrite or choose another out")
        action, old_epochs = _plan_resume(out, cfg, extend)
        if action == "finished":
            yield read_summary(out)
            return
    if not _is_main():
        yield None
        return
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create run directory {out}: {err.strerror}") from None
    lock: Path | None = None
    try:
        lock = acquire_lock(out)
        remove_stale_temp(out)
        if action == "extend" and old_epochs is not None:
            kept = keep_finished(out, old_epochs)
            warnings.warn(
                f"extending the finished run {out} from {old_epochs} to {cfg.train.epochs} epochs (the learning-rate "
                f"schedule is recomputed for the new length); the finished model is kept in {kept}",
                stacklevel=2,
            )
            (out / SUMMARY).unlink()
        yield None
    finally:
        if lock is not None:
            release_lock(lock)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
