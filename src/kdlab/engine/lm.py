"""``task: causal_lm``: train, distil and cache the teacher of Hugging Face causal language models.

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

import contextlib
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

import kdlab
from kdlab.config import ConfigError, RunConfig, dump_config
from kdlab.data.text import TextSplits, load_text
from kdlab.io import atomic_write_json, atomic_write_text
from kdlab.losses import fused_linear_distill
from kdlab.losses.sparse_teacher import SparseTeacher, sparse_teacher_from_logits
from kdlab.models import count_parameters
from kdlab.models.hf import HiddenStates, build_causal_lm, load_pretrained, vocab_size

from . import batches
from .checkpoint import Position, latest_checkpoint, load_checkpoint
from .lm_teacher import (
    SPLITS,
    LiveTeacher,
    cache_directory,
    cache_fingerprints,
    resolve_lm_teacher,
    teacher_directory,
)
from .logit_cache import CacheError
from .loop import _checkpoint, _progress, terms_are_finite
from .metrics_log import MetricsLog
from .optim import build_optimizer, build_scheduler
from .sparse_logit_cache import SparseLogitCache, default_tail_samples, write_sparse_cache

DIVERGENCES = ("kd", "ptloss", "reverse_kl", "jsd")
EVAL_LOGITS = 1 << 24  # logits per evaluation batch (64 MB of float32)


class LMMethodParams(BaseModel):
    """Hyper-parameters of a causal-LM method (``method:`` minus ``name``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.0, ge=0, description="weight of the next-token cross-entropy")
    beta: float = Field(1.0, ge=0, description="weight of the divergence from the teacher")
    temperature: float = Field(1.0, gt=0)
    epsilon: Literal["auto"] | list[float] = "auto"  # ptloss only; auto = chosen by the proxy teacher on val tokens
    candidates: int = Field(64, ge=1)
    order: int = Field(5, ge=1)
    scale: float = Field(1.0, gt=0, le=1)
    selection_seed: int = 0
    selection_metric: Literal["l2", "tv", "nll"] = "l2"
    selection_tokens: int = Field(512, ge=1, description="validation target tokens the proxy teacher is scored on")
    jsd_beta: float = Field(0.5, gt=0, lt=1)


@dataclass
class LMObjective:
    """The training loss of one step, from hidden states, head weight, teacher and the next-token targets."""

    name: str
    params: LMMethodParams
    epsilon: Tensor | None = None

    @property
    def needs_teacher(self) -> bool:
        return self.name != "ce" and self.params.beta > 0

    @property
    def needs_selection(self) -> bool:
        return self.name == "ptloss" and self.epsilon is None and self.needs_teacher

    def describe(self) -> str:
        p = self.params
        if self.name == "ce":
            return "ce"
        eps = ""
        if self.name == "ptloss":
            shown = "auto" if self.epsilon is None else [round(x, 4) for x in self.epsilon.tolist()]
            eps = f", eps={shown}"
        return f"{self.name}(alpha={p.alpha}, beta={p.beta}, T={p.temperature}{eps})"

    def __call__(self, hidden: Tensor, weight: Tensor, teacher, targets: Tensor, num_items: int) -> dict[str, Tensor]:
        p = self.params
        if weight.dtype != hidden.dtype:  # mixed precision: the head in the hidden states' dtype (autograd follows)
            weight = weight.to(hidden.dtype)
        if not self.needs_teacher:  # SFT: KL to the one-hot target = cross-entropy, through the same fused path
            scale = 1.0 if self.name == "ce" else p.alpha
            return {"ce": scale * fused_linear_distill(hidden, weight, one_hot(targets), num_items=num_items)}
        value = fused_linear_distill(
            hidden,
            weight,
            teacher,
            loss=self.name,
            epsilon=None if self.epsilon is None else self.epsilon.to(hidden.device),
            temperature=p.temperature,
            labels=targets,
            ce_weight=p.alpha / p.beta,
            num_items=num_items,
            jsd_beta=p.jsd_beta,
        )
        return {self.name if p.alpha == 0 else f"{self.name}+ce": p.beta * value}


def one_hot(targets: Tensor) -> SparseTeacher:
    """The targets as a sparse teacher with k = 1 and no rest mass: its KD loss is the cross-entropy."""
    return SparseTeacher(
        torch.zeros(*targets.shape, 1, device=targets.device),
        targets.unsqueeze(-1),
        torch.full(targets.shape, float("-inf"), device=targets.device),
    )


