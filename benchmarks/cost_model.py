"""How kdlab's time per epoch grows with teacher size, student size, data size and processes; when the logit
cache pays for itself. Measured points + least-squares lines (docs/cost-model.md quotes the results).

    python benchmarks/cost_model.py            # ~5 min on 2 quiet cores
    python benchmarks/cost_model.py --quick    # fewer points and steps

Fashion-MNIST tensors in memory, CNN teacher and student (widths swept), batch 128, KD (0.1·CE + 0.9·T²·KL,
T = 4), SGD. A step's time is the median over 3 repeats of the steady seconds/step between optimizer steps
``warmup`` and ``warmup + steps`` (kdlab.engine.fit with step callbacks); an epoch's time is measured whole
(fit's training loop, no evaluation). Processes: ``kdlab distill`` under torchrun with 1 and 2 processes
(threads split between them), samples/s from summary.json. Results: benchmarks/results/cost_model.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab import models
from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
from kdlab.data import load_dataset
from kdlab.engine import Splits, fit
from kdlab.engine.checkpoint import save_weights
from kdlab.engine.predict import predict
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.methods import build

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
BATCH = 128
KD = {"alpha": 0.1, "beta": 0.9, "temperature": 4.0}


class _StopError(Exception):
    """Ends a measurement once its steps are timed."""


def forward_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one sample's forward pass through the conv and linear layers."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * k
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, *in_shape))
    for handle in handles:
        handle.remove()
    return total


def cnn(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("cnn", 10, (1, 28, 28), width=width)


def train_fit(data, teacher, student_width, rows, cached, callbacks, epochs=1) -> float:
    """One kdlab fit on the first ``rows`` training rows; returns the wall seconds of the call."""
    splits = Splits(data.x_train[:rows], data.y_train[:rows], data.x_val, data.y_val, data.x_test, data.y_test, 10)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, progress=False, log_every_steps=10**9, train_eval_size=0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out, contextlib.suppress(_StopError):
        fit(
            cnn(student_width, 1),
            splits,
            build("kd", KD, 10),
            cfg,
            OptimizerConfig(lr=0.05),
            SchedulerConfig(name="constant"),
            out_dir=Path(out),
            teacher=None if cached else teacher,
            cached_logits=cached,
            callbacks=callbacks,
        )
    return time.perf_counter() - start


def step_seconds(data, teacher, student_width, warmup, steps, cached=None) -> float:
    stamps: dict[int, float] = {}

    def clock(info) -> None:
        if info.global_step in (warmup, warmup + steps):
            stamps[info.global_step] = time.perf_counter()
        if info.global_step >= warmup + steps:
            raise _StopError

    train_fit(data, teacher, student_width, (warmup + steps + 1) * BATCH, cached, [clock])
    return (stamps[warmup + steps] - stamps[warmup]) / steps


def epoch_seconds(data, teacher, student_width, rows, cached=None) -> float:
    """The training loop of one epoch: first step's start is fit's start; its end the last step."""
    marks: list[float] = []
    start = time.perf_counter()
    train_fit(data, teacher, student_width, rows, cached, [lambda info: marks.append(time.perf_counter())])
    return marks[-1] - start


def least_squares(columns: list[list[float]], target: list[float]) -> list[float]:
    a = torch.tensor(columns, dtype=torch.float64).T
    b = torch.tensor(target, dtype=torch.float64)[:, None]
    return torch.linalg.lstsq(a, b).solution.flatten().tolist()


def median_of(repeats: int, fn) -> float:
    return statistics.median(fn() for _ in range(repeats))


def processes(data, teacher, rows: int) -> list[dict]:
    """``kdlab distill`` under torchrun with 1 and 2 processes on the same global batch and data."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "teacher.safetensors"
        save_weights(teacher, weights)
        npz = Path(tmp) / "fmnist.npz"
        import numpy as np

        np.savez(
            npz,
            x_train=data.x_train[:rows].numpy(),
            y_train=data.y_train[:rows].numpy(),
            x_test=data.x_test.numpy(),
            y_test=data.y_test.numpy(),
        )
        for nproc, threads in ((1, 2), (1, 1), (2, 1)):
            config = {
                "out": f"{tmp}/run-{nproc}-{threads}",
                "data": {"name": "npz", "path": str(npz), "val_fraction": 0.1},
                "model": {"name": "cnn", "kwargs": {"width": 8}},
                "teacher": {"model": {"name": "cnn", "kwargs": {"width": 32}}, "weights": str(weights)},
                "method": {"name": "kd", **KD},
                "train": {"epochs": 1, "batch_size": BATCH, "progress": False, "train_eval_size": 0, "cpu": True},
            }
            path = Path(tmp) / f"config-{nproc}-{threads}.json"
            path.write_text(json.dumps(config))
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
            command += ["--master_port", str(port), "-m", "kdlab.cli", "distill", str(path)]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            summary = json.loads((Path(config["out"]) / "summary.json").read_text())
            results.append(
                {
                    "processes": nproc,
                    "threads_per_process": threads,
                    "samples_per_second": summary["samples_per_second"],
                    "train_seconds": summary["train_seconds"],
                    "world_size": summary["world_size"],
                }
            )
            print(f"processes {nproc} x {threads} threads: {summary['samples_per_second']:.0f} samples/s", flush=True)
    return results


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdlab.eval.plots import save_png

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    c0, ct, cs = result["step_fit"]["coefficients_ms"]
    for ax, key, label, coef in (
        (axes[0], "teacher", "teacher forward MMACs/sample", ct),
        (axes[1], "student", "student forward MMACs/sample", cs),
    ):
        pts = result[f"{key}_sweep"]
        xs = [p[f"{key}_mmacs"] for p in pts]
        other = [p["student_mmacs" if key == "teacher" else "teacher_mmacs"] for p in pts]
        ax.plot(xs, [p["step_ms"] for p in pts], "o", label="measured")
        ax.plot(xs, [c0 + coef * x + (cs if key == "teacher" else ct) * o for x, o in zip(xs, other, strict=True)], "-")
        ax.set(xlabel=label, ylabel="ms per step (batch 128)", title=f"{key} size")
    rows = result["rows_sweep"]
    a, b = result["rows_fit"]["intercept_s"], result["rows_fit"]["seconds_per_1000_rows"]
    xs = [p["rows"] for p in rows]
    axes[2].plot(xs, [p["epoch_seconds"] for p in rows], "o")
    axes[2].plot(xs, [a + b * x / 1000 for x in xs], "-")
    axes[2].set(xlabel="training rows", ylabel="seconds per epoch", title="data size")
    procs = result["processes"]
    axes[3].bar(
        [f"{p['processes']}p x {p['threads_per_process']}t" for p in procs], [p["samples_per_second"] for p in procs]
    )
    axes[3].set(ylabel="samples/s", title="processes (2 cores)")
    fig.tight_layout()
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "cost_model")
    args = parser.parse_args()
    warmup, steps, repeats = (3, 10, 1) if args.quick else (5, 20, 3)
    data = load_dataset("fashion_mnist")
    in_shape = (1, 28, 28)
    teacher32 = cnn(32, 0).eval().requires_grad_(False)
    teacher_widths = [8, 16, 32] if args.quick else [8, 16, 32, 48, 64]
    student_widths = [4, 8, 16] if args.quick else [4, 8, 16, 24, 32]
    mmacs = {w: forward_macs(cnn(w, 0), in_shape) / 1e6 for w in {*teacher_widths, *student_widths}}
    teacher_sweep = []
    for width in teacher_widths:
        teacher = cnn(width, 0).eval().requires_grad_(False)
        ms = 1e3 * median_of(repeats, lambda t=teacher: step_seconds(data, t, 8, warmup, steps))
        teacher_sweep.append({"teacher_width": width, "teacher_mmacs": mmacs[width], "student_mmacs": mmacs[8]})
        teacher_sweep[-1]["step_ms"] = ms
        print(f"teacher width {width}: {ms:.1f} ms/step", flush=True)
    student_sweep = []
    for width in student_widths:
        ms = 1e3 * median_of(repeats, lambda w=width: step_seconds(data, teacher32, w, warmup, steps))
        student_sweep.append({"student_width": width, "student_mmacs": mmacs[width], "teacher_mmacs": mmacs[32]})
        student_sweep[-1]["step_ms"] = ms
        print(f"student width {width}: {ms:.1f} ms/step", flush=True)
    points = teacher_sweep + student_sweep
    coefficients = least_squares(
        [[1.0] * len(points), [p["teacher_mmacs"] for p in points], [p["student_mmacs"] for p in points]],
        [p["step_ms"] for p in points],
    )
    row_counts = [1728, 3456, 6912] if args.quick else [3456, 6912, 13824, 27648]
    rows_sweep = []
    for rows in row_counts:
        seconds = epoch_seconds(data, teacher32, 8, rows)
        rows_sweep.append({"rows": rows, "epoch_seconds": seconds})
        print(f"rows {rows}: {seconds:.1f} s/epoch", flush=True)
    intercept, per_row = least_squares(
        [[1.0] * len(rows_sweep), [p["rows"] for p in rows_sweep]], [p["epoch_seconds"] for p in rows_sweep]
    )
    # the logit cache: one teacher pass over the training rows against the teacher's share of every epoch
    cache_rows = row_counts[-1]
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    build_seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_logits = predict(teacher32, data.x_train[:cache_rows], 10, 1024, acc)
        build_seconds.append(time.perf_counter() - start)
    cached = {
        "train": train_logits,
        "val": predict(teacher32, data.x_val, 10, 1024, acc),
        "test": predict(teacher32, data.x_test, 10, 1024, acc),
    }
    live_epoch = rows_sweep[-1]["epoch_seconds"]
    cached_epoch = epoch_seconds(data, teacher32, 8, cache_rows, cached)
    saving = live_epoch - cached_epoch
    cache = {
        "rows": cache_rows,
        "build_seconds": statistics.median(build_seconds),
        "live_epoch_seconds": live_epoch,
        "cached_epoch_seconds": cached_epoch,
        "saving_per_epoch_seconds": saving,
        "break_even_epochs": statistics.median(build_seconds) / saving if saving > 0 else None,
    }
    print(f"cache: build {cache['build_seconds']:.1f} s, epoch live {live_epoch:.1f} s, cached {cached_epoch:.1f} s")
    procs = processes(data, teacher32, 3456 if args.quick else 13824)
    result = {
        "environment": environment(),
        "load_average": os.getloadavg(),
        "warmup_steps": warmup,
        "measured_steps": steps,
        "repeats": repeats,
        "teacher_sweep": teacher_sweep,
        "student_sweep": student_sweep,
        "step_fit": {
            "model": "ms/step = c0 + ct * teacher_MMACs + cs * student_MMACs (per sample, batch 128)",
            "coefficients_ms": coefficients,
        },
        "rows_sweep": rows_sweep,
        "rows_fit": {"intercept_s": intercept, "seconds_per_1000_rows": per_row * 1000},
        "cache": cache,
        "processes": procs,
    }
    atomic_write_json(args.out.with_suffix(".json"), result)
    plot(result, args.out.with_suffix(".png"))
    atomic_write_text(args.out.with_suffix(".md"), markdown(result) + "\n")
    print(markdown(result))


