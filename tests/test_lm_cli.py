"""task: causal_lm end to end: kdlab train / distill / cache-logits on tiny Llama models and generated text."""

from __future__ import annotations

import json
import math
import os
import random
import sys
from pathlib import Path

import pytest
import torch

from kdlab.cli import main
from kdlab.config import load_config
from kdlab.data.text import load_text
from kdlab.engine.loop import StepInfo
from kdlab.methods import Outputs, StepState
from kdlab.methods import build as build_method
from kdlab.methods.token import teacher_outputs
from kdlab.models.hf import HiddenStates, load_pretrained
from kdlab.teacher.lm import CachedTeacher, LiveTeacher, cache_fingerprints
from kdlab.teacher.sparse_cache import SparseLogitCache

BLOCK = 32
TINY = {
    "architecture": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "log",
    "big",
    "small",
    "red",
    "blue",
    "and",
    "then",
]


def sentences(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + ".\n" for _ in range(n))


def cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """The real entry point in-process (no interpreter start-up): exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["kdlab", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def one_error_line(code: int, err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (code, err)
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    (root / "train-a.txt").write_text(sentences(300, 1))
    (root / "train-b.jsonl").write_text("".join(json.dumps({"text": sentences(3, s)}) + "\n" for s in range(2, 80)))
    (root / "val.txt").write_text(sentences(40, 100))
    (root / "test.txt").write_text(sentences(40, 200))
    return root


def config(root: Path, out: str, **extra) -> dict:
    cfg = {
        "task": "causal_lm",
        "out": str(root / out),
        "data": {
            "name": "text",
            "train": str(root / "train-*"),
            "val": str(root / "val.txt"),
            "test": str(root / "test.txt"),
            "tokenizer": "bytes",
            "block_size": BLOCK,
        },
        "model": {"name": "hf_causal_lm", "kwargs": TINY},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "progress": False,
            "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        },
    }
    for key, value in extra.items():
        cfg[key] = value if not isinstance(value, dict) else {**cfg.get(key, {}), **value}
    path = root / f"{out}.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def teacher_run(corpus, one_thread) -> Path:
    from kdlab.api import train

    train(config(corpus, "teacher"))
    return corpus / "teacher"


def test_train_then_distill_from_the_command_line(corpus, teacher_run, one_thread, capsys, monkeypatch):
    teacher = json.loads((teacher_run / "summary.json").read_text())
    # the run directory is a Hugging Face model directory: config.json + model.safetensors (+ kdlab's files)
    for name in ("config.json", "model.safetensors", "config.yaml", "metrics.jsonl"):
        assert (teacher_run / name).is_file(), name
    reloaded = load_pretrained(teacher_run)
    assert sum(p.numel() for p in reloaded.parameters()) == teacher["parameters"]
    # 256 byte ids: the uniform distribution has perplexity 256; the text uses 19 distinct bytes, so even a
    # unigram model is ~16. Two epochs of a one-layer model must get well below both.
    assert teacher["test"]["perplexity"] < 256 / 20
    assert teacher["test"]["perplexity"] == pytest.approx(float(torch.tensor(teacher["test"]["nll"]).exp()))
    cfg = config(
        corpus,
        "kd",
        teacher={"run": str(teacher_run)},
        method={"name": "kd", "alpha": 0.5},
        model={"name": "hf_causal_lm", "kwargs": {**TINY, "hidden_size": 16, "intermediate_size": 32}},
    )
    code, out, err = cli(["distill", str(cfg)], capsys, monkeypatch)
    assert code == 0, err
    assert "test perplexity" in out and "agreement" in out
    student = json.loads((corpus / "kd" / "summary.json").read_text())
    assert student["task"] == "causal_lm" and student["method"].startswith("kd(alpha=0.5")
    for split in ("val", "test"):
        assert set(student[split]) >= {"nll", "perplexity", "accuracy", "agreement", "tokens"}
        assert 0.0 < student[split]["agreement"] <= 1.0
    assert student["test"]["perplexity"] < 256 / 10
    assert student["data"]["tokenizer"] == teacher["data"]["tokenizer"] == "bytes-utf8"
    assert student["data"]["train_tokens"] == teacher["data"]["train_tokens"] > 0
    # kdlab evaluate re-measures the saved model: the summary's numbers, plus the train split and the footprint
    code, out, err = cli(["evaluate", str(corpus / "kd"), "--no-latency"], capsys, monkeypatch)
    assert code == 0, err
    evaluation = json.loads((corpus / "kd" / "evaluation.json").read_text())
    for split in ("val", "test"):
        for key in ("perplexity", "accuracy", "agreement", "tokens"):
            assert evaluation[split][key] == pytest.approx(student[split][key], rel=1e-5), (split, key)
    # train: every block's BLOCK - 1 targets (the tail shorter than a block is not used)
    assert evaluation["train"]["tokens"] == student["data"]["train_tokens"] // BLOCK * (BLOCK - 1)
    assert evaluation["teacher"]
    assert evaluation["footprint"]["file_bytes"] == (corpus / "kd" / "model.safetensors").stat().st_size
    assert json.loads((corpus / "kd" / "summary.json").read_text())["evaluation"] == evaluation
    assert "ppl" in out and (corpus / "kd" / "plots" / "learning_curves.png").is_file()


def test_cache_round_trip_equals_the_live_teacher(corpus, teacher_run, one_thread, capsys, monkeypatch):
    """k = vocabulary: the cached teacher is the live one up to float16 rounding of the stored logits."""
    cfg_path = config(corpus, "cached", teacher={"run": str(teacher_run)}, cache={"topk": 256})
    code, out, err = cli(["cache-logits", str(cfg_path)], capsys, monkeypatch)
    assert code == 0, err
    cache_dir = teacher_run / out.split("cached in ")[1].split()[0].split("/")[-1]
    load_config(cfg_path)  # the config the cache was made with is valid
    data = load_text(str(corpus / "train-*"), str(corpus / "val.txt"), str(corpus / "test.txt"), "bytes", BLOCK)
    live = LiveTeacher(teacher_run, torch.device("cpu"))
    prints = cache_fingerprints(data, teacher_run)
    cached = CachedTeacher(cache_dir, prints, BLOCK - 1, torch.device("cpu"))
    assert cached.tail_samples == 0  # k = V: no tail, so the default draws none
    # tail samples are draws at T = 1: a T = 2 run reads the cache without them
    buckets_only = CachedTeacher(cache_dir, prints, BLOCK - 1, torch.device("cpu"), use_tail_samples=False)
    assert len(SparseLogitCache(cache_dir / "train")) == data.train.shape[0] * (BLOCK - 1)
    index = torch.tensor([3, 0, 7, 5])
    ids = data.train[index]
    torch.manual_seed(1)
    student = HiddenStates(load_pretrained(teacher_run))
    for p in student.parameters():  # a student that differs from the teacher
        p.data.add_(torch.randn_like(p) * 0.05)
    hidden, weight = student(ids)[:, :-1].detach(), student.head_weight.detach()
    t_logits = live.logits(ids)
    stored = t_logits - t_logits.amax(-1, keepdim=True)  # what the cache holds: shifted, float16
    for method in ({"name": "kd", "temperature": 2.0}, {"name": "ptloss", "epsilon": [0.2, -0.1]}):
        built = build_method(method["name"], {k: v for k, v in method.items() if k != "name"}, 0, task="causal_lm")

        def objective(given) -> dict[str, torch.Tensor]:
            teacher_out = teacher_outputs(given)
            batch = {"targets": ids[:, 1:], "num_items": 1000}
            return built.compute(batch, Outputs(hidden=hidden, head_weight=weight), teacher_out, StepState(0, 0, 1, 0))  # noqa: B023

        teacher = buckets_only if method.get("temperature", 1.0) != 1.0 else cached
        from_cache = objective(teacher.train_input(index, ids))
        from_live = objective(live.train_input(index, ids))
        rounded = objective(stored.half().float())
        (value,) = from_cache.values()
        assert float(value) == pytest.approx(float(next(iter(rounded.values()))), rel=1e-5)
        assert float(value) == pytest.approx(float(next(iter(from_live.values()))), rel=2e-2)
    # the cache's top-1 is the live teacher's argmax (agreement needs nothing else)
    assert torch.equal(cached.top1("val", 2, data.val[2:5]), live.top1("val", 2, data.val[2:5]))


def test_bytes_per_token_at_k64(corpus, teacher_run, one_thread, capsys, monkeypatch):
    cfg = config(corpus, "k64", teacher={"run": str(teacher_run)}, cache={"topk": 64, "path": str(corpus / "c64")})
    code, out, err = cli(["cache-logits", str(cfg)], capsys, monkeypatch)
    assert code == 0, err
    # by hand, 256 byte classes = 8 bits per index: 64 float16 values (128 B) + 64 indices (64 B) + one float32
    # log_rest (4 B) = 196; the default tail samples fill the token to 299 B: 99 draws (99 B) + a float32 tail
    # entropy (4 B); headers and index.json come on top
    train = SparseLogitCache(corpus / "c64" / "train")
    assert train.stored_tail_samples == 99
    assert train.payload_bytes_per_token == 299.0
    assert "299.0 of tensor data" in out.replace("\n", " ")
    # a PTLoss student from the cache: epsilon chosen on the k + 1 buckets of validation tokens, agreement from
    # the cached top-1
    args = ["--set", "method.name=ptloss", "--set", "method.candidates=4", "--set", "method.selection_tokens=64"]
    code, out, err = cli(
        ["distill", str(cfg), *args, "--set", "cache.use=require", "--set", "train.epochs=1"], capsys, monkeypatch
    )
    assert code == 0, err
    summary = json.loads((corpus / "k64" / "summary.json").read_text())
    assert summary["teacher"].startswith("cached top-64") and 0 < summary["test"]["agreement"] <= 1
    selection = json.loads((corpus / "k64" / "ptloss_selection.json").read_text())
    assert len(selection["candidates"]) == 4 and len(selection["epsilon"]) == 5
    chosen = [round(x, 4) for x in selection["epsilon"]]
    assert summary["method"] == f"ptloss(alpha=0.0, beta=1.0, T=1.0, eps={chosen})"
    assert summary["teacher"].startswith("cached top-64 logits + 99 tail samples")
    # select-ptloss alone makes the very selection the run made (same teacher, tokens and candidates)
    code, out, err = cli(["select-ptloss", str(cfg), *args, "--output", str(corpus / "sel")], capsys, monkeypatch)
    assert code == 0, err
    alone = json.loads((corpus / "sel" / "ptloss_selection.json").read_text())
    assert alone["epsilon"] == selection["epsilon"] and alone["chosen_index"] == selection["chosen_index"]
    # JSD is not an expectation under the teacher: the same cache without its samples, said in one warning line
    jsd = ["--set", "method.name=jsd", "--set", f"out={corpus / 'k64-jsd'}"]
    code, out, err = cli(
        ["distill", str(cfg), "--set", "cache.use=require", "--set", "train.epochs=1", *jsd], capsys, monkeypatch
    )
    assert code == 0, err
    assert "warning: the logit cache's tail samples serve kd and ptloss at temperature 1" in " ".join(err.split())
    teacher = json.loads((corpus / "k64-jsd" / "summary.json").read_text())["teacher"]
    assert teacher.startswith("cached top-64 logits") and "tail samples" not in teacher


def test_user_errors_are_one_line(corpus, teacher_run, capsys, monkeypatch):
    cfg = config(corpus, "bad", teacher={"run": str(teacher_run)}, cache={"topk": 8, "path": str(corpus / "c8")})
    assert cli(["cache-logits", str(cfg)], capsys, monkeypatch)[0] == 0
    # the cache was made for other data (another validation file): refused, nothing written
    (corpus / "val2.txt").write_text(sentences(40, 101))
    code, _, err = cli(
        [
            "distill",
            str(cfg),
            "--set",
            "method.name=kd",
            "--set",
            "cache.use=require",
            "--set",
            f"data.val={corpus}/val2.txt",
        ],
        capsys,
        monkeypatch,
    )
    one_error_line(code, err, "made for other data")
    assert not (corpus / "bad").exists()
    # a student whose vocabulary differs from the teacher's
    code, _, err = cli(
        ["distill", str(cfg), "--set", "method.name=kd", "--set", "model.kwargs.vocab_size=300"], capsys, monkeypatch
    )
    one_error_line(code, err, "vocabulary mismatch: the teacher")
    # another tokenizer than the teacher's
    tokenizer = corpus / "tok.json"
    from kdlab.data.text import train_bpe

    train_bpe([corpus / "train-a.txt"], 256, tokenizer)
    code, _, err = cli(
        ["distill", str(cfg), "--set", "method.name=kd", "--set", f"data.tokenizer={tokenizer}"], capsys, monkeypatch
    )
    one_error_line(code, err, "another tokenizer")
    code, _, err = cli(["train", str(cfg), "--set", "method.name=kd"], capsys, monkeypatch)
    one_error_line(code, err, "needs `kdlab distill`")
    assert not (corpus / "bad").exists()


def test_kdlab_and_the_image_tasks_do_not_import_transformers():
    """transformers is the hf extra: only task: causal_lm loads it (a digits run was checked by hand too)."""
    import subprocess

    code = (
        "import sys, kdlab, kdlab.cli, kdlab.api, kdlab.engine.loop, kdlab.data, kdlab.models, kdlab.losses, "
        "kdlab.methods; assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_gradient_accumulation_is_exact(corpus, one_thread):
    """2 micro-batches of 8 blocks = 1 batch of 16: each micro-batch is divided by the window's target tokens.

    Plain SGD, not AdamW: Adam's step hardly depends on the scale of the gradient, so a loss off by a constant
    factor (num_items of one micro-batch instead of the window) would pass."""
    from safetensors.torch import load_file

    from kdlab.api import train

    sgd = {"name": "sgd", "lr": 0.5, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    plain = {"epochs": 1, "optimizer": sgd, "scheduler": {"name": "constant"}}
    weights = []
    for batch, accum in ((16, 1), (8, 2)):
        path = config(corpus, f"accum{accum}", train={**plain, "batch_size": batch, "grad_accum": accum})
        summary = train(path)
        # 407 blocks: 25 batches of 16 and a partial one of 7 (a window of one micro-batch of 7 when accumulating)
        blocks = summary["data"]["train_tokens"] // BLOCK
        assert summary["optimizer_steps"] == (blocks + 15) // 16 == 26
        weights.append(load_file(str(corpus / f"accum{accum}" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        # float32 rounding differs by up to 2e-5; a wrong num_items moves weights by 0.5
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-4, atol=1e-4)


def test_the_last_shorter_window_is_the_mean_over_its_own_tokens(corpus, one_thread):
    """407 blocks in micro-batches of 8 are 50 micro-batches: with grad_accum 3, 16 windows of 3 and a last one of
    2. Plain SGD, so each step is lr × the gradient of the window's mean. A run with batches of 24 makes the same 16
    full steps on the same rows; one float64 step by hand (the Hugging Face model's own logits, mean next-token
    cross-entropy over exactly the last window's 16 blocks) must then give the accumulated run's weights. Dividing
    the last window by grad_accum (num_items of 3 micro-batches) makes its step 2/3 as long."""
    from safetensors.torch import load_file

    from kdlab.api import train
    from kdlab.engine.batches import epoch_permutation
    from kdlab.tasks.causal_lm import load_lm_data

    lr = 0.5
    sgd = {"name": "sgd", "lr": lr, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    plain = {"epochs": 1, "optimizer": sgd, "scheduler": {"name": "constant"}, "drop_last": True}
    paths = {
        "short": config(corpus, "short-window", train={**plain, "batch_size": 8, "grad_accum": 3}),
        "full": config(corpus, "full-windows", train={**plain, "batch_size": 24, "grad_accum": 1}),
    }
    blocks = load_lm_data(load_config(paths["short"])).train
    assert len(blocks) == 407 and len(blocks) // 8 == 50 and 50 % 3 == 2
    steps = {name: train(path)["optimizer_steps"] for name, path in paths.items()}
    assert steps == {"short": 17, "full": 16}
    model = load_pretrained(corpus / "full-windows").double()  # the weights after the 16 full windows
    last = blocks[epoch_permutation(len(blocks), 0, 0)[16 * 24 : 50 * 8]]  # micro-batches 48 and 49: 16 blocks
    logits = model(last).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), last[:, 1:].flatten())  # mean over 16 × 31
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=True)
    grads = torch.autograd.grad(loss, params)
    expected = {n: (p - lr * g).detach().float() for n, p, g in zip(names, params, grads, strict=True)}
    before = {n: p.detach().float() for n, p in zip(names, params, strict=True)}
    got = load_file(str(corpus / "short-window" / "model.safetensors"))
    step = max(float((expected[n] - before[n]).abs().max()) for n in names if n in got)
    assert step > 0.1  # a third of the last step is far above the tolerance below (float32 rounding: ~2e-5)
    compared = 0
    for name in names:
        if name in got:  # a tied head is saved once
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4, msg=name)
            compared += 1
    assert compared == len(got)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX system")
def test_two_processes_train_the_same_lm_as_one(corpus, teacher_run, one_thread):
    """torchrun, 2 processes × micro-batch 4 × accumulation 2 = 1 process × 8 × 2, KD from the teacher with CE
    (alpha 0.5), plain SGD: the same weights. Each process's terms are divided by the window's target tokens of all
    processes, so the loss must be multiplied by the world size to undo DDP's averaging; without it every step is
    half as long."""
    import socket
    import subprocess

    from safetensors.torch import load_file

    from kdlab.api import distill

    sgd = {"name": "sgd", "lr": 0.5, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    common = {"teacher": {"run": str(teacher_run)}, "method": {"name": "kd", "alpha": 0.5, "temperature": 2.0}}
    train = {"epochs": 1, "optimizer": sgd, "scheduler": {"name": "constant"}, "cpu": True}
    one = distill(config(corpus, "ddp-one", **common, train={**train, "batch_size": 8, "grad_accum": 2}))
    two_cfg = config(corpus, "ddp-two", **common, train={**train, "batch_size": 8, "grad_accum": 2})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [*command, "-m", "kdlab.cli", "distill", str(two_cfg)], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((corpus / "ddp-two" / "summary.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["optimizer_steps"] == two["optimizer_steps"] == 26  # 407 blocks: the last window holds 7
    a = load_file(str(corpus / "ddp-one" / "model.safetensors"))
    b = load_file(str(corpus / "ddp-two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # measured: 8e-7 apart; without the world-size factor, 1e-2 and more
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4, msg=key)


def test_stdlib_prefix_and_jsonl_errors(tmp_path):
    from kdlab.data import DataError
    from kdlab.data.text import read_documents, resolve_files

    (found,) = resolve_files("train", "stdlib:json/__init__.py")
    assert found.is_file() and found.parent.name == "json"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object with a string 'text' field"):
        read_documents([bad])
    with pytest.raises(DataError, match=r"data\.val: no file matches"):
        resolve_files("val", str(tmp_path / "*.txt"))


def test_distilling_from_a_k_equal_vocabulary_cache_trains_the_live_teachers_student(corpus, teacher_run, one_thread):
    """Issue 11: *training* from the cache (k = V, float16 values) gives the student of the live teacher.

    Same seed, same batches: the only difference is the float16 rounding of the stored (row-shifted) logits,
    so after an epoch of KD the two students' weights and test perplexities agree closely.
    """
    from safetensors.torch import load_file

    from kdlab.api import cache_logits, distill

    cache_dir = corpus / "kV"
    cache_logits(
        config(corpus, "kV-cache", teacher={"run": str(teacher_run)}, cache={"topk": 256, "path": str(cache_dir)})
    )
    summaries, weights = {}, {}
    for name, cache in (
        ("live", {"use": "never"}),
        ("cached", {"use": "require", "topk": 256, "path": str(cache_dir)}),
    ):
        path = config(
            corpus,
            f"kV-{name}",
            teacher={"run": str(teacher_run)},
            method={"name": "kd", "temperature": 1.0},
            cache=cache,
            train={"epochs": 1},
        )
        summaries[name] = distill(path)
        weights[name] = load_file(str(corpus / f"kV-{name}" / "model.safetensors"))
    assert summaries["cached"]["test"]["perplexity"] == pytest.approx(summaries["live"]["test"]["perplexity"], rel=1e-4)
    for key in weights["live"]:
        torch.testing.assert_close(weights["cached"][key], weights["live"][key], rtol=0, atol=1e-3)


def test_an_interrupted_run_resumes_to_the_same_weights(corpus, teacher_run, one_thread):
    """A crash in epoch 2 (after a mid-epoch checkpoint), then --resume: the weights and the metrics of an
    uninterrupted run, and no duplicated metrics lines."""
    from safetensors.torch import load_file

    from kdlab.api import distill

    train = {"epochs": 2, "checkpoint_every_steps": 4, "log_every_steps": 2}
    straight = distill(
        config(corpus, "straight", teacher={"run": str(teacher_run)}, method={"name": "kd"}, train=train)
    )
    steps_per_epoch = straight["optimizer_steps"] // 2
    assert steps_per_epoch > 4

    def crash(info: StepInfo) -> None:  # the same callback contract as the classification task
        if (
            info.global_step == steps_per_epoch + 5
        ):  # one step after epoch 2's first checkpoint (at steps_per_epoch + 4 or so)
            raise RuntimeError("simulated crash")

    cfg = config(corpus, "crashed", teacher={"run": str(teacher_run)}, method={"name": "kd"}, train=train)
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill(cfg, callbacks=[crash])
    assert not (corpus / "crashed" / "summary.json").exists()
    seen: list[int] = []
    resumed = distill(cfg, resume=True, callbacks=[lambda info: seen.append(info.global_step)])
    # it continued from the last checkpoint before the crash (every 4 steps, and at the end of epoch 1)
    crash_step = steps_per_epoch + 5
    last = max(steps_per_epoch, (crash_step - 1) // 4 * 4)
    assert seen[0] == last + 1 and seen[-1] == straight["optimizer_steps"]
    a, b = (
        load_file(str(corpus / "straight" / "model.safetensors")),
        load_file(str(corpus / "crashed" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert resumed["optimizer_steps"] == straight["optimizer_steps"]
    assert resumed["test"]["perplexity"] == pytest.approx(straight["test"]["perplexity"], rel=1e-6)
    lines = [json.loads(x) for x in (corpus / "crashed" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (corpus / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [r["step"] for r in reference]  # every line once, in order
    for mine, theirs in zip(lines, reference, strict=True):
        if "val/perplexity" in theirs:
            assert mine["val/perplexity"] == pytest.approx(theirs["val/perplexity"], rel=1e-6)


def test_chain_and_sweep_run_a_causal_lm_config(corpus, tmp_path, one_thread):
    """Every task goes through the task registry: a two-stage chain (teacher, then a KD student) and a 2-point
    sweep over the seed on task: causal_lm configs run, and the student of the chain learned from its teacher."""
    from kdlab.workflow.chain import chain
    from kdlab.workflow.sweep import sweep

    base = json.loads(config(corpus, "unused-base").read_text())
    base.pop("out")
    base["train"]["epochs"] = 1
    spec = {
        "out": str(tmp_path / "lm-chain"),
        "base": {**base, "method": {"name": "kd"}},
        "stages": [{"name": "teacher", "method": {"name": "ce"}}, {"name": "student"}],
    }
    stages = chain(spec)
    assert [s["chain_action"] for s in stages] == ["fresh", "fresh"]
    assert [s["task"] for s in stages] == ["causal_lm", "causal_lm"]
    assert stages[0]["method"] == "ce" and stages[1]["method"].startswith("kd(")
    assert "agreement" in stages[1]["test"] and stages[1]["teacher"].endswith(str(tmp_path / "lm-chain" / "teacher"))
    assert [s["chain_action"] for s in chain(spec)] == ["skip", "skip"]
    result = sweep(
        {**base, "out": str(tmp_path / "unused")}, {"seed": [0, 1]}, root=tmp_path / "lm-sweep", progress=False
    )
    assert [p.name for p in result.points] == ["seed=0", "seed=1"]
    perplexities = [p.summary["test"]["perplexity"] for p in result.points]
    assert all(math.isfinite(x) for x in perplexities) and perplexities[0] != perplexities[1]


def test_the_lm_loop_takes_the_gradient_scaler_path(corpus, teacher_run, monkeypatch, one_thread):
    """fp16 on a GPU gives the loop a GradScaler; on this CPU Accelerate gives none, so the test hands the run's
    Accelerator torch's CPU GradScaler. Powers of two are exact in float32: the scaled run must train the same
    weights as the plain one, and the scale must have grown once per optimizer step (scale, unscale, step and
    update all happened)."""
    from safetensors.torch import load_file

    import kdlab.tasks.causal_lm as causal_lm
    from kdlab.api import distill

    plain = distill(config(corpus, "scaler-plain", teacher={"run": str(teacher_run)}, method={"name": "kd"}))
    made = []

    def with_scaler(*args, **kwargs):
        acc = real(*args, **kwargs)
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
        made.append(acc.scaler)
        return acc

    real = causal_lm.run_accelerator
    monkeypatch.setattr(causal_lm, "run_accelerator", with_scaler)
    scaled = distill(config(corpus, "scaler-scaled", teacher={"run": str(teacher_run)}, method={"name": "kd"}))
    steps = scaled["optimizer_steps"]
    assert steps == plain["optimizer_steps"] > 2
    assert made[0].get_scale() == 2.0 ** (8 + steps)
    a, b = (
        load_file(str(corpus / "scaler-plain" / "model.safetensors")),
        load_file(str(corpus / "scaler-scaled" / "model.safetensors")),
    )
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
