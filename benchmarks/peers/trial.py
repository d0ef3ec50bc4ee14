"""One timed distillation epoch of one variant, in a fresh process; prints one JSON line (run.py starts it).

    python trial.py VARIANT --work DIR --seed N [--flags JSON]

VARIANT: ``floor`` (a minimal hand-written loop), ``torchdistill`` (its DistillationBox, run in the
torchdistill environment), ``kdlab`` (``kdlab.engine.fit`` with a live teacher; ``--flags`` sets its speed
switches) or ``kdlab-cache`` (``fit`` with cached teacher logits).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1] / "src")]

from protocol import pin_threads, trial_result  # noqa: E402  (standard library only: works in the peer's venv)

THREADS = pin_threads()  # before torch makes its pools: the protocol's thread count, in every contender

import torch  # noqa: E402
from common import ALPHA, BATCH, BETA, LR, MOMENTUM, WEIGHT_DECAY, Clock, T, epoch_generator, sgd  # noqa: E402

# glibc returns a freed block above its trim threshold to the OS, and the next step's 13-MB activations fault their
# pages in again: in a fresh process that costs the plain loop ~30 % of its speed, while a process whose earlier
# allocations raised the (dynamic) thresholds does not pay it. Raising them by environment shows the loop's own speed.
MALLOC_TUNED = {"MALLOC_TRIM_THRESHOLD_": str(1 << 34), "MALLOC_MMAP_THRESHOLD_": str(1 << 25)}


def floor(data, teacher, student, seed: int, clock: Clock) -> None:
    """The shortest correct KD loop: in-memory batches, teacher under inference_mode, loss.item() per step."""
    from common import kd_objective

    clock.start()
    optimizer = sgd(student)
    x_all, y_all = data["x_train"], data["y_train"]
    perm = torch.randperm(len(y_all), generator=epoch_generator(seed, 0))
    student.train()
    for step in range(len(y_all) // BATCH):
        idx = perm[step * BATCH : (step + 1) * BATCH]
        x, y = x_all[idx], y_all[idx]
        with torch.inference_mode():
            t_logits = teacher(x)
        loss = kd_objective(student(x), t_logits.clone(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clock.step(loss.item())


def _torchvision_on_cpu_torch() -> None:
    """PyPI's torchvision wheel is built against CUDA torch; on the CPU build of the same torch its C++ ops
    (nms, roi_align, ...) cannot load. torchdistill's classification KD uses none of them, but importing
    torchvision registers fake kernels for nms/qnms, which needs the two schemas: define them (never run)."""
    import torch.library

    try:
        torch.ops.torchvision.nms  # noqa: B018
    except (AttributeError, RuntimeError):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
        _torchvision_on_cpu_torch.lib = lib  # keep the definitions alive


def torchdistill(data, teacher, student, seed: int, clock: Clock) -> None:
    """torchdistill's own API: a DistillationBox from a config (the YAML's dict form) and its example's loop."""
    _torchvision_on_cpu_torch()
    from torch.utils.data import RandomSampler, TensorDataset
    from torchdistill.core.distillation import get_distillation_box

    clock.start()
    dataset = TensorDataset(data["x_train"], data["y_train"])
    train_config = {
        "num_epochs": 1,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": RandomSampler, "kwargs": {"generator": epoch_generator(seed, 0)}},
            "kwargs": {"batch_size": BATCH, "num_workers": 0, "drop_last": True},
        },
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {
            "key": "SGD",
            "kwargs": {"lr": LR, "momentum": MOMENTUM, "nesterov": True, "weight_decay": WEIGHT_DECAY},
        },
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": ".",
                                "student_module_io": "output",
                                "teacher_module_path": ".",
                                "teacher_module_io": "output",
                                "temperature": T,
                                "alpha": ALPHA,
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }
    box = get_distillation_box(teacher, student, {"train": dataset}, train_config, torch.device("cpu"), None, False, 1)
    box.pre_epoch_process(epoch=0)
    for sample_batch, targets, supp_dict in box.train_data_loader:
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)
        clock.step(loss.item())
    box.post_epoch_process()


def kdlab(data, teacher, student, seed: int, clock: Clock, flags: dict, cached: dict | None = None) -> None:
    """kdlab's library entry point: ``fit`` with the kd method (the same alpha, T) and the speed switches."""
    from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
    from kdlab.engine import Splits, fast_teacher, fit
    from kdlab.methods import build

    clock.start()  # after the imports, as for torchdistill: the training call's own set-up is timed
    train_flags = {k: flags[k] for k in ("channels_last", "compile") if k in flags}
    teacher_flags = {k[len("teacher_") :]: v for k, v in flags.items() if k.startswith("teacher_")}
    cfg = TrainConfig(  # drop_last: the same batches as the plain loop and torchdistill (both drop the rest)
        epochs=1,
        batch_size=BATCH,
        drop_last=True,
        progress=False,
        log_every_steps=10**9,
        train_eval_size=0,
        cpu=True,
        **train_flags,
    )
    method = build("kd", {"alpha": ALPHA, "beta": BETA, "temperature": T}, 10)
    x, y = data["x_train"], data["y_train"]
    splits = Splits(x, y, data["x_test"][:1000], data["y_test"][:1000], data["x_test"], data["y_test"], 10)
    fast = None if cached else fast_teacher(teacher, **teacher_flags)
    with tempfile.TemporaryDirectory() as out:
        fit(
            student,
            splits,
            method,
            cfg,
            OptimizerConfig(lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY),
            SchedulerConfig(name="constant"),
            out_dir=Path(out),
            seed=seed,
            teacher=fast,
            cached_logits=cached,
            callbacks=[lambda info: clock.step(sum(info.terms.values()))],
        )


