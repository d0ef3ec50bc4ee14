"""kdlab's fixed cost, whole process against whole process (issue 21: a tiny run ≤ 1.2× a plain loop; `kdlab --help`
and `kdlab --version` < 0.5 s).

    python benchmarks/overhead.py                 # the protocol: warm-up, 5 interleaved repetitions, 1 thread
    python benchmarks/overhead.py --profile       # where a tiny `kdlab distill` spends its time (cProfile, no result)

The job is the README's digits distillation (configs/digits/student-kd.yaml: MLP [16] student, CNN-32 teacher run,
KD T = 4, 30 epochs, batch 64, SGD + cosine). Contenders, each a fresh process timed from start to exit:
  plain loop      torch + scikit-learn's load_digits + safetensors, written the shortest correct way: the same rows
                  per split, standardised on train, the same batches per epoch (the last partial one included), the
                  same loss and optimizer, validation accuracy after every epoch, test accuracy and the weights
                  (safetensors) at the end — what a run needs, nothing kdlab adds
  kdlab distill   the CLI command a user runs, defaults (per-epoch validation and train_eval, checkpoints, metrics,
                  summary, teacher check, report table)
  kdlab distill, eval_every 30   the same with validation only after the last epoch
Start-up: `kdlab --version` and `kdlab --help` against `python -c pass` (the interpreter alone).
Results: benchmarks/results/overhead.{json,md} (refused on a loaded machine, see ``protocol``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE)]

from protocol import Contender, pin_threads, publish, run_protocol, table, trial_result  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE / ".work" / "overhead"
CONFIG = ROOT / "configs" / "digits" / "student-kd.yaml"
TEACHER = ROOT / "configs" / "digits" / "teacher.yaml"
KDLAB = str(Path(sys.executable).with_name("kdlab"))


def prepare(work: Path) -> dict:
    """Once: the teacher run (kdlab train) and the split sizes the plain loop must reproduce."""
    from kdlab.data import load_dataset

    teacher = work / "teacher"
    if not (teacher / "model.safetensors").exists():
        command = [KDLAB, "train", str(TEACHER), "--set", f"out={teacher}", "--set", "train.progress=false"]
        subprocess.run([*command, "--overwrite"], check=True, capture_output=True)
    data = load_dataset("digits")
    facts = {"train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test), "teacher": str(teacher)}
    (work / "facts.json").write_text(json.dumps(facts))
    return facts


def plain_loop(work: Path) -> None:
    """The floor: what this distillation needs and nothing else (run as a child process by ``timed``)."""
    start = time.perf_counter()
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file
    from sklearn.datasets import load_digits

    from kdlab.models import create  # the architectures only (torch modules)

    imported = time.perf_counter()
    facts = json.loads((work / "facts.json").read_text())
    torch.manual_seed(0)
    x_all, y_all = load_digits(return_X_y=True)
    x_all = torch.tensor(x_all, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y_all = torch.tensor(y_all)
    order = torch.randperm(len(y_all))
    n_train, n_val = facts["train"], facts["val"]
    train, val, test = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    mean, std = x_all[train].mean(), x_all[train].std()
    x_all = (x_all - mean) / std
    teacher = create("cnn", 10, (1, 8, 8), width=32).eval()
    teacher.load_state_dict(load_file(f"{facts['teacher']}/model.safetensors"))
    student = create("mlp", 10, (1, 8, 8), hidden=[16])
    epochs, batch, temperature = 30, 64, 4.0
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * -(-n_train // batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        student.train()
        perm = train[torch.randperm(n_train)]
        for i in range(0, n_train, batch):
            x, y = x_all[perm[i : i + batch]], y_all[perm[i : i + batch]]
            with torch.inference_mode():
                t = teacher(x)
            s = student(x)
            log_p, log_q = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
            kl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
            loss = 0.1 * F.cross_entropy(s, y) + 0.9 * temperature**2 * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        student.eval()
        with torch.inference_mode():
            val_acc = (student(x_all[val]).argmax(-1) == y_all[val]).float().mean().item()
    with torch.inference_mode():
        test_acc = (student(x_all[test]).argmax(-1) == y_all[test]).float().mean().item()
    save_file(student.state_dict(), str(work / "plain-student.safetensors"))
    phases = {"imports_seconds": imported - start, "after_imports_seconds": time.perf_counter() - imported}
    print(json.dumps({"val_accuracy": val_acc, "test_accuracy": test_acc, **phases}))


def commands(work: Path) -> dict[str, list[str]]:
    distill = [KDLAB, "distill", str(CONFIG), "--set", f"teacher.run={work / 'teacher'}", "--overwrite"]
    return {
        "plain": [sys.executable, __file__, "--plain", str(work)],
        "kdlab": [*distill, "--set", f"out={work / 'kdlab'}"],
        "kdlab-eval-last": [*distill, "--set", f"out={work / 'kdlab-eval-last'}", "--set", "train.eval_every=30"],
        "python": [sys.executable, "-c", "pass"],
        "version": [KDLAB, "--version"],
        "help": [KDLAB, "--help"],
    }


def timed(name: str, work: Path) -> None:
    """One trial: the contender's whole process, from its start to its exit; prints one JSON line."""
    command = commands(work)[name]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
    pin_threads()
    print(trial_result({"contender": name, "seconds": seconds, "stdout_tail": done.stdout[-300:]}), flush=True)


