"""Where a KD step's time goes (the peer benchmark's job: CNN-32 teacher, CNN-8 student, batch 128, CPU).

    python benchmarks/peers/profile_step.py

1. Phases of one step, timed apart (median over 40 steps): teacher forward (inference_mode), student forward
   + loss, backward, optimizer step — with the switches off, with channels-last, with channels-last + a bf16
   teacher.
2. ``torch.profiler`` over 30 steps of ``kdlab.engine.fit`` (defaults): the operators with the most self CPU
   time, and the share of the step outside any operator (Python: the loop, the method, the callbacks).
Results: benchmarks/results/peers_profile.{json,md}.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from _env import environment  # noqa: E402
from common import ALPHA, BATCH, BETA, STUDENT, TEACHER, T, build, kd_objective, sgd  # noqa: E402

from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig  # noqa: E402
from kdlab.data import load_dataset  # noqa: E402
from kdlab.engine import Splits, fast_student, fast_teacher, fit  # noqa: E402
from kdlab.io import atomic_write_json, atomic_write_text  # noqa: E402
from kdlab.methods import build as build_method  # noqa: E402

RESULTS = HERE.parent / "results"
SETTINGS = {
    "switches off": {},
    "channels_last (teacher, student)": {"channels_last": True},
    "channels_last + bf16 teacher": {"channels_last": True, "precision": "bf16"},
}


class _StopError(Exception):
    pass


def phases(data, setting: dict, steps: int = 40) -> dict[str, float]:
    torch.manual_seed(0)
    teacher = fast_teacher(
        build(TEACHER),
        channels_last=setting.get("channels_last", False),
        precision=setting.get("precision", "fp32"),
    )
    student = fast_student(build(STUDENT), channels_last=setting.get("channels_last", False))
    optimizer = sgd(student)
    times: dict[str, list[float]] = {"teacher forward": [], "student forward + loss": [], "backward": [], "step": []}
    for i in range(steps + 5):
        idx = torch.randint(0, len(data.y_train), (BATCH,), generator=torch.Generator().manual_seed(i))
        x, y = data.x_train[idx], data.y_train[idx]
        t0 = time.perf_counter()
        with torch.inference_mode():
            t_logits = teacher(x)
        t1 = time.perf_counter()
        loss = kd_objective(student(x), t_logits.clone(), y)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        loss.item()
        t4 = time.perf_counter()
        if i >= 5:
            for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[name].append(dt * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def operator_profile(data, steps: int = 30) -> dict:
    torch.manual_seed(0)
    teacher, student = build(TEACHER).eval().requires_grad_(False), build(STUDENT)
    cfg = TrainConfig(epochs=1, batch_size=BATCH, progress=False, log_every_steps=10**9, train_eval_size=0, cpu=True)
    splits = Splits(
        data.x_train, data.y_train, data.x_val[:256], data.y_val[:256], data.x_test[:256], data.y_test[:256], 10
    )
    stamps: dict[int, float] = {}
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def clock(info) -> None:
        if info.global_step == 5:
            profiler.start()
            stamps[5] = time.perf_counter()
        if info.global_step == 5 + steps:
            stamps[5 + steps] = time.perf_counter()
            profiler.stop()
            raise _StopError

    with tempfile.TemporaryDirectory() as out, contextlib.suppress(_StopError):
        fit(
            student,
            splits,
            build_method("kd", {"alpha": ALPHA, "beta": BETA, "temperature": T}, 10),
            cfg,
            OptimizerConfig(lr=0.05),
            SchedulerConfig(name="constant"),
            out_dir=Path(out),
            teacher=teacher,
            callbacks=[clock],
        )
    wall_ms = (stamps[5 + steps] - stamps[5]) * 1e3 / steps
    events = profiler.key_averages()
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    total_self_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    return {
        "step_ms_profiled": wall_ms,
        "operators_self_ms_per_step": total_self_ms,
        "top": [
            {"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps, "calls_per_step": e.count / steps}
            for e in top
        ],
    }


def main() -> None:
    data = load_dataset("fashion_mnist")
    result = {"environment": environment(), "phases_ms": {}, "profile": None}
    for name, setting in SETTINGS.items():
        result["phases_ms"][name] = phases(data, setting)
        print(name, {k: round(v, 1) for k, v in result["phases_ms"][name].items()}, flush=True)
    result["profile"] = operator_profile(data)
    env, prof = result["environment"], result["profile"]
    lines = [
        "# Where a KD step's time goes (CPU)",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}; versions: torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC  ",
        "Job of benchmarks/results/peers.md: CNN-32 teacher, CNN-8 student, batch 128; median ms over 40 steps.",
        "",
        "| setting | teacher forward | student forward + loss | backward | optimizer step | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, p in result["phases_ms"].items():
        cells = " | ".join(f"{v:.1f}" for v in p.values())
        lines.append(f"| {name} | {cells} | {sum(p.values()):.1f} |")
    lines += [
        "",
        f"torch.profiler over 30 steps of kdlab.engine.fit (switches off): {prof['step_ms_profiled']:.1f} ms per "
        f"step under the profiler, {prof['operators_self_ms_per_step']:.1f} ms of it inside operators "
        f"({100 * prof['operators_self_ms_per_step'] / prof['step_ms_profiled']:.0f}%); the rest is Python "
        "(loop, method, callbacks) and the profiler's own cost.",
        "",
        "| operator | self ms / step | calls / step |",
        "|---|---:|---:|",
        *[f"| `{t['op']}` | {t['self_ms_per_step']:.2f} | {t['calls_per_step']:.0f} |" for t in prof["top"]],
    ]
    out = RESULTS / "peers_profile"
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