def two_processes(argv: list[str], threads: int) -> dict:
    """``kdlab`` as 2 processes (torchrun, gloo), ``threads // 2`` threads each: rank 0's JSON line, whose clock counts
    global batches (``train.batch_size`` is the global batch), plus the per-process figures."""
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    per_process = max(1, threads // 2)
    pools = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "KDLAB_BENCH_THREADS")
    env = dict(os.environ, **dict.fromkeys(pools, str(per_process)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    done = subprocess.run([*command, __file__, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"torchrun failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["processes"], result["threads_per_process"] = 2, result.pop("torch_threads")
    result["steady_samples_per_second_per_process"] = result["steady_samples_per_second"] / 2
    return result


def build_cache(data, teacher, work: Path) -> tuple[dict, dict[str, float]]:
    """The logit cache as ``kdlab cache-logits`` makes it (every split, float16 safetensors, read back), timed —
    and the bare teacher forward pass over the same rows at the training batch, timed before and after it."""
    from accelerate import Accelerator

    from kdlab.engine.predict import predict
    from kdlab.teacher.logit_cache import read_cache, write_cache

    xs = {"train": data["x_train"], "val": data["x_test"][:1000], "test": data["x_test"]}

    def bare_pass() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x in xs.values():
                for i in range(0, len(x), BATCH):
                    teacher(x[i : i + BATCH])
        return time.perf_counter() - start

    from kdlab.config import TrainConfig

    first = bare_pass()
    start = time.perf_counter()
    acc = Accelerator(cpu=True)
    batch = TrainConfig().eval_batch_size  # the batch `kdlab cache-logits` uses by default
    logits = {split: predict(teacher, x, 10, batch, acc) for split, x in xs.items()}
    path = work / f"cache-{os.getpid()}.safetensors"
    write_cache(path, logits, "data", "teacher", None)
    cached = read_cache(path, "data", "teacher")
    build = time.perf_counter() - start
    path.unlink()
    passes = (first + bare_pass()) / 2
    return cached, {"cache_build_seconds": build, "teacher_pass_seconds": passes, "build_over_pass": build / passes}


def faithful(teacher, flags: dict, x) -> dict[str, float]:
    """The fast teacher's agreement with the exact one on the test rows (as distill's guard measures it)."""
    teacher_flags = {k[len("teacher_") :]: v for k, v in flags.items() if k.startswith("teacher_")}
    if not teacher_flags:
        return {}
    from kdlab.engine import fast_teacher
    from kdlab.engine.speed import faithfulness

    with torch.inference_mode():
        exact = teacher(x)
        fast = fast_teacher(copy.deepcopy(teacher), **teacher_flags)(x)
    report = faithfulness(exact, fast, T)
    return {"teacher_agreement": report["agreement"], "teacher_kd_loss_gap": report["kd_loss_gap"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=["floor", "torchdistill", "kdlab", "kdlab-cache", "kdlab-2-processes"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flags", default="{}")
    args = parser.parse_args()
    flags = json.loads(args.flags)
    if flags.get("malloc_tuned") and os.environ.get("MALLOC_TRIM_THRESHOLD_") != MALLOC_TUNED["MALLOC_TRIM_THRESHOLD_"]:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_TUNED})
    if args.variant == "kdlab-2-processes":  # this process only launches and reports: the ranks do the work
        argv = ["kdlab", "--work", str(args.work), "--seed", str(args.seed), "--flags", args.flags]
        result = {k: v for k, v in two_processes(argv, THREADS).items() if k not in ("torch_build", "pid")}
        print(trial_result({**result, "variant": args.variant}), flush=True)
        return
    from common import load_models, load_work, peak_rss_mib, test_metrics

    torch.manual_seed(args.seed)
    data = load_work(args.work)
    teacher, student = load_models(args.work, args.seed)
    # before the run (whose switches may change the teacher in place), outside every timing
    extra: dict[str, float] = faithful(teacher, json.loads(args.flags), data["x_test"][:2000])
    clock = Clock(BATCH)
    wall = time.perf_counter()
    if args.variant == "floor":
        floor(data, teacher, student, args.seed, clock)
    elif args.variant == "torchdistill":
        torchdistill(data, teacher, student, args.seed, clock)
    else:
        cached = None
        if args.variant == "kdlab-cache":  # the build is part of the cached variant's cost: timed, reported
            cached, build = build_cache(data, teacher, args.work)
            extra.update(build)
        kdlab(data, teacher, student, args.seed, clock, json.loads(args.flags), cached)
    if "RANK" in os.environ:  # under torchrun: tear the process group down (docs/scaling.md); rank 0 reports
        from kdlab.engine import end_process_group

        end_process_group()
        if os.environ["RANK"] != "0":
            return
    result = {"variant": args.variant, "seed": args.seed, "flags": json.loads(args.flags), **clock.result(), **extra}
    result["call_seconds"] = time.perf_counter() - wall  # + the library's own evaluation (kdlab: val and test)
    result.update(test_metrics(student, teacher, data["x_test"], data["y_test"]))
    result["peak_rss_mib"] = peak_rss_mib()  # after the test evaluation (batches of 1000), in every variant
    print(trial_result(result), flush=True)


if __name__ == "__main__":
    main()