def build_objective(cfg: RunConfig, distilling: bool) -> LMObjective:
    name = cfg.method.name if distilling else "ce"
    if not distilling and cfg.method.name != "ce":
        raise ConfigError(f"train uses plain cross-entropy; method {cfg.method.name!r} needs `kdlab distill`")
    if name not in ("ce", *DIVERGENCES):
        raise ConfigError(f"task: causal_lm supports methods ce, {', '.join(DIVERGENCES)}; got {name!r}")
    try:
        params = LMMethodParams.model_validate(cfg.method.params())
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"config: method.{where}: {first['msg']}") from None
    if "epsilon" in cfg.method.params() and name != "ptloss":
        raise ConfigError(f"method.epsilon is only used by ptloss, not by {name!r}")
    epsilon = None
    if name == "ptloss" and params.epsilon != "auto":
        epsilon = torch.tensor(params.epsilon, dtype=torch.float32)
    return LMObjective(name, params, epsilon)


def load_lm_data(cfg: RunConfig) -> TextSplits:
    d = cfg.data
    if d.name != "text" or d.train is None or d.val is None:
        raise ConfigError("task: causal_lm needs data: {name: text, train: FILES, val: FILES} (test optional)")
    return load_text(d.train, d.val, d.test, d.tokenizer, d.block_size)


def select_epsilon(p: LMMethodParams, teacher, val: Tensor):
    """PTLoss's epsilon through the image task's selection (kdlab select-ptloss), on validation tokens as rows."""
    from kdlab.methods import build as build_method

    logits, labels = teacher.selection_inputs(val, p.selection_tokens, 8)
    keys = ("temperature", "candidates", "order", "scale", "selection_seed", "selection_metric")
    method = build_method("ptloss", {"epsilon": "auto", **{k: getattr(p, k) for k in keys}}, logits.shape[-1])
    selection = method.select(logits, labels)
    return selection.epsilon.float(), selection


