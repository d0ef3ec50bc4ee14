"""Forward + backward time and peak memory of ptloss vs kd_loss at vocabularies 1k, 32k and 128k.

    python benchmarks/loss_speed.py            # full: 60 interleaved repetitions per point
    python benchmarks/loss_speed.py --quick    # 15 repetitions
    python benchmarks/loss_speed.py --shapes 2048x32000 8192x1000 --reps 15 --threads 2 \
        --out benchmarks/results/loss_speed_lm  # language-model sizes (issue 21: ptloss <= 1.3x kd_loss)

For each vocabulary it times, interleaved (so machine noise hits every variant alike), the median of
forward + backward on (rows, V) logits for:
  kd_loss / ptloss (M = 5) with kdlab's 'eager' backend and its default 'auto' backend
  (torch.compile for large inputs), and two plain-autograd references: KD via F.kl_div and PTLoss
  with an eager Horner polynomial under autograd.
By default the script re-executes itself with glibc's MALLOC_TRIM_THRESHOLD_ and
MALLOC_MMAP_THRESHOLD_ raised: otherwise glibc returns freed multi-MB buffers to the OS and the next call
pays page faults, milliseconds of noise on every variant (--system-malloc measures without; the
setting is recorded). Peak memory is measured per variant in a fresh process, above what the inputs
already use: on CPU the rise of the peak resident set during one step after a warm-up and malloc_trim;
on CUDA the peak allocated bytes. Results go to benchmarks/results/loss_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.losses import kd_loss, ptloss, set_backend

EPSILON = [0.4, -0.2, 0.1, 0.05, -0.1]  # M = 5
PAIRS = {  # ptloss variant -> the kd variant it is compared with
    "ptloss[eager]": "kd_loss[eager]",
    "ptloss[auto]": "kd_loss[auto]",
    "ptloss autograd (Horner)": "kd autograd (F.kl_div)",
}
TEMPERATURE = 2.0
RESULTS = Path(__file__).resolve().parent / "results"
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(1 << 34), "MALLOC_MMAP_THRESHOLD_": str(1 << 25)}  # 32 MiB: max


def autograd_kd(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The textbook KD loss: autograd through log_softmax and kl_div."""
    log_p = F.log_softmax(s / TEMPERATURE, -1)
    log_q = F.log_softmax(t / TEMPERATURE, -1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * TEMPERATURE**2


def autograd_ptloss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """PTLoss written plainly: KL plus an eager Horner polynomial, differentiated by autograd."""
    log_p = F.log_softmax(s / TEMPERATURE, -1)
    log_q = F.log_softmax(t / TEMPERATURE, -1)
    q = log_q.exp()
    u = 1 - log_p.exp()
    poly = torch.full_like(u, EPSILON[-1])
    for c in reversed(EPSILON[:-1]):
        poly = poly * u + c
    rows = (q * (log_q - log_p)).sum(-1) + (q * u * poly).sum(-1)
    return rows.mean() * TEMPERATURE**2


def variants() -> dict[str, tuple[str | None, object]]:
    eps = torch.tensor(EPSILON)
    return {
        "kd_loss[eager]": ("eager", lambda s, t: kd_loss(s, t, TEMPERATURE)),
        "ptloss[eager]": ("eager", lambda s, t: ptloss(s, t, eps, TEMPERATURE)),
        "kd_loss[auto]": ("auto", lambda s, t: kd_loss(s, t, TEMPERATURE)),
        "ptloss[auto]": ("auto", lambda s, t: ptloss(s, t, eps, TEMPERATURE)),
        "kd autograd (F.kl_div)": (None, autograd_kd),
        "ptloss autograd (Horner)": (None, autograd_ptloss),
    }


def inputs(rows: int, vocab: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(rows, vocab, generator=gen) * 3).to(device)
    t = (torch.randn(rows, vocab, generator=gen) * 3).to(device)
    return s, t


def step(fn, s0: torch.Tensor, t: torch.Tensor, backend: str | None) -> float:
    if backend is not None:
        set_backend(backend)
    s = s0.detach().clone().requires_grad_(True)
    if s.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(s, t).backward()
    if s.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_all(rows: int, vocab: int, reps: int, device: str) -> dict[str, dict[str, float]]:
    s, t = inputs(rows, vocab, device)
    chosen = variants()
    samples: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(3):  # warm-up, includes torch.compile for the auto backend
        for backend, fn in chosen.values():
            step(fn, s, t, backend)
    for _ in range(reps):
        for name, (backend, fn) in chosen.items():
            samples[name].append(step(fn, s, t, backend))
    out = {}
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4)
        out[name] = {"median_ms": statistics.median(values) * 1e3, "q1_ms": q[0] * 1e3, "q3_ms": q[2] * 1e3}
    return out


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(name: str, rows: int, vocab: int, device: str) -> float:
    """Peak extra memory (MiB) of one forward + backward, after a warm-up call."""
    backend, fn = variants()[name]
    s, t = inputs(rows, vocab, device)
    step(fn, s, t, backend)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, s, t, backend)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so new pages count towards the peak
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak resident set (Linux)
        handle.write("5")
    base = _rss_kib("VmRSS:")
    step(fn, s, t, backend)
    return (_rss_kib("VmHWM:") - base) / 1024


