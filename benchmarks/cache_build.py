"""What a teacher-logit cache costs to build, against one teacher forward pass over the same rows (issue 21: ≤ 1.2×).

    python benchmarks/cache_build.py --profile            # phases of `kdlab cache-logits`, one process (a profile)
    python benchmarks/cache_build.py                      # the protocol: interleaved processes, ≥ 5 repetitions

The job is the peer benchmark's teacher (CNN width 32, Fashion-MNIST, every split: train + val + test rows). The
reference is the bare loop a live distillation runs: ``teacher(x[i:i+b])`` under ``torch.inference_mode`` at the
training batch (128), nothing kept. The build is ``kdlab.tasks.classify.cache_logits_classify`` itself — data
load excluded (a live run loads the data too), the weights' fingerprint, the forward passes, the float16 encoding
and the safetensors write included — at ``cache.batch_size``'s default (train.eval_batch_size, 256) and at 1024
(the default until the first run of this benchmark: the CNN's activations at 1024 rows leave the CPU's cache).
Results: benchmarks/results/cache_build.{json,md} (refused on a loaded machine, see ``protocol``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]

from protocol import Contender, pin_threads, publish, run_protocol, table, trial_result  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE / "peers" / ".work"
DEFAULT_BATCH = 256  # train.eval_batch_size's default, which cache.batch_size falls back to


def _setup(work: Path, batch: int):
    """The config, data and teacher weights of the build (the weights are written once, untrained: same cost)."""
    import torch
    from common import TEACHER, build

    from kdlab.config import load_config
    from kdlab.engine.checkpoint import save_weights

    weights = work / "teacher-cache.safetensors"
    if not weights.exists():
        work.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        save_weights(build(TEACHER), weights)
    kwargs = {k: v for k, v in TEACHER.items() if k != "name"}
    return load_config(
        {
            "data": {"name": "fashion_mnist"},
            "teacher": {"model": {"name": TEACHER["name"], "kwargs": kwargs}, "weights": str(weights)},
            "cache": {"path": str(work / "cache-trial.safetensors"), "batch_size": batch},
            "train": {"cpu": True, "progress": False},
        }
    )


def forward_pass_seconds(cfg, data, batch: int) -> float:
    """The bare teacher loop over every split at ``batch`` (the reference the build is measured against)."""
    import torch

    from kdlab.teacher.source import load_teacher, resolve_teacher

    teacher = load_teacher(resolve_teacher(cfg.teacher), data.num_classes, tuple(data.in_shape), data)
    start = time.perf_counter()
    with torch.inference_mode():
        for split in ("train", "val", "test"):
            x = getattr(data, f"x_{split}")
            for i in range(0, len(x), batch):
                teacher(x[i : i + batch])
    return time.perf_counter() - start


def trial(kind: str, batch: int) -> None:
    """One process: ``forward`` (the reference) or ``build`` (the real cache-logits path); prints one JSON line."""
    pin_threads()
    from kdlab.tasks import classify

    cfg = _setup(WORK, batch)
    data = classify.load_data(cfg)
    classify.load_data = lambda _cfg, stats=None: data  # the data load is not the build's cost (a live run pays it)
    rows = len(data.y_train) + len(data.y_val) + len(data.y_test)
    if kind == "forward":
        seconds = forward_pass_seconds(cfg, data, batch)
    else:
        start = time.perf_counter()
        classify.cache_logits_classify(cfg)
        seconds = time.perf_counter() - start
    print(trial_result({"kind": kind, "batch": batch, "rows": rows, "seconds": seconds}), flush=True)


def profile() -> None:
    """Phases of the build in one process, against the bare forward pass (relative shares; a profile, no result)."""
    pin_threads()
    from safetensors.torch import save_file

    from kdlab.engine.predict import predict
    from kdlab.engine.rundir import new_accelerator
    from kdlab.tasks import classify
    from kdlab.teacher.logit_cache import encode
    from kdlab.teacher.source import load_teacher, resolve_teacher

    cfg = _setup(WORK, 1024)
    data = classify.load_data(cfg)
    phases: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
        return value

    for batch in (128, DEFAULT_BATCH, 1024):
        phases[f"bare forward pass, batch {batch}"] = forward_pass_seconds(cfg, data, batch)
    source = timed("resolve teacher", lambda: resolve_teacher(cfg.teacher))
    timed("teacher fingerprint (sha256 of weights)", source.fingerprint)
    teacher = timed("load teacher", lambda: load_teacher(source, data.num_classes, tuple(data.in_shape), data))
    acc = timed("accelerator", lambda: new_accelerator(cpu=True, mixed_precision="no"))
    for batch in (128, DEFAULT_BATCH, 1024):
        logits = {
            s: timed(
                f"predict, batch {batch}", lambda s=s, b=batch: predict(teacher, getattr(data, f"x_{s}"), 10, b, acc)
            )
            for s in ("train", "val", "test")
        }
    tensors = timed(
        "encode (float16)", lambda: {f"{s}.{k}": v for s, t in logits.items() for k, v in encode(t, None).items()}
    )
    with tempfile.TemporaryDirectory() as tmp:
        timed("safetensors write", lambda: save_file(tensors, f"{tmp}/c.safetensors"))
    for name, seconds in phases.items():
        print(f"{seconds:8.3f} s  {name}")


def render(payload: dict) -> str:
    lines = ["# Cache build vs one teacher forward pass (CNN-32 teacher, Fashion-MNIST, every split)", ""]
    lines += [f"Command: `{payload['command']}`  ", f"Threads: {payload['threads']}; torch {payload['torch_builds']}  "]
    lines += [f"1-min load: {payload['load_average_1min']}", "", *table(payload, "s")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial", nargs=2, metavar=("KIND", "BATCH"), help="internal: one trial")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allow-loaded", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "cache_build")
    args = parser.parse_args()
    if args.trial:
        trial(args.trial[0], int(args.trial[1]))
        return
    if args.profile:
        profile()
        return
    me = str(Path(__file__).resolve())
    contenders = [
        Contender("teacher forward pass, batch 128", (me, "--trial", "forward", "128")),
        Contender(f"cache build, batch {DEFAULT_BATCH} (the default)", (me, "--trial", "build", str(DEFAULT_BATCH))),
        Contender("cache build, batch 1024 (the default before)", (me, "--trial", "build", "1024")),
    ]
    result = run_protocol(
        contenders, metric="seconds", baseline=contenders[0].name, repetitions=args.repetitions, threads=args.threads
    )
    payload = {**result.as_dict(cores=__import__("os").cpu_count() or 1), "command": " ".join(sys.argv)}
    out = publish(payload, args.out, render, allow_loaded=args.allow_loaded, scratch=WORK)
    print(json.dumps(payload["ratios"], indent=1), "\n", out)


if __name__ == "__main__":
    main()
