"""The speed protocol every published kdlab speed number goes through (issue 21, DESIGN §4): a figure that holds
when anyone measures it, or no figure.

- Each contender runs in its own fresh process (no shared allocator, JIT or thread-pool state); its last stdout
  line is one JSON object holding the metric (``trial_result`` adds what the protocol checks).
- Order: one warm-up round (discarded: page cache, CPU frequency, first-import costs), then ``repetitions``
  (≥ 5) rounds in interleaved order A B C A B C ..., so load drift hits every contender alike.
- The same thread count for all: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in the child's environment and
  ``torch.set_num_threads`` in the child (``pin_threads``); each trial reports what torch ran with, and the torch
  build (version + git revision) — a contender on another build or thread count is refused, not compared.
- Reported: median and min–max per contender, and the per-repetition ratios of each contender to the baseline
  (contenders that ran next to each other), with their median and min–max.
- Load: the 1-min load average before the first trial and after the last (and around every trial). A result
  is *publishable* only when the machine was quiet before the start — 1-min load ≤ ``max_load_per_core`` ×
  cores (default 0.25: 0.5 on 2 cores, the "load < 0.5" of the quiet run in issue 21) — and nothing else ran
  beside the trials — load after ≤ the trials' own threads + the same allowance. ``publish`` refuses to write
  anything else to benchmarks/results/ unless ``allow_loaded``; then the file is marked
  "LOADED MACHINE — not a result" in its name, its JSON and its heading.

This module imports only the standard library at load (torch inside ``pin_threads``/``trial_result``), so a
contender's environment (the torchdistill venv) can import it from the source tree.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOADED_MARK = "LOADED MACHINE — not a result"
MAX_LOAD_PER_CORE = 0.25
MIN_REPETITIONS = 5


@dataclass(frozen=True)
class Contender:
    """One side of the comparison: the command (argv; ``python`` is prepended) that runs one trial."""

    name: str
    argv: tuple[str, ...]
    python: str = sys.executable
    imports: str = ""  # what the contender imports and what had to be patched to run it (reported as is)


@dataclass
class ProtocolResult:
    metric: str
    baseline: str
    threads: int
    repetitions: int
    load: dict[str, Any]
    torch_builds: dict[str, str]
    trials: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    warmup: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {name: spread([t[self.metric] for t in runs]) for name, runs in self.trials.items()}

    def ratios(self) -> dict[str, dict[str, Any]]:
        """Per repetition: contender / baseline (they ran in the same round)."""
        base = [t[self.metric] for t in self.trials[self.baseline]]
        out = {}
        for name, runs in self.trials.items():
            if name != self.baseline:
                values = [t[self.metric] / b for t, b in zip(runs, base, strict=True)]
                out[f"{name} / {self.baseline}"] = {**spread(values), "runs": values}
        return out

    def refusals(self, cores: int, max_load_per_core: float = MAX_LOAD_PER_CORE) -> list[str]:
        """Why this is not a result (empty: it is one)."""
        reasons = []
        allowance = max_load_per_core * cores
        if self.load["before"] > allowance:
            reasons.append(f"1-min load {self.load['before']:.2f} before the start > {allowance:.2f} ({cores} cores)")
        if self.load["after"] > self.threads + allowance:
            reasons.append(
                f"1-min load {self.load['after']:.2f} after the last trial > {self.threads} trial threads "
                f"+ {allowance:.2f}: something else ran beside the trials"
            )
        if len(set(self.torch_builds.values())) > 1:
            reasons.append(f"contenders ran on different torch builds: {self.torch_builds}")
        if self.repetitions < MIN_REPETITIONS:
            reasons.append(f"{self.repetitions} repetitions < {MIN_REPETITIONS}")
        return reasons

    def as_dict(self, cores: int, max_load_per_core: float = MAX_LOAD_PER_CORE) -> dict[str, Any]:
        refusals = self.refusals(cores, max_load_per_core)
        return {
            "status": "result" if not refusals else LOADED_MARK,
            "refusals": refusals,
            "metric": self.metric,
            "baseline": self.baseline,
            "threads": self.threads,
            "repetitions": self.repetitions,
            "order": "one warm-up round (discarded), then interleaved rounds A B C ... (one process per trial)",
            "max_load_per_core": max_load_per_core,
            "cores": cores,
            "load_average_1min": self.load,
            "torch_builds": self.torch_builds,
            "summary": self.summary(),
            "ratios": self.ratios(),
            "skipped": self.skipped,
            "trials": self.trials,
            "warmup": self.warmup,
        }


def spread(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def load_1min() -> float:
    return os.getloadavg()[0]


def settle(max_load: float, max_wait_s: float, poll_s: float = 5.0) -> float:
    """Wait (up to ``max_wait_s``) for the 1-min load to fall to ``max_load`` — e.g. after the preparation
    trained a teacher — and return it; the caller decides what a still-loaded machine means."""
    deadline = time.monotonic() + max_wait_s
    load = load_1min()
    while load > max_load and time.monotonic() < deadline:
        time.sleep(poll_s)
        load = load_1min()
    return load


def thread_env(threads: int) -> dict[str, str]:
    """The child's environment: every thread pool torch may use sized to ``threads``."""
    pools = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KDLAB_BENCH_THREADS")
    return dict(os.environ, **dict.fromkeys(pools, str(threads)))


