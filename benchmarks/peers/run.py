"""kdlab vs torchdistill vs a hand-written floor: the same KD job, side by side, on this machine's CPU.

    python benchmarks/peers/run.py                  # the protocol: warm-up + 5 interleaved repetitions, 27,648 rows
    python benchmarks/peers/run.py --quick          # 1 repetition on 6,912 rows (never a result: marked LOADED)
    python benchmarks/peers/run.py --allow-loaded   # write a loaded machine's figures, marked as not a result

Same teacher (CNN width 32, trained once here), student (CNN width 8, the same initial weights in every
variant), data (Fashion-MNIST tensors in memory, the same batch order), batch size 128, optimizer (SGD
0.05, momentum 0.9, Nesterov, weight decay 5e-4, constant rate) and loss (torchdistill's KDLoss:
0.1·CE + 0.9·T²·KL(p_t ‖ p_s), T = 4, batchmean) in:
  floor          a minimal hand-written PyTorch loop (trial.py: ``floor``)
  torchdistill   its DistillationBox built from a config dict, in its own venv (.venv-torchdistill, made here)
  kdlab          ``kdlab.engine.fit`` with the live teacher, with and without the speed switches
  kdlab (cache)  ``fit`` with cached teacher logits
Each trial is one epoch in a fresh process, run by ``benchmarks/protocol.py`` (warm-up round, interleaved
repetitions, the same threads and torch build for all, load gate). The cached variant builds its cache inside the
trial (timed: ``cache_build_seconds``, against ``teacher_pass_seconds``), so end to end over E epochs it is
build + E epochs. torchdistill is optional: when its venv cannot be made (offline), its rows are skipped with the
reason. Results: benchmarks/results/peers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from _env import environment  # noqa: E402
from common import ALPHA, BATCH, STUDENT, TEACHER, T, build  # noqa: E402
from protocol import Contender, publish, run_protocol, table  # noqa: E402

PEER_VENV = HERE / ".venv-torchdistill"
# torchvision 0.28.0 is the release built for torch 2.13.0: the peer runs on kdlab's own CPU torch build
PEER_PACKAGES = ["torch==2.13.0", "torchvision==0.28.0", "torchdistill==1.1.5"]
WORK = HERE / ".work"
RESULTS = REPO / "benchmarks" / "results"
# name -> (trial variant, kdlab speed switches); the order is the order of one interleaved round
VARIANTS: dict[str, tuple[str, dict]] = {
    "hand-written floor": ("floor", {}),
    "hand-written floor, glibc malloc thresholds raised": ("floor", {"malloc_tuned": True}),
    "torchdistill 1.1.5": ("torchdistill", {}),
    "torchdistill 1.1.5, glibc malloc thresholds raised": ("torchdistill", {"malloc_tuned": True}),
    "kdlab (defaults)": ("kdlab", {}),
    "kdlab + channels_last (teacher, student)": ("kdlab", {"teacher_channels_last": True, "channels_last": True}),
    "kdlab + channels_last + teacher.precision=bf16": (
        "kdlab",
        {"teacher_channels_last": True, "channels_last": True, "teacher_precision": "bf16"},
    ),
    "kdlab + teacher.compile": ("kdlab", {"teacher_compile": True}),
    "kdlab + teacher.quantize=int8_dynamic": ("kdlab", {"teacher_quantize": "int8_dynamic"}),
    "kdlab (logit cache)": ("kdlab-cache", {}),
    "kdlab (defaults), 2 processes x 1 thread (torchrun)": ("kdlab-2-processes", {}),
    "kdlab (logit cache) + channels_last": ("kdlab-cache", {"channels_last": True}),
}
LIVE_FAST = "kdlab + channels_last (teacher, student)"  # the acceptance row: math-preserving switches only


def peer_python() -> Path:
    """The torchdistill venv's python, made on first use (never kdlab's .venv)."""
    python = PEER_VENV / "bin" / "python"
    probe = [str(python), "-c", "import torchdistill"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {PEER_VENV} ({', '.join(PEER_PACKAGES)}) ...", flush=True)
    subprocess.run([sys._base_executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    return python


def peer_packages(python: Path) -> list[str]:
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    return freeze.stdout.split()


def prepare_work(rows: int | None, seeds: int) -> dict:
    """data.pt, teacher.pt (trained here once, kept), student-init-<seed>.pt, logits.pt (the cache, timed)."""
    from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
    from kdlab.data import load_dataset
    from kdlab.engine import Splits, fit
    from kdlab.engine.predict import predict
    from kdlab.methods import build as build_method

    WORK.mkdir(exist_ok=True)
    data = load_dataset("fashion_mnist")
    x_train, y_train = data.x_train[:rows], data.y_train[:rows]
    torch.save({"x_train": x_train, "y_train": y_train, "x_test": data.x_test, "y_test": data.y_test}, WORK / "data.pt")
    info = {"data": data.name, "train_rows": len(y_train), "test_rows": len(data.y_test)}
    teacher = build(TEACHER)
    teacher_file = WORK / "teacher.pt"
    if teacher_file.exists():
        teacher.load_state_dict(torch.load(teacher_file))
    else:  # one epoch of plain CE on all training rows (~85% test accuracy), enough to have something to distil
        print("training the teacher (1 epoch) ...", flush=True)
        torch.manual_seed(0)
        splits = Splits(data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test, 10)
        cfg = TrainConfig(epochs=1, batch_size=BATCH, progress=False, train_eval_size=0, cpu=True)
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            fit(
                teacher,
                splits,
                build_method("ce", {}, 10),
                cfg,
                OptimizerConfig(),
                SchedulerConfig(),
                out_dir=Path(out),
            )
        torch.save(teacher.state_dict(), teacher_file)
    teacher.eval().requires_grad_(False)
    for seed in range(seeds):
        torch.manual_seed(1000 + seed)
        torch.save(build(STUDENT).state_dict(), WORK / f"student-init-{seed}.pt")
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    start = time.perf_counter()
    train_logits = predict(teacher, x_train, 10, 1024, acc)
    info["cache_build_seconds"] = time.perf_counter() - start
    test_logits = predict(teacher, data.x_test, 10, 1024, acc)
    torch.save({"train": train_logits, "val": test_logits[:1000], "test": test_logits}, WORK / "logits.pt")
    info["teacher_test_accuracy"] = float((test_logits.argmax(1) == data.y_test).float().mean())
    return info


def paired_ratio(trials: dict[str, list[dict]], a: str, b: str, key: str = "steady_samples_per_second") -> dict:
    """``key`` of a over b, repetition by repetition (the two ran in the same round): median, min-max, runs."""
    ratios = [x[key] / y[key] for x, y in zip(trials[a], trials[b], strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "runs": ratios}


def end_to_end(trials: dict[str, list[dict]], cached: str, live: str, epochs: int) -> dict:
    """Per repetition: E epochs of the live contender / (cache build + E epochs cached), and the break-even epoch
    count (build / the epoch time the cache saves; inf when it saves none)."""
    ratios, break_even = [], []
    for c, lv in zip(trials[cached], trials[live], strict=True):
        build, saved = c["cache_build_seconds"], lv["epoch_seconds"] - c["epoch_seconds"]
        ratios.append(epochs * lv["epoch_seconds"] / (build + epochs * c["epoch_seconds"]))
        break_even.append(build / saved if saved > 0 else float("inf"))
    return {
        "epochs": epochs,
        "speedup": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "runs": ratios},
        "break_even_epochs": {"median": statistics.median(break_even), "runs": break_even},
    }


def render(payload: dict) -> str:
    env, info = payload["environment"], payload["work"]
    lines = [
        "# Peers: kdlab vs torchdistill vs a hand-written KD loop (CPU), by benchmarks/protocol.py",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}; device {env['device']}; {payload['threads']} threads in every contender; "
        f"1-min load average {payload['load_average_1min']['before']:.2f} before, "
        f"{payload['load_average_1min']['after']:.2f} after (gate: {payload['max_load_per_core']} per core)  ",
        f"torch builds: {payload['torch_builds']}; python {env['python']}, kdlab {env['kdlab']}; "
        f"{env['date_utc']} UTC  ",
        f"Job: {info['data']} ({info['train_rows']} train rows in memory), teacher CNN width 32 (test accuracy "
        f"{info['teacher_test_accuracy']:.4f}), student CNN width 8, batch {BATCH}, SGD 0.05 (momentum 0.9, "
        f"Nesterov, wd 5e-4), loss {ALPHA}·CE + {1 - ALPHA:.1f}·T²·KL (T = {T:g}); one epoch per trial; "
        f"{payload['order']}; {payload['repetitions']} repetitions. Metric: steady samples/s (optimizer step 20 to "
        "the epoch's last).",
        "",
        *table(payload, "samples/s"),
        "",
        "Paired ratios (per repetition) and end to end with the cache (its build included):",
        "",
    ]
    for name, r in payload["paired"].items():
        lines.append(f"- {name}: median {r['median']:.3f} (min–max {r['min']:.3f}–{r['max']:.3f})")
    for name, r in payload["end_to_end"].items():
        s, b = r["speedup"], r["break_even_epochs"]
        lines.append(
            f"- {name}, {r['epochs']} epochs incl. the build: {s['median']:.2f}× (min–max {s['min']:.2f}–"
            f"{s['max']:.2f}); break-even after {b['median']:.2f} epochs"
        )
    builds = [t["build_over_pass"] for t in payload["trials"].get(CACHED, [])]
    if builds:
        lines.append(
            f"- cache build / one bare teacher pass over the same rows: median {statistics.median(builds):.2f} "
            f"(min–max {min(builds):.2f}–{max(builds):.2f})"
        )
    for name, runs in payload["trials"].items():
        if runs and "teacher_agreement" in runs[0]:
            lines.append(
                f"- {name}: top-1 agreement with the exact teacher {runs[0]['teacher_agreement']:.4f}, KD loss "
                f"between them {runs[0]['teacher_kd_loss_gap']:.2e} (2,000 test rows)"
            )
    for name, runs in payload["trials"].items():
        if runs and "processes" in runs[0]:
            per = [t["steady_samples_per_second_per_process"] for t in runs]
            lines.append(
                f"- {name}: {runs[0]['processes']} processes × {runs[0]['threads_per_process']} thread; samples/s per "
                f"process median {statistics.median(per):.0f} (min–max {min(per):.0f}–{max(per):.0f}), the table's "
                "figure is the total (rank 0's clock counts global batches)"
            )
    lines += ["", "What each contender imports and what was patched:", ""]
    lines += [f"- {name}: {text}" for name, text in IMPORTS.items()]
    return "\n".join(lines) + "\n"


CACHED = "kdlab (logit cache)"
IMPORTS = {
    "hand-written floor": "torch only (trial.py `floor`, common.py); nothing patched",
    "torchdistill 1.1.5, glibc malloc thresholds raised": "the same, started with the floor's malloc settings",
    "hand-written floor, glibc malloc thresholds raised": "the same loop started with MALLOC_TRIM_THRESHOLD_=2^34 and "
    "MALLOC_MMAP_THRESHOLD_=2^25 (trial.py `MALLOC_TUNED`): freed activation buffers stay in the heap instead of "
    "being returned to the OS and faulted in again every step",
    "torchdistill 1.1.5": "torchdistill 1.1.5 + torchvision 0.28.0 in their own venv on the same torch build; "
    "torchvision's C++ ops cannot load on the CPU build, so trial.py defines the `nms`/`qnms` schemas its import "
    "registers fake kernels for (no torchvision op runs); its documented Dataset + DataLoader path",
    "kdlab": "kdlab.engine.fit (+ accelerate, safetensors, pydantic); nothing patched. The 2-process row: the same "
    "trial under `torchrun --nproc_per_node 2` (gloo), global batch 128 (64 rows per process), 1 thread per process",
}
PEER_NAMES = {"torch", "torchvision", "torchdistill", "numpy", "scipy"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repetition on 6,912 rows (marked: not a result)")
    parser.add_argument("--rows", type=int, default=27_648, help="training rows per epoch (FMNIST has 54,000)")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10, help="E of the end-to-end comparison with the cache")
    parser.add_argument("--only", nargs="*", help="run only these variants (names as in VARIANTS)")
    parser.add_argument("--no-torchdistill", action="store_true", help="skip the peer (no venv is made)")
    parser.add_argument("--allow-loaded", action="store_true", help="write a refused run, marked as not a result")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers")
    args = parser.parse_args()
    repetitions = 1 if args.quick else args.repetitions
    skipped: dict[str, str] = {}
    peer = None
    if args.no_torchdistill:
        skipped[PEER] = "--no-torchdistill"
    else:
        try:
            peer = peer_python()
        except (subprocess.CalledProcessError, OSError) as err:  # offline: no index to install it from
            skipped[PEER] = f"its venv could not be made ({err})"
    info = prepare_work(6_912 if args.quick else args.rows, repetitions + 1)  # + the warm-up round's seed
    contenders = []
    for name, (variant, flags) in VARIANTS.items():
        if (args.only and name not in args.only) or name in skipped or (variant == "torchdistill" and peer is None):
            continue
        python = str(peer if variant == "torchdistill" else sys.executable)
        argv = (str(HERE / "trial.py"), variant, "--work", str(WORK), "--flags", json.dumps(flags))
        contenders.append(Contender(name, argv, python))

    def progress(repetition: int, name: str, trial: dict) -> None:
        label = "warm-up" if repetition == 0 else f"repetition {repetition}/{repetitions}"
        print(
            f"{label} {name}: {trial['steady_samples_per_second']:.0f} samples/s, load "
            f"{trial['load_average_1min'][1]:.2f}",
            flush=True,
        )

    result = run_protocol(
        contenders,
        metric="steady_samples_per_second",
        baseline=FLOOR,
        repetitions=repetitions,
        threads=args.threads,
        cwd=REPO,
        skipped=skipped,
        on_trial=progress,
    )
    payload = result.as_dict(cores=os.cpu_count() or 1)
    trials = result.trials
    names = set(trials)
    payload["paired"] = {
        f"{a} / {b}": paired_ratio(trials, a, b)
        for a in sorted(names - {FLOOR, PEER, FLOOR_TUNED})
        for b in (PEER, FLOOR, FLOOR_TUNED)
        if b in names
    }
    payload["end_to_end"] = {
        f"{CACHED} vs {live}": end_to_end(trials, CACHED, live, args.epochs)
        for live in ("kdlab (defaults)", PEER, FLOOR, FLOOR_TUNED)
        if CACHED in names and live in names
    }
    payload.update(environment=environment(), work=info)
    if peer is not None:
        payload["peer_packages"] = [p for p in peer_packages(peer) if p.split("==")[0] in PEER_NAMES]
    out = publish(payload, args.out, render, allow_loaded=args.allow_loaded, scratch=WORK)
    print(out.with_suffix(".md").read_text())


FLOOR, PEER = "hand-written floor", "torchdistill 1.1.5"
FLOOR_TUNED = "hand-written floor, glibc malloc thresholds raised"


if __name__ == "__main__":
    main()
