"""``task: causal_lm``: train and distil Hugging Face causal language models (its cache: ``causal_lm_cache``).

The same run directory as the classification task (config.yaml, metrics.jsonl, summary.json), with the
model saved by ``save_pretrained`` (safetensors) into the run directory itself, so that a finished run
is a Hugging Face model directory and a valid ``teacher.run``. Every loss goes through
``kdlab.losses.fused_linear_distill``: the student's hidden states and head weight go in, the
(tokens × vocabulary) logits never exist at once. The teacher is frozen and run under
``torch.inference_mode``, or replaced by a sparse top-k cache (``kdlab cache-logits``).

Method (``method:`` section): ``ce`` (SFT: cross-entropy on the next token), ``kd``, ``ptloss``,
``reverse_kl``, ``jsd``; loss = beta · divergence(T) + alpha · CE, defaults alpha 0, beta 1, T 1.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

from kdlab.config import RunConfig
from kdlab.data.text import TextSplits, load_text
from kdlab.engine.loop import run_loop
from kdlab.engine.rundir import (
    new_accelerator,
    prepare_out,
    run_accelerator,
    use_cpu,
    versions,
    write_config,
    write_report,
    write_summary,
)
from kdlab.errors import ConfigError
from kdlab.methods import Method, Outputs, SetupContext
from kdlab.methods import build as build_method
from kdlab.methods.token import teacher_outputs
from kdlab.models import count_parameters
from kdlab.models.hf import HiddenStates, build_causal_lm, load_pretrained, vocab_size
from kdlab.teacher.lm import (
    SPLITS,
    resolve_lm_teacher,
)
from kdlab.teacher.logit_cache import CacheError

from .base import Task, register

EVAL_LOGITS = 1 << 24  # logits per evaluation batch (64 MB of float32)


def build_lm_method(cfg: RunConfig, distilling: bool) -> Method:
    """The config's method for token-level training (``kdlab train`` trains with ``ce`` only)."""
    if not distilling and cfg.method.name != "ce":
        raise ConfigError(f"train uses plain cross-entropy; method {cfg.method.name!r} needs `kdlab distill`")
    return build_method(cfg.method.name if distilling else "ce", cfg.method.params(), 0, task="causal_lm")