def pin_threads() -> int:
    """In a trial, before any work: torch's intra-op pool to the protocol's count (the environment alone does not
    reach a pool torch already made). Returns the count."""
    import torch

    threads = int(os.environ.get("KDLAB_BENCH_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    return threads


def torch_build() -> str:
    import torch

    return f"{torch.__version__} ({torch.version.git_version[:12]})"


def trial_result(values: dict[str, Any]) -> str:
    """A trial's last stdout line: its values plus the torch build, thread count and process id it ran with."""
    import torch

    return json.dumps(
        {**values, "torch_build": torch_build(), "torch_threads": torch.get_num_threads(), "pid": os.getpid()}
    )


def run_trial(contender: Contender, threads: int, cwd: Path) -> dict[str, Any]:
    before = load_1min()
    done = subprocess.run(
        [contender.python, *contender.argv], capture_output=True, text=True, env=thread_env(threads), cwd=cwd
    )
    if done.returncode != 0:
        raise SystemExit(f"trial {contender.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    if result.get("torch_threads") != threads:
        raise SystemExit(f"trial {contender.name} ran with {result.get('torch_threads')} threads, not {threads}")
    result["load_average_1min"] = [before, load_1min()]
    return result


def run_protocol(
    contenders: Sequence[Contender],
    *,
    metric: str,
    baseline: str,
    repetitions: int = MIN_REPETITIONS,
    threads: int = 2,
    cwd: Path | None = None,
    settle_s: float = 240.0,
    max_load_per_core: float = MAX_LOAD_PER_CORE,
    skipped: dict[str, str] | None = None,
    on_trial: Callable[[int, str, dict[str, Any]], None] | None = None,
) -> ProtocolResult:
    """One warm-up round, then ``repetitions`` interleaved rounds; every trial in its own process."""
    names = [c.name for c in contenders]
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not a contender ({names})")
    cwd = cwd or Path.cwd()
    cores = os.cpu_count() or 1
    before = settle(max_load_per_core * cores, settle_s)
    result = ProtocolResult(metric, baseline, threads, repetitions, {}, {}, skipped=dict(skipped or {}))
    for contender in contenders:  # the warm-up round
        result.warmup[contender.name] = run_trial(contender, threads, cwd)
        if on_trial:
            on_trial(0, contender.name, result.warmup[contender.name])
    result.trials = {name: [] for name in names}
    for repetition in range(1, repetitions + 1):
        for contender in contenders:
            trial = run_trial(contender, threads, cwd)
            result.trials[contender.name].append(trial)
            if on_trial:
                on_trial(repetition, contender.name, trial)
    result.torch_builds = {name: runs[0]["torch_build"] for name, runs in result.trials.items()}
    result.load = {"before": before, "after": load_1min()}
    return result


def publish(
    payload: dict[str, Any],
    out: Path,
    render: Callable[[dict[str, Any]], str],
    *,
    allow_loaded: bool,
    scratch: Path,
) -> Path:
    """Write ``out``.json/.md — only when ``payload`` is a result, or, with ``allow_loaded``, as ``out``-LOADED
    marked as not a result. A refused payload is kept in ``scratch`` (outside results/) and exits with status 2."""
    if payload["status"] != "result":
        if not allow_loaded:
            scratch.mkdir(parents=True, exist_ok=True)
            kept = scratch / f"{out.name}-refused.json"
            kept.write_text(json.dumps(payload, indent=1))
            print(
                f"not written to {out.parent}: {'; '.join(payload['refusals'])} (raw trials: {kept}; "
                "--allow-loaded writes it marked as not a result)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        out = out.with_name(f"{out.name}-LOADED")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    text = render(payload)
    if payload["status"] != "result":
        text = f"# {LOADED_MARK}\n\n" + "\n".join(f"- {r}" for r in payload["refusals"]) + "\n\n" + text
    out.with_suffix(".md").write_text(text)
    return out


def table(payload: dict[str, Any], unit: str, decimals: int = 0) -> list[str]:
    """Markdown rows: median and min–max per contender (``decimals`` places); per-repetition ratios to the baseline."""
    lines = [f"| contender | median {unit} | min–max |", "|---|---:|---:|"]
    d = decimals
    for name, s in payload["summary"].items():
        lines.append(f"| {name} | {s['median']:.{d}f} | {s['min']:.{d}f}–{s['max']:.{d}f} |")
    lines += ["", "| ratio (per repetition) | median | min–max | runs |", "|---|---:|---:|---|"]
    for name, r in payload["ratios"].items():
        runs = ", ".join(f"{v:.3f}" for v in r["runs"])
        lines.append(f"| {name} | {r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | {runs} |")
    for name, why in payload["skipped"].items():
        lines.append(f"\n{name}: not run ({why})")
    return lines
