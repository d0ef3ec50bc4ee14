"""How many torch threads a kdlab run should use on a small CPU: 1 vs all cores, quiet and beside another job.

One contender = one whole ``kdlab train`` process (imports included) on the digits teacher config with
``train.threads`` = 1 or the core count; interleaved (1, N, 1, N, ...) after a warm-up round, 5 repetitions, wall
time per process. ``--busy K`` starts K single-threaded background processes (a float32 matmul loop) for the
whole measurement — another job sharing the cores, as on a shared or CI machine — so the contended case is
reproducible instead of whatever else happened to run. Without ``--busy`` the machine must be quiet (1-min load
≤ 0.5 on 2 cores before the start) or nothing is written to results/ (``--allow-loaded`` marks it).

    python benchmarks/threads.py                 # quiet machine
    python benchmarks/threads.py --busy 1        # beside one single-threaded job
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _env import environment
from protocol import MAX_LOAD_PER_CORE, load_1min, settle, spread

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits" / "teacher.yaml"
BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"


def one_run(threads: int, out: Path) -> float:
    command = [sys.executable, "-m", "kdlab.cli", "train", str(CONFIG), "--overwrite"]
    sets = [f"out={out}", f"train.threads={threads}", "train.progress=false"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run([*command, *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"kdlab train failed:\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threads"] == threads, summary["threads"]
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=0, help="single-threaded background jobs beside the runs")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--allow-loaded", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = [1, cores]
    before = settle(MAX_LOAD_PER_CORE * cores, 240)
    quiet = before <= MAX_LOAD_PER_CORE * cores
    if not quiet and not args.allow_loaded:
        raise SystemExit(f"1-min load {before:.2f} > {MAX_LOAD_PER_CORE * cores}: not measured (--allow-loaded)")
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    times: dict[int, list[float]] = {n: [] for n in counts}
    try:
        time.sleep(3 if busy else 0)
        with tempfile.TemporaryDirectory() as scratch:
            for repetition in range(args.repetitions + 1):  # round 0: warm-up, discarded
                for n in counts:
                    wall = one_run(n, Path(scratch) / f"t{n}")
                    if repetition:
                        times[n].append(wall)
                    print(f"round {repetition} threads {n}: {wall:.2f} s", flush=True)
    finally:
        for process in busy:
            process.kill()
    after = load_1min()
    ratios = [a / b for a, b in zip(times[cores], times[1], strict=True)]
    payload = {
        **environment(),
        "config": str(CONFIG.relative_to(ROOT)),
        "busy_jobs": args.busy,
        "load_1min": {"before": before, "after": after},
        "quiet_before": quiet,
        "wall_seconds": {str(n): times[n] for n in counts},
        "summary": {str(n): spread(times[n]) for n in counts},
        "ratio_all_cores_over_one": {"per_repetition": ratios, **spread(ratios)},
    }
    name = f"threads{'-busy' + str(args.busy) if args.busy else ''}{'' if quiet else '-LOADED'}"
    out = ROOT / "benchmarks" / "results" / name
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    s1, sn, r = payload["summary"]["1"], payload["summary"][str(cores)], payload["ratio_all_cores_over_one"]
    lines = [
        f"# Torch threads for a small kdlab run: 1 vs {cores}"
        + (f", beside {args.busy} busy job(s)" * bool(args.busy)),
        "",
        *([] if quiet else ["**LOADED MACHINE — not a result** (load before the start above 0.5 on 2 cores)", ""]),
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']}; torch {payload['torch']}, kdlab {payload['kdlab']}; "
        f"{payload['date_utc']} UTC  ",
        f"Load average (1 min) before {before:.2f}, after {after:.2f}; background jobs: {args.busy}  ",
        f"Each run: a whole `kdlab train {payload['config']}` process (imports included), interleaved 1, {cores}, 1, "
        f"{cores}, ... after a warm-up round; {args.repetitions} repetitions.",
        "",
        "| threads | median wall s | min–max |",
        "|---:|---:|---:|",
        f"| 1 | {s1['median']:.2f} | {s1['min']:.2f}–{s1['max']:.2f} |",
        f"| {cores} | {sn['median']:.2f} | {sn['min']:.2f}–{sn['max']:.2f} |",
        "",
        f"{cores} threads / 1 thread, per repetition: {', '.join(f'{x:.2f}' for x in ratios)} "
        f"(median {r['median']:.2f}).",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