def setup_context(method: Method, teacher, data: TextSplits, out: Path, acc: Accelerator) -> SetupContext:
    """What a method's ``setup`` sees in a causal-LM run: the teacher's dense logits on the first ``rows``
    validation target tokens (one row per token) and those tokens."""
    selection: dict[int | None, tuple[Tensor, Tensor]] = {}

    def rows_of(split: str, rows: int | None) -> tuple[Tensor, Tensor]:
        if split != "val" or teacher is None:
            raise ConfigError(f"method {method.name!r} needs the teacher's logits on {split}")
        if rows not in selection:
            selection[rows] = teacher.selection_inputs(data.val, rows or data.val[:, 1:].numel(), 8)
        return selection[rows]

    def no_features(side: str, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        raise ConfigError(f"method {method.name!r} reads features; task: causal_lm offers hidden states only")

    return SetupContext(
        num_classes=0,
        device=acc.device,
        out_dir=out,
        teacher_logits=lambda split, rows=None: rows_of(split, rows)[0],
        labels=lambda split, rows=None: rows_of(split, rows)[1],
        feature_shapes=no_features,
        write_report=lambda stem, payload, plot: write_report(out, stem, payload, plot, acc),
    )


def load_lm_data(cfg: RunConfig) -> TextSplits:
    d = cfg.data
    if d.name != "text" or d.train is None or d.val is None:
        raise ConfigError("task: causal_lm needs data: {name: text, train: FILES, val: FILES} (test optional)")
    return load_text(d.train, d.val, d.test, d.tokenizer, d.block_size)


def select_ptloss_lm(cfg: RunConfig, output: Path | None) -> tuple[Any, Path]:
    """``kdlab select-ptloss`` for ``task: causal_lm``: the proxy-teacher selection a ptloss run would make."""
    method = build_method("ptloss", {**cfg.method.params(), "epsilon": "auto"}, 0, task="causal_lm")
    data = load_lm_data(cfg)
    acc = new_accelerator(cpu=use_cpu(cfg.train), mixed_precision=cfg.train.mixed_precision)
    teacher = resolve_lm_teacher(cfg, data, None, acc.device)
    out = output or Path(f"{cfg.out}-ptloss-selection")
    method.setup(setup_context(method, teacher, data, out, acc))
    return method.selection, out


# ---- evaluation ----


@torch.no_grad()
def evaluate_lm(net: HiddenStates, blocks: Tensor, teacher, split: str, batch_blocks: int) -> dict[str, float]:
    """Next-token NLL, perplexity, token accuracy and (with a teacher) top-1 agreement over a split."""
    device = net.head_weight.device
    was_training = net.training
    net.eval()
    nll = correct = agree = count = 0.0
    weight = net.head_weight.float()
    for start in range(0, len(blocks), batch_blocks):
        ids = blocks[start : start + batch_blocks].to(device)
        logits = net(ids)[:, :-1].float() @ weight.t()
        targets = ids[:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
        pred = logits.argmax(-1)
        correct += float((pred == targets).sum())
        if teacher is not None:
            agree += float((pred == teacher.top1(split, start, ids)).sum())
        count += targets.numel()
    net.train(was_training)
    out = {"nll": nll / count, "perplexity": math.exp(nll / count), "accuracy": correct / count, "tokens": int(count)}
    if teacher is not None:
        out["agreement"] = agree / count
    return out


def evaluate_lm_run(run: Path, cfg: RunConfig, splits: tuple[str, ...], latency: bool) -> dict[str, Any]:
    """``kdlab evaluate`` for a causal-LM run: perplexity, NLL, token accuracy and (when its teacher or cache is
    still there) top-1 agreement per split, and the footprint (latency of 1 and 8 blocks: a batch of 256 blocks
    would hold 256 · block · vocabulary logits)."""
    from kdlab.eval.footprint import footprint

    data = load_lm_data(cfg)
    acc = new_accelerator(cpu=True)
    try:
        model = load_pretrained(run)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{run} does not load as a Hugging Face causal LM: {str(err).splitlines()[0]}") from None
    net = HiddenStates(model).to(acc.device)
    vocab = vocab_size(model)
    teacher = None
    if cfg.teacher is not None:
        try:
            teacher = resolve_lm_teacher(cfg, data, vocab, acc.device)
        except (ConfigError, CacheError):  # the teacher or its cache is gone: the student's own metrics only
            teacher = None
    batch = max(1, EVAL_LOGITS // ((cfg.data.block_size - 1) * vocab))
    result: dict[str, Any] = {split: evaluate_lm(net, data.split(split), teacher, split, batch) for split in splits}
    result["parameters"] = count_parameters(model)
    result["teacher"] = teacher is not None
    files = [run / "model.safetensors"]
    result["footprint"] = footprint(model, data.test[:1], files=files, latency=latency, batch_sizes=(1, 8))
    return result


# ---- the run ----


def run_lm(cfg: RunConfig, *, distilling: bool, resume: bool, overwrite: bool, callbacks=None) -> dict[str, Any]:
    """One causal-LM run (``kdlab train`` / ``kdlab distill`` with ``task: causal_lm``); returns its summary."""
    wall_start = time.perf_counter()
    if distilling and cfg.teacher is None:
        raise ConfigError("distill needs a 'teacher' section (teacher.run: a causal-LM run or model directory)")
    out = Path(cfg.out)
    method = build_lm_method(cfg, distilling)
    data = load_lm_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_causal_lm(cfg.model.name, cfg.model.kwargs, data.vocab_size, cfg.data.block_size)
    student_vocab = vocab_size(model)
    if data.vocab_size > student_vocab:
        raise ConfigError(f"the tokenizer has {data.vocab_size} tokens but the model's vocabulary only {student_vocab}")
    acc = run_accelerator(cfg.train, cfg.tracking, out)
    teacher = None
    if distilling and method.needs_teacher:  # before touching `out`: a bad teacher leaves nothing behind
        teacher = resolve_lm_teacher(cfg, data, student_vocab, acc.device)
    prepare_out(out, resume, overwrite, acc)
    if acc.is_main_process:
        write_config(out, cfg)
    method.setup(setup_context(method, teacher, data, out, acc))
    result = _fit_lm(model, data, method, teacher, cfg, acc, out, callbacks, resume)
    summary = {
        "name": cfg.name,
        "complete": True,
        "task": "causal_lm",
        "method": method.describe(),
        "model": type(model).__name__,
        "teacher": None if teacher is None else teacher.description,
        "test_accuracy": result["test"]["accuracy"],
        **result,
        "wall_seconds": time.perf_counter() - wall_start,
        "parameters": count_parameters(model),
        "world_size": acc.num_processes,
        "threads": torch.get_num_threads(),
        "seed": cfg.seed,
        "data": {
            "name": "text",
            "tokenizer": data.tokenizer.digest,
            "vocab_size": data.vocab_size,
            "block_size": cfg.data.block_size,
            "fingerprint": data.fingerprints["train"],
            **{f"{s}_tokens": int(data.split(s).numel()) for s in SPLITS},
        },
        "versions": _versions(),
    }
    if acc.is_main_process:
        data.tokenizer.save(out)
    write_summary(out, summary, acc)
    return summary


def _versions() -> dict[str, str]:
    import transformers

    return versions(transformers=transformers.__version__)


class LMStep:
    """The causal-LM task's side of the loop (``kdlab.engine.loop.TaskStep``): token blocks in, hidden states and
    the head weight out (the fused loss never forms the logits). A micro-batch's terms are sums over its target
    tokens divided by the target tokens of the whole accumulation window (``num_items``), so a window's gradient
    is the mean over its tokens whatever its length; the product with the world size undoes DDP's averaging."""

    def __init__(self, model, data: TextSplits, method: Method, teacher, cfg: RunConfig, acc: Accelerator):
        self.student = HiddenStates(model)
        self.label, self.rows, self.data, self.method = method.name, len(data.train), data, method
        self.teacher, self.acc, self.batch_size = teacher, acc, cfg.train.batch_size
        self.targets_per_block = data.train.shape[1] - 1
        limit = EVAL_LOGITS // (self.targets_per_block * vocab_size(model))
        self.eval_blocks = max(1, min(cfg.train.eval_batch_size, limit))

    def batch(self, index: Tensor, epoch: int, step: int, window_rows: int) -> dict[str, Any]:
        ids = self.data.train[index.cpu()].to(self.acc.device)
        num_items = window_rows * self.targets_per_block  # target tokens of the whole window
        return {"ids": ids, "index": index, "targets": ids[:, 1:], "num_items": num_items}

    def forward(self, model, batch: dict[str, Any]) -> tuple[Outputs, Outputs | None]:
        teacher = None
        if self.method.needs_teacher:
            with torch.autocast(self.acc.device.type, enabled=False):  # the teacher keeps its own precision
                teacher = teacher_outputs(self.teacher.train_input(batch["index"], batch["ids"]))
        hidden = model(batch["ids"])[:, :-1]
        return Outputs(hidden=hidden, head_weight=self.student.head_weight), teacher

    def objective(self, terms: dict[str, Any], batch: dict[str, Any], window_rows: int) -> tuple[Tensor, float]:
        blocks = batch["ids"].shape[0] * self.acc.num_processes  # this micro-batch's global blocks
        return sum(terms.values()) * self.acc.num_processes, window_rows / blocks  # type: ignore[return-value]

    def count(self, batch: dict[str, Any]) -> int:
        return batch["ids"].shape[0] * self.targets_per_block * self.acc.num_processes

    def evaluate(self, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
        blocks = {"val": self.data.val, "test": self.data.test}
        return {
            s: evaluate_lm(self.student, blocks[s], self.teacher, s, self.eval_blocks) for s in splits if s in blocks
        }

    def describe_epoch(self, evaluations: dict[str, dict[str, float]]) -> str:
        return f"val ppl {evaluations['val']['perplexity']:.2f}"


def _fit_lm(model, data: TextSplits, method: Method, teacher, cfg: RunConfig, acc: Accelerator, out, callbacks, resume):
    """The one loop over token blocks; checkpoints (``checkpoints/``, as for images) after every epoch and every
    ``train.checkpoint_every_steps`` optimizer steps; ``resume`` continues from the latest one."""
    step = LMStep(model, data, method, teacher, cfg, acc)
    result, trainable = run_loop(
        step, method, cfg.train, accelerator=acc, out_dir=out, seed=cfg.seed, resume=resume, callbacks=callbacks
    )
    if acc.is_main_process:
        save_pretrained(trainable.student.model, out)
    acc.wait_for_everyone()
    return {
        "val": result.evaluations["val"],
        "test": result.evaluations["test"],
        "epochs": result.epochs,
        "optimizer_steps": result.steps,
        "train_seconds": result.train_seconds,
        "tokens_per_second": result.items_per_second,
    }


def save_pretrained(model, out: Path) -> None:
    """``save_pretrained`` (safetensors) into a temporary directory, then each file renamed into ``out``."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".hf-"))
    try:
        model.save_pretrained(str(tmp))
        mode = 0o666 & ~_umask()  # save_pretrained may write 0600 temporary files; results read like any file
        for path in tmp.iterdir():
            os.chmod(path, mode)
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@register
class CausalLMTask(Task):
    name = "causal_lm"

    def run(self, cfg, *, distilling, resume, overwrite, callbacks=None, student=None):
        if student is not None:
            raise ConfigError("task: causal_lm trains a model built from its config; a given model is not supported")
        return run_lm(cfg, distilling=distilling, resume=resume, overwrite=overwrite, callbacks=callbacks)

    def evaluate(self, run, cfg, splits, latency):
        return evaluate_lm_run(run, cfg, splits, latency)

    def cache_logits(self, cfg):
        from .causal_lm_cache import cache_logits_lm

        return cache_logits_lm(cfg)

    def describe_cache(self, path):
        from .causal_lm_cache import describe_cache

        return describe_cache(path)

    def select_ptloss(self, cfg, output):
        return select_ptloss_lm(cfg, output)

    def check(self, cfg):
        build_lm_method(cfg, distilling=cfg.teacher is not None)

    def summary_line(self, summary):
        parts = []
        for split in ("val", "test"):
            m = summary[split]
            agree = f", agreement {m['agreement']:.4f}" if "agreement" in m else ""
            parts.append(f"{split} perplexity {m['perplexity']:.3f}, token accuracy {m['accuracy']:.4f}{agree}")
        return "; ".join(parts) + f" ({summary['tokens_per_second']:.0f} tokens/s)"