def profile(work: Path) -> None:
    """cProfile of one `kdlab distill` in this process (a profile: shares, not a result)."""
    import cProfile
    import pstats

    from kdlab.cli import app

    argv = commands(work)["kdlab"][1:]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        app(argv, standalone_mode=False)
    finally:
        profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"kdlab|accelerate|safetensors|sklearn", 80)


def render(payloads: dict) -> str:
    lines = ["# kdlab's fixed cost: whole processes (issue 21)", ""]
    for title, payload in payloads.items():
        lines += [f"## {title}", "", f"Command: `{payload['command']}`  "]
        lines += [f"Threads: {payload['threads']}; torch {sorted(set(payload['torch_builds'].values()))}  "]
        lines += [f"1-min load: {payload['load_average_1min']}", "", *table(payload, "s", decimals=3), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial", help="internal: one timed contender")
    parser.add_argument("--plain", type=Path, help="internal: run the plain loop in this work directory")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--allow-loaded", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "overhead")
    args = parser.parse_args()
    if args.plain:
        plain_loop(args.plain)
        return
    if args.trial:
        timed(args.trial, WORK)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    prepare(WORK)
    if args.profile:
        profile(WORK)
        return
    me = str(Path(__file__).resolve())
    groups = {
        "A tiny distillation end to end (seconds per process)": ("plain", "kdlab", "kdlab-eval-last"),
        "Start-up (seconds per process)": ("python", "version", "help"),
    }
    payloads = {}
    for title, names in groups.items():
        contenders = [Contender(name, (me, "--trial", name)) for name in names]
        result = run_protocol(
            contenders, metric="seconds", baseline=names[0], repetitions=args.repetitions, threads=args.threads
        )
        payloads[title] = {**result.as_dict(cores=os.cpu_count() or 1), "command": " ".join(["python", *sys.argv])}
    status = [p["status"] for p in payloads.values()]
    payload = {
        "status": "result" if all(s == "result" for s in status) else status[0],
        "refusals": [r for p in payloads.values() for r in p["refusals"]],
        "groups": payloads,
    }
    out = publish(payload, args.out, lambda p: render(p["groups"]), allow_loaded=args.allow_loaded, scratch=WORK)
    for title, p in payloads.items():
        print(title, json.dumps({k: round(v["median"], 3) for k, v in p["summary"].items()}))
        print(" ratios", json.dumps({k: round(v["median"], 3) for k, v in p["ratios"].items()}))
    print(out)


if __name__ == "__main__":
    main()
