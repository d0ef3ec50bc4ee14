"""``kdlab sweep``: one run per point of a grid over dotted config keys, then one table and one plot.

``--grid model.kwargs.width=8,16,32 --grid seed=0,1,2`` is the cartesian product (values parsed as YAML;
commas inside brackets/braces belong to the value). Each point is a normal run directory
``<root>/<key>=<value>-...`` (root: ``--out``, default ``<config out>-sweep``), trained in this process
(``jobs=1``) or in ``jobs`` parallel ``kdlab`` processes. Running the sweep again skips finished points and
resumes interrupted ones (``engine.reuse``). Results: ``<root>/sweep.json``, ``sweep.md`` and ``sweep.png``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlab import api
from kdlab.config import RunConfig, dump_config, load_config
from kdlab.engine.loop import progress_bar
from kdlab.errors import ConfigError, TrainingError

from .reuse import Action, check_method, plan, read_summary, run_or_skip


def split_values(text: str) -> list[str]:
    """Split on commas that are not inside [...] / {...} / quotes."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["a.b=1,2", "seed=0,1"]`` → ``{"a.b": [1, 2], "seed": [0, 1]}`` (one clear error for a bad item)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(f"--grid expects key.sub=v1,v2,..., got {item!r}")
        if key in grid:
            raise ConfigError(f"--grid {key} given twice")
        values = []
        for part in split_values(text):
            if not part:
                raise ConfigError(f"--grid {key}: empty value in {text!r}")
            try:
                values.append(yaml.safe_load(part))
            except yaml.YAMLError:
                values.append(part)
        grid[key] = values
    return grid


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The last part of each dotted key, or the whole key where two keys would share it."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


@dataclass
class Point:
    name: str
    values: dict[str, Any]  # key -> the value used
    labels: dict[str, str]  # key -> how it is shown
    cfg: RunConfig
    action: Action = "fresh"
    summary: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class SweepResult:
    root: Path
    keys: list[str]
    points: list[Point]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[Point]:
        return [p for p in self.points if p.summary is None]


def _normalise(grid: dict[str, list[Any] | dict[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
    """Each key's (label, value) pairs; a mapping gives explicit labels (Python API)."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for key, values in grid.items():
        pairs = list(values.items()) if isinstance(values, dict) else [(_slug(v), v) for v in values]
        if not pairs:
            raise ConfigError(f"--grid {key}: no values")
        out[key] = pairs
    if not out:
        raise ConfigError("sweep needs at least one --grid key=v1,v2,...")
    return out


def make_points(
    config: str | Path | dict[str, Any] | RunConfig,
    grid: dict[str, list[Any] | dict[str, Any]],
    overrides: list[str] | None = None,
    root: str | Path | None = None,
) -> tuple[Path, list[Point]]:
    """Every grid point's validated config (nothing runs, nothing is written: typos fail here)."""
    pairs = _normalise(grid)
    base = load_config(config, overrides)
    root = Path(root) if root is not None else Path(f"{base.out}-sweep")
    short = _short_keys(list(pairs))
    points = []
    for combo in itertools.product(*pairs.values()):
        labels = {key: label for key, (label, _) in zip(pairs, combo, strict=True)}
        values = {key: value for key, (_, value) in zip(pairs, combo, strict=True)}
        name = "-".join(f"{short[k]}={labels[k]}" for k in pairs)
        sets = [*(overrides or []), *(f"{k}={json.dumps(v)}" for k, v in values.items()), f"out={root / name}"]
        try:
            cfg = load_config(config, sets)
            check_method(cfg)
        except ConfigError as err:
            raise ConfigError(f"sweep point {name}: {err}") from None
        points.append(Point(name, values, labels, cfg))
    return root, points


def sweep(
    config: str | Path | dict[str, Any] | RunConfig,
    grid: dict[str, list[Any] | dict[str, Any]],
    overrides: list[str] | None = None,
    *,
    root: str | Path | None = None,
    jobs: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Run every grid point (``distill`` if the config has a teacher section, else ``train``) and report."""
    from kdlab.eval.sweep_report import write_report

    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    root, points = make_points(config, grid, overrides, root)
    for point in points:  # before anything runs: a directory of another configuration is an error
        point.action = plan(point.cfg, overwrite=overwrite)
    bar = progress_bar(progress)
    with bar:
        task = bar.add_task("sweep", total=len(points), info="")
        for point in points:
            if point.action == "skip":
                point.summary = read_summary(Path(point.cfg.out))
                bar.update(task, advance=1, info=f"{point.name} (done before)")
        todo = [p for p in points if p.summary is None]
        if jobs == 1:
            for point in todo:
                bar.update(task, info=point.name)
                cfg = point.cfg.model_copy(update={"train": point.cfg.train.model_copy(update={"progress": False})})
                try:
                    point.summary, _ = run_or_skip(cfg, distilling=cfg.teacher is not None, overwrite=overwrite)
                except (ConfigError, TrainingError) as err:
                    point.error = str(err)
                bar.update(task, advance=1)
        else:
            _run_parallel(root, todo, jobs, lambda p: bar.update(task, advance=1, info=p.name))
    result = SweepResult(root, list(grid), points)
    result.files = write_report(result)
    if result.failed:
        first = result.failed[0]
        raise TrainingError(
            f"sweep: {len(result.failed)} of {len(points)} runs failed (first: {first.name}: {first.error}); "
            f"see {root / 'logs'}; the others are in {result.files['md']}"
        )
    return result


def _run_parallel(root: Path, todo: list[Point], jobs: int, done) -> None:
    """``jobs`` ``kdlab`` processes at a time, each on its own resolved config; logs in ``<root>/logs/``."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **api.import_environment()}  # the jobs find (and trust) the same model code
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    waiting, running = list(todo), []
    while waiting or running:
        while waiting and len(running) < jobs:
            point = waiting.pop(0)
            config_file = root / "configs" / f"{point.name}.yaml"
            config_file.write_text(dump_config(point.cfg))
            command = "distill" if point.cfg.teacher is not None else "train"
            flags = {"resume": ["--resume"], "overwrite": ["--overwrite"]}.get(point.action, [])
            log = open(root / "logs" / f"{point.name}.log", "w")  # noqa: SIM115  (closed when the process ends)
            args = [sys.executable, "-m", "kdlab.cli", command, str(config_file), "--set", "train.progress=false"]
            process = subprocess.Popen([*args, *flags], stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((point, process, log))
        time.sleep(0.2)
        for item in list(running):
            point, process, log = item
            if process.poll() is None:
                continue
            running.remove(item)
            log.close()
            out = Path(point.cfg.out)
            if process.returncode == 0 and (out / "summary.json").is_file():
                point.summary = read_summary(out)
            else:
                lines = (root / "logs" / f"{point.name}.log").read_text().strip().splitlines()
                point.error = lines[-1] if lines else f"exit code {process.returncode}"
            done(point)
