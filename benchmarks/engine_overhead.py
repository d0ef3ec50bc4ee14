"""Samples/s of kdlab's distillation step vs a minimal hand-written PyTorch KD loop, and the logit cache's gain.

    python benchmarks/engine_overhead.py            # Fashion-MNIST if installed, else digits; 3 repeats
    python benchmarks/engine_overhead.py --quick    # fewer steps

Same teacher, student, data (in-memory tensors), batch size, optimizer (SGD 0.05, momentum 0.9) and loss
(0.1·CE + 0.9·T²·KL, T = 4) in three variants, interleaved and repeated:
  hand-written   the floor: a plain loop, teacher under inference_mode, F.kl_div(..., "batchmean")
  kdlab (live)   kdlab.engine.fit with the kd method and the live teacher
  kdlab (cache)  the same with cached teacher logits (the teacher is not run)
Throughput is measured between optimizer steps ``warmup`` and ``warmup + steps`` (steady state: no
evaluation, no start-up), through fit's step callbacks for kdlab. Results: benchmarks/results/engine_overhead.*
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab import models
from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
from kdlab.data import DataError, load_dataset
from kdlab.engine import Splits, fit
from kdlab.engine.batches import epoch_permutation
from kdlab.engine.predict import predict
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.methods import build

RESULTS = Path(__file__).resolve().parent / "results"
T, ALPHA, BETA, LR = 4.0, 0.1, 0.9, 0.05


class _StopMeasuringError(Exception):
    """Raised from the step callback once the measured steps are done."""


def load(name: str):
    try:
        return load_dataset(name)
    except DataError as err:
        print(f"{name} unavailable ({err}); using digits", file=sys.stderr)
        return load_dataset("digits")


def make_models(data, seed: int):
    torch.manual_seed(seed)
    teacher = models.create("cnn", data.num_classes, tuple(data.in_shape), width=32).eval().requires_grad_(False)
    torch.manual_seed(seed + 1)
    student = models.create("cnn", data.num_classes, tuple(data.in_shape), width=8)
    return teacher, student


def hand_written(data, batch: int, warmup: int, steps: int, seed: int) -> float:
    """The floor: the shortest correct KD loop we can write."""
    teacher, student = make_models(data, seed)
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x_all, y_all = data.x_train, data.y_train
    per_epoch = len(y_all) // batch
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        if step % per_epoch == 0:
            perm = epoch_permutation(len(y_all), seed, step // per_epoch)
        idx = perm[(step % per_epoch) * batch : (step % per_epoch + 1) * batch]
        x, y = x_all[idx], y_all[idx]
        with torch.inference_mode():
            t_logits = teacher(x)
        s_logits = student(x)
        kd = (
            F.kl_div(
                F.log_softmax(s_logits / T, -1),
                F.log_softmax(t_logits.clone() / T, -1),
                log_target=True,
                reduction="batchmean",
            )
            * T
            * T
        )
        loss = ALPHA * F.cross_entropy(s_logits, y) + BETA * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # what any loop that logs or checks its loss pays
    return steps * batch / (time.perf_counter() - start)


def kdlab_fit(data, batch: int, warmup: int, steps: int, seed: int, cached: dict | None) -> float:
    teacher, student = make_models(data, seed)
    stamps: dict[int, float] = {}

    def clock(info) -> None:
        if info.global_step in (warmup, warmup + steps):
            stamps[info.global_step] = time.perf_counter()
        if info.global_step >= warmup + steps:
            raise _StopMeasuringError

    epochs = (warmup + steps) // (len(data.y_train) // batch) + 1  # more than one epoch only on tiny data
    cfg = TrainConfig(epochs=epochs, batch_size=batch, progress=False, log_every_steps=10**9)
    method = build("kd", {"alpha": ALPHA, "beta": BETA, "temperature": T}, data.num_classes)
    splits = Splits(data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test, data.num_classes)
    with tempfile.TemporaryDirectory() as out, contextlib.suppress(_StopMeasuringError):
        fit(
            student,
            splits,
            method,
            cfg,
            OptimizerConfig(lr=LR),
            SchedulerConfig(name="constant"),
            out_dir=Path(out),
            seed=seed,
            teacher=None if cached else teacher,
            cached_logits=cached,
            callbacks=[clock],
        )
    return steps * batch / (stamps[warmup + steps] - stamps[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "engine_overhead")
    args = parser.parse_args()
    warmup, steps = (5, 30) if args.quick else (10, 120)
    data = load(args.data)
    teacher, _ = make_models(data, 0)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    cached = {
        split: predict(teacher, getattr(data, f"x_{split}"), data.num_classes, 1024, acc)
        for split in ("train", "val", "test")
    }
    runs: dict[str, list[float]] = {"hand-written loop": [], "kdlab (live teacher)": [], "kdlab (cached logits)": []}
    for repeat in range(args.repeats):
        runs["hand-written loop"].append(hand_written(data, args.batch_size, warmup, steps, repeat))
        runs["kdlab (live teacher)"].append(kdlab_fit(data, args.batch_size, warmup, steps, repeat, None))
        runs["kdlab (cached logits)"].append(kdlab_fit(data, args.batch_size, warmup, steps, repeat, cached))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in runs.items()), flush=True)
    stats = {
        k: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
        for k, v in runs.items()
    }
    floor = stats["hand-written loop"]["mean"]
    live = stats["kdlab (live teacher)"]["mean"]
    result = {
        "environment": environment(),
        "data": data.name,
        "train_rows": len(data.y_train),
        "batch_size": args.batch_size,
        "teacher": "cnn width 32",
        "student": "cnn width 8",
        "warmup_steps": warmup,
        "measured_steps": steps,
        "samples_per_second": stats,
        "kdlab_live_vs_hand_written": live / floor,
        "cache_speedup_over_live": stats["kdlab (cached logits)"]["mean"] / live,
    }
    env = result["environment"]
    lines = [
        "# Engine overhead: kdlab's distillation step vs a hand-written PyTorch KD loop",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}; device {env['device']}  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC  ",
        f"Data {data.name} ({len(data.y_train)} train rows), batch {args.batch_size}, teacher CNN width 32, "
        f"student CNN width 8, KD 0.1·CE + 0.9·T²·KL (T = 4), SGD; samples/s over steps {warmup}..{warmup + steps}, "
        f"mean ± std over {args.repeats} interleaved repeats.",
        "",
        "| variant | samples/s | vs hand-written |",
        "|---|---:|---:|",
    ]
    for name, s in stats.items():
        lines.append(f"| {name} | {s['mean']:.0f} ± {s['std']:.0f} | {s['mean'] / floor:.3f} |")
    lines += [
        "",
        f"kdlab with the live teacher runs at {live / floor:.3f}× the hand-written loop; cached logits make "
        f"it {result['cache_speedup_over_live']:.2f}× faster than running the teacher.",
    ]
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines[-len(stats) - 4 :]))


if __name__ == "__main__":
    main()