def markdown(r: dict) -> str:
    env = r["environment"]
    c0, ct, cs = r["step_fit"]["coefficients_ms"]
    lines = [
        "# Cost model: kdlab's time per epoch (CPU)",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}; 1-min load average at the end {r['load_average'][0]:.2f}  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC  ",
        f"Step time: median of {r['repeats']} runs of steps {r['warmup_steps']}.."
        f"{r['warmup_steps'] + r['measured_steps']}.",
        "",
        f"Fit: ms/step = {c0:.2f} + {ct:.3f} · teacher MMACs + {cs:.3f} · student MMACs "
        "(MACs of one sample's forward).",
        "",
        "| teacher width | teacher MMACs | student width | student MMACs | ms/step measured | ms/step fitted |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in r["teacher_sweep"] + r["student_sweep"]:
        fitted = c0 + ct * p["teacher_mmacs"] + cs * p["student_mmacs"]
        lines.append(
            f"| {p.get('teacher_width', 32)} | {p['teacher_mmacs']:.2f} | {p.get('student_width', 8)} "
            f"| {p['student_mmacs']:.2f} | {p['step_ms']:.1f} | {fitted:.1f} |"
        )
    f = r["rows_fit"]
    lines += [
        "",
        f"Data size (teacher 32, student 8): epoch s = {f['intercept_s']:.2f} + {f['seconds_per_1000_rows']:.3f} · "
        "(rows / 1000)",
        "",
        "| rows | epoch s |",
        "|---:|---:|",
        *[f"| {p['rows']} | {p['epoch_seconds']:.1f} |" for p in r["rows_sweep"]],
    ]
    c = r["cache"]
    even = "never" if c["break_even_epochs"] is None else f"{c['break_even_epochs']:.2f} epochs"
    lines += [
        "",
        f"Logit cache ({c['rows']} rows): build {c['build_seconds']:.1f} s; epoch live {c['live_epoch_seconds']:.1f} s,"
        f" cached {c['cached_epoch_seconds']:.1f} s; saves {c['saving_per_epoch_seconds']:.1f} s per epoch; "
        f"break-even after {even}.",
        "",
        "| processes x threads | samples/s | train s |",
        "|---|---:|---:|",
        *[
            f"| {p['processes']} x {p['threads_per_process']} | {p['samples_per_second']:.0f} | "
            f"{p['train_seconds']:.1f} |"
            for p in r["processes"]
        ],
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