def select_ptloss_lm(cfg: RunConfig, output: Path | None) -> tuple[Any, Path]:
    """``kdlab select-ptloss`` for ``task: causal_lm``: the proxy-teacher selection a ptloss run would make."""
    from .run import _new_accelerator, _use_cpu, write_selection

    objective = build_objective(cfg, distilling=True)
    data = load_lm_data(cfg)
    acc = _new_accelerator(cpu=_use_cpu(cfg), mixed_precision=cfg.train.mixed_precision)
    teacher = resolve_lm_teacher(cfg, data, None, acc.device)
    _, selection = select_epsilon(objective.params, teacher, data.val)
    out = output or Path(f"{cfg.out}-ptloss-selection")
    write_selection(out, selection, acc)
    return selection, out


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

    from .run import _new_accelerator

    data = load_lm_data(cfg)
    acc = _new_accelerator(cpu=True)
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
    from .run import SUMMARY, _accelerator, _prepare_out, write_selection

    wall_start = time.perf_counter()
    if distilling and cfg.teacher is None:
        raise ConfigError("distill needs a 'teacher' section (teacher.run: a causal-LM run or model directory)")
    out = Path(cfg.out)
    objective = build_objective(cfg, distilling)
    data = load_lm_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_causal_lm(cfg.model.name, cfg.model.kwargs, data.vocab_size, cfg.data.block_size)
    student_vocab = vocab_size(model)
    if data.vocab_size > student_vocab:
        raise ConfigError(f"the tokenizer has {data.vocab_size} tokens but the model's vocabulary only {student_vocab}")
    acc = _accelerator(cfg, out)
    teacher = None
    if distilling and objective.needs_teacher:  # before touching `out`: a bad teacher leaves nothing behind
        teacher = resolve_lm_teacher(cfg, data, student_vocab, acc.device)
    _prepare_out(out, resume, overwrite, acc)
    if acc.is_main_process:
        atomic_write_text(out / "config.yaml", dump_config(cfg))
    if objective.needs_selection:
        objective.epsilon, selection = select_epsilon(objective.params, teacher, data.val)
        write_selection(out, selection, acc)
    result = _fit_lm(model, data, objective, teacher, cfg, acc, out, callbacks, resume)
    summary = {
        "name": cfg.name,
        "complete": True,
        "task": "causal_lm",
        "method": objective.describe(),
        "model": type(model).__name__,
        "teacher": None if teacher is None else teacher.description,
        "test_accuracy": result["test"]["accuracy"],
        **result,
        "wall_seconds": time.perf_counter() - wall_start,
        "parameters": count_parameters(model),
        "world_size": acc.num_processes,
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
        atomic_write_json(out / SUMMARY, summary)
    if acc.trackers:
        acc.end_training()
    return summary


def _versions() -> dict[str, str]:
    import transformers

    return {
        "kdlab": kdlab.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _fit_lm(
    model, data: TextSplits, objective: LMObjective, teacher, cfg: RunConfig, acc: Accelerator, out, callbacks, resume
):
    """The training loop over token blocks: gradient accumulation normalised by the window's target tokens.

    Checkpoints (``checkpoints/``, as for images) after every epoch and every ``train.checkpoint_every_steps``
    optimizer steps; ``resume`` continues from the latest one: same weights, optimizer, schedule, RNG and batches."""
    tc = cfg.train
    set_seed(cfg.seed)
    world, rank = acc.num_processes, acc.process_index
    if tc.batch_size % world:
        raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the {world} processes")
    micro_steps = batches.steps_per_epoch(len(data.train), tc.batch_size)
    if micro_steps == 0:
        raise ConfigError(f"train.batch_size={tc.batch_size} exceeds the {len(data.train)} training blocks")
    windows = [min(tc.grad_accum, micro_steps - s) for s in range(0, micro_steps, tc.grad_accum)]
    net = acc.prepare(HiddenStates(model))
    raw = acc.unwrap_model(net)
    optimizer = build_optimizer(raw, tc.optimizer)
    scheduler = build_scheduler(optimizer, len(windows), tc.epochs, tc.scheduler)
    autocast = acc.autocast if acc.mixed_precision != "no" else contextlib.nullcontext
    targets_per_block = data.train.shape[1] - 1
    eval_blocks = max(1, min(tc.eval_batch_size, EVAL_LOGITS // (targets_per_block * vocab_size(model))))
    checkpoints = out / "checkpoints"
    position = Position(0, 0, 0, 0)
    resume_from = latest_checkpoint(checkpoints) if resume else None
    if resume_from is not None:
        position = load_checkpoint(resume_from, raw, optimizer, scheduler)
    log = MetricsLog(out / "metrics.jsonl", acc, position.metrics_offset if resume_from else None)
    global_step, tokens, history = position.global_step, 0, []
    start_time = time.perf_counter()
    val: dict[str, float] = {}
    with _progress(tc.progress and acc.is_main_process) as progress:
        done = position.epoch * micro_steps + position.step_in_epoch
        task = progress.add_task(objective.name, total=tc.epochs * micro_steps, completed=done, info="")
        for epoch in range(position.epoch, tc.epochs):
            net.train()
            permutation = batches.epoch_permutation(len(data.train), cfg.seed, epoch)
            sums: dict[str, float] = {}
            counted = 0  # micro-batches of this epoch trained in this call (a resumed epoch starts later)
            epoch_start = time.perf_counter()
            first = position.step_in_epoch if epoch == position.epoch else 0
            for step in range(first, micro_steps):
                window = windows[step // tc.grad_accum]
                sync = (step + 1) % tc.grad_accum == 0 or step == micro_steps - 1
                index = batches.batch_indices(permutation, step, tc.batch_size, rank, world).to(acc.device)
                ids = data.train[index.cpu()].to(acc.device)
                t_input = teacher.train_input(index, ids) if objective.needs_teacher else None
                num_items = window * tc.batch_size * targets_per_block  # target tokens of the whole window
                with contextlib.nullcontext() if sync else acc.no_sync(net):
                    with autocast():
                        hidden = net(ids)[:, :-1]
                    terms = objective(hidden, raw.head_weight, t_input, ids[:, 1:], num_items)
                    loss = sum(terms.values()) * world  # DDP averages gradients over processes
                    if not terms_are_finite(
                        terms, acc, tc.nan_policy, f"epoch {epoch + 1}, step {step + 1} (optimizer step {global_step})"
                    ):
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    loss.backward()
                for name, value in terms.items():  # per-token mean of this micro-batch
                    sums[name] = sums.get(name, 0.0) + float(value.detach()) * window
                counted += 1
                tokens += ids.shape[0] * targets_per_block * world
                if sync:
                    if tc.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(raw.parameters(), tc.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    global_step += 1
                    if global_step % tc.log_every_steps == 0:
                        record = {"step": global_step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0]}
                        log.log(
                            {**record, **{f"train/{k}": float(v.detach()) * window for k, v in terms.items()}},
                            global_step,
                        )
                    if tc.checkpoint_every_steps and global_step % tc.checkpoint_every_steps == 0:
                        _checkpoint(
                            acc,
                            checkpoints,
                            raw,
                            optimizer,
                            scheduler,
                            Position(epoch, step + 1, global_step, log.offset()),
                        )
                    for callback in callbacks or []:
                        callback(global_step, {k: float(v.detach()) for k, v in terms.items()})
                progress.update(
                    task, advance=1, info=f"epoch {epoch + 1}/{tc.epochs} loss {float(loss.detach()) * window:.4f}"
                )
            val = evaluate_lm(raw, data.val, teacher, "val", eval_blocks)
            record = {
                "epoch": epoch + 1,
                "step": global_step,
                "lr": scheduler.get_last_lr()[0],
                **{f"train/{k}": v / max(counted, 1) for k, v in sums.items()},
                **{f"val/{k}": v for k, v in val.items()},
                "epoch_seconds": time.perf_counter() - epoch_start,
            }
            log.log(record, global_step)
            history.append(record)
            progress.update(task, info=f"epoch {epoch + 1}/{tc.epochs} val ppl {val['perplexity']:.2f}")
            _checkpoint(acc, checkpoints, raw, optimizer, scheduler, Position(epoch + 1, 0, global_step, log.offset()))
    train_seconds = time.perf_counter() - start_time
    if not history:  # nothing trained in this call (a finished run resumed)
        val = evaluate_lm(raw, data.val, teacher, "val", eval_blocks)
    test = evaluate_lm(raw, data.test, teacher, "test", eval_blocks)
    if acc.is_main_process:
        save_pretrained(raw.model, out)
    acc.wait_for_everyone()
    return {
        "val": val,
        "test": test,
        "epochs": tc.epochs,
        "optimizer_steps": global_step,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens / max(train_seconds, 1e-9),
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


# ---- kdlab cache-logits ----


@torch.no_grad()
def cache_logits_lm(cfg: RunConfig) -> Path:
    """Top-k teacher logits (k = cache.topk, default 64) of every target token of every split, one cache each."""
    from .run import _new_accelerator, _use_cpu

    data = load_lm_data(cfg)
    directory = teacher_directory(cfg)
    k = cfg.cache.topk or 64
    acc = _new_accelerator(cpu=_use_cpu(cfg), mixed_precision=cfg.train.mixed_precision)
    teacher = LiveTeacher(directory, acc.device)
    vocab = vocab_size(teacher.net.model)
    if k > vocab:
        raise ConfigError(f"cache.topk={k} exceeds the teacher's vocabulary of {vocab}")
    if data.vocab_size > vocab:
        raise ConfigError(f"the tokenizer has {data.vocab_size} tokens but the teacher's vocabulary only {vocab}")
    s = default_tail_samples(k, vocab) if cfg.cache.tail_samples is None else cfg.cache.tail_samples
    target = cache_directory(cfg, directory, data, k)
    prints = cache_fingerprints(data, directory)
    batch = max(1, EVAL_LOGITS // ((cfg.data.block_size - 1) * vocab))
    tmp = target.with_name(f".{target.name}.build")
    if not acc.is_main_process:  # one writer; the others wait for the finished directory
        acc.wait_for_everyone()
        return target
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _progress(cfg.train.progress) as progress:
            for split in SPLITS:
                blocks = data.split(split)
                task = progress.add_task(
                    f"cache {split}", total=-(-len(blocks) // batch), info=f"top-{k}, {s} tail samples"
                )
                draws = torch.Generator().manual_seed(SPLITS.index(split))  # the same cache from the same teacher
                rows = _teacher_rows(teacher, blocks.split(batch), k, s, draws, partial(progress.advance, task))
                write_sparse_cache(tmp / split, rows, vocab_size=vocab, fingerprint=prints[split])
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    return target


def _teacher_rows(
    teacher: LiveTeacher,
    batches_of_blocks: Iterable[Tensor],
    k: int,
    s: int,
    draws: torch.Generator,
    advance: Callable[[], None],
) -> Iterator[SparseTeacher]:
    """Top-k logits (+ s tail samples) of every target token, one teacher call per batch of blocks."""
    device = teacher.net.head_weight.device
    for blocks in batches_of_blocks:
        logits = teacher.logits(blocks.to(device)).cpu()
        yield sparse_teacher_from_logits(logits, k, tail_samples=s, generator=draws)
        advance()


def describe_cache(path: Path) -> str:
    """One line: k, token rows and bytes per token of a causal-LM cache directory."""
    caches = [SparseLogitCache(path / split) for split in SPLITS]
    rows = sum(len(c) for c in caches)
    size = sum(c.bytes_per_token * len(c) for c in caches)
    payload = sum(c.payload_bytes_per_token * len(c) for c in caches)
    tail = f" + {caches[0].stored_tail_samples} tail samples" if caches[0].stored_tail_samples else ""
    return (
        f"top-{caches[0].k} of {caches[0].vocab_size}{tail} per token, {rows:,} tokens, "
        f"{size / rows:.1f} bytes/token on disk ({payload / rows:.1f} of tensor data)"
    )