def memory_in_subprocess(name: str, rows: int, vocab: int, device: str) -> float | None:
    cmd = [sys.executable, __file__, "--memory-of", name, "--rows", str(rows), "--vocab", str(vocab)]
    cmd += ["--device", device, "--system-malloc"]  # retained free heap would hide the peak
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        print(f"memory measurement of {name} at {vocab} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Loss speed: ptloss (M = 5) vs kd_loss, forward + backward",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}; device {env['device']}; malloc: {env['malloc']}  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC  ",
        f"Rows {result['rows']}, temperature {TEMPERATURE}, epsilon {EPSILON}; median of {result['reps']} "
        "interleaved repetitions (IQR in brackets); peak = extra memory of one step in a fresh process.  ",
        f"1-min load average: {result.get('load_average_1min', 'not recorded')} (before, after)",
        "",
        f"| {result.get('key', 'vocab')} | variant | time ms | peak MiB | time / kd_loss (same backend) |",
        "|---:|---|---:|---:|---:|",
    ]
    for vocab, entry in result["vocabularies"].items():
        for name, timing in entry["time"].items():
            ratio = entry["ratios"].get(name)  # only ptloss variants have one
            peak = entry["peak_mib"].get(name)
            lines.append(
                f"| {vocab} | {name} | {timing['median_ms']:.2f} [{timing['q1_ms']:.2f}, {timing['q3_ms']:.2f}] "
                f"| {'n/a' if peak is None else f'{peak:.1f}'} | {'' if ratio is None else f'{ratio:.2f}'} |"
            )
    lines += ["", "ptloss / kd_loss time ratios:", ""]
    for vocab, entry in result["vocabularies"].items():
        parts = [f"{k} {v:.2f}" for k, v in entry["ratios"].items()]
        lines.append(f"- {vocab}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="15 repetitions instead of 60")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, nargs="+", default=[1000, 32000, 128000])
    parser.add_argument("--shapes", nargs="+", default=None, help="ROWSxVOCAB pairs instead of --rows/--vocab")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process memory measurement")
    parser.add_argument("--out", type=Path, default=RESULTS / "loss_speed")
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's default malloc thresholds")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.system_malloc and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    if args.memory_of:
        print(json.dumps({"peak_mib": measure_memory(args.memory_of, args.rows, args.vocab[0], args.device)}))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (15 if args.quick else 60)
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes] if args.shapes else None
    env = environment()
    env["malloc"] = "glibc defaults" if args.system_malloc else " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
    result: dict = {"environment": env, "rows": "per shape" if shapes else args.rows, "reps": reps, "vocabularies": {}}
    result["key"] = "rows x vocab" if shapes else "vocab"
    load_before = os.getloadavg()[0]
    for rows, vocab in shapes or [(args.rows, vocab) for vocab in args.vocab]:
        key = f"{rows}x{vocab}" if shapes else str(vocab)
        timings = time_all(rows, vocab, reps, args.device)
        ratios = {pt: timings[pt]["median_ms"] / timings[kd]["median_ms"] for pt, kd in PAIRS.items()}
        peaks = {
            name: None if args.no_memory else memory_in_subprocess(name, rows, vocab, args.device) for name in timings
        }
        result["vocabularies"][key] = {"time": timings, "ratios": ratios, "peak_mib": peaks}
        print(
            f"{key:>10}: ptloss/kd_loss = {ratios['ptloss[auto]']:.2f} (auto backend), "
            f"{ratios['ptloss[eager]']:.2f} (eager), {ratios['ptloss autograd (Horner)']:.2f} (plain autograd); "
            f"kd_loss[auto] {timings['kd_loss[auto]']['median_ms']:.2f} ms, "
            f"ptloss[auto] {timings['ptloss[auto]']['median_ms']:.2f} ms; peak MiB "
            + ", ".join(f"{name} {'n/a' if peak is None else f'{peak:.1f}'}" for name, peak in peaks.items()),
            flush=True,
        )
    result["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
