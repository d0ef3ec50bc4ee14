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
from typing import Any, Literal

import torch
from accelerate import Accelerator
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from kdlab.config import RunConfig, dump_config
from kdlab.data.text import TextSplits, load_text
from kdlab.engine.loop import run_loop
from kdlab.engine.rundir import (
    new_accelerator,
    prepare_out,
    run_accelerator,
    use_cpu,
    versions,
    write_selection,
    write_summary,
)
from kdlab.errors import ConfigError
from kdlab.io import atomic_write_text
from kdlab.losses import fused_linear_distill
from kdlab.losses.sparse_teacher import SparseTeacher
from kdlab.methods import Method, Outputs, StepState
from kdlab.models import count_parameters
from kdlab.models.hf import HiddenStates, build_causal_lm, load_pretrained, vocab_size
from kdlab.teacher.lm import (
    SPLITS,
    resolve_lm_teacher,
)
from kdlab.teacher.logit_cache import CacheError

from .base import Task, register

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


class LMObjective(Method):
    """The training loss of one step, from hidden states, head weight, teacher and the next-token targets."""

    tasks = ("causal_lm",)

    def __init__(self, name: str, params: LMMethodParams, epsilon: Tensor | None = None) -> None:
        super().__init__(params, 0)
        self.name = name  # type: ignore[misc]
        self.params: LMMethodParams = params
        self.epsilon = epsilon

    def compute(
        self, batch: dict[str, Any], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        given = None
        if teacher is not None:
            given = teacher.sparse if teacher.sparse is not None else (teacher.hidden, teacher.head_weight)
        return self(student.hidden, student.head_weight, given, batch["targets"], batch["num_items"])

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
    objective = build_objective(cfg, distilling=True)
    data = load_lm_data(cfg)
    acc = new_accelerator(cpu=use_cpu(cfg.train), mixed_precision=cfg.train.mixed_precision)
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
    objective = build_objective(cfg, distilling)
    data = load_lm_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_causal_lm(cfg.model.name, cfg.model.kwargs, data.vocab_size, cfg.data.block_size)
    student_vocab = vocab_size(model)
    if data.vocab_size > student_vocab:
        raise ConfigError(f"the tokenizer has {data.vocab_size} tokens but the model's vocabulary only {student_vocab}")
    acc = run_accelerator(cfg.train, cfg.tracking, out)
    teacher = None
    if distilling and objective.needs_teacher:  # before touching `out`: a bad teacher leaves nothing behind
        teacher = resolve_lm_teacher(cfg, data, student_vocab, acc.device)
    prepare_out(out, resume, overwrite, acc)
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

    def __init__(self, model, data: TextSplits, objective: LMObjective, teacher, cfg: RunConfig, acc: Accelerator):
        self.student = HiddenStates(model)
        self.label, self.rows, self.data, self.method = objective.name, len(data.train), data, objective
        self.teacher, self.acc, self.batch_size = teacher, acc, cfg.train.batch_size
        self.targets_per_block = data.train.shape[1] - 1
        limit = EVAL_LOGITS // (self.targets_per_block * vocab_size(model))
        self.eval_blocks = max(1, min(cfg.train.eval_batch_size, limit))

    def batch(self, index: Tensor, epoch: int, step: int, window: int) -> dict[str, Any]:
        ids = self.data.train[index.cpu()].to(self.acc.device)
        num_items = window * self.batch_size * self.targets_per_block  # target tokens of the whole window
        return {"ids": ids, "index": index, "targets": ids[:, 1:], "num_items": num_items}

    def forward(self, model, batch: dict[str, Any]) -> tuple[Outputs, Outputs | None]:
        teacher = None
        if self.method.needs_teacher:
            with torch.autocast(self.acc.device.type, enabled=False):  # the teacher keeps its own precision
                given = self.teacher.train_input(batch["index"], batch["ids"])
            teacher = (
                Outputs(sparse=given)
                if isinstance(given, SparseTeacher)
                else Outputs(hidden=given[0], head_weight=given[1])
            )
        hidden = model(batch["ids"])[:, :-1]
        return Outputs(hidden=hidden, head_weight=self.student.head_weight), teacher

    def objective(self, terms: dict[str, Tensor], window: int) -> tuple[Tensor, float]:
        return sum(terms.values()) * self.acc.num_processes, float(window)  # type: ignore[return-value]

    def count(self, batch: dict[str, Any]) -> int:
        return batch["ids"].shape[0] * self.targets_per_block * self.acc.num_processes

    def evaluate(self, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
        blocks = {"val": self.data.val, "test": self.data.test}
        return {
            s: evaluate_lm(self.student, blocks[s], self.teacher, s, self.eval_blocks) for s in splits if s in blocks
        }

    def describe_epoch(self, evaluations: dict[str, dict[str, float]]) -> str:
        return f"val ppl {evaluations['val']['perplexity']:.2f}"


def _fit_lm(
    model, data: TextSplits, objective: LMObjective, teacher, cfg: RunConfig, acc: Accelerator, out, callbacks, resume
):
    """The one loop over token blocks; checkpoints (``checkpoints/``, as for images) after every epoch and every
    ``train.checkpoint_every_steps`` optimizer steps; ``resume`` continues from the latest one."""
    step = LMStep(model, data, objective, teacher, cfg, acc)
    result, trainable = run_loop(
        step, objective, cfg.train, accelerator=acc, out_dir=out, seed=cfg.seed, resume=resume, callbacks=callbacks
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
        build_objective(cfg, distilling=cfg.teacher is not None)

    def summary_line(self, summary):
        parts = []
        for split in ("val", "test"):
            m = summary[split]
            agree = f", agreement {m['agreement']:.4f}" if "agreement" in m else ""
            parts.append(f"{split} perplexity {m['perplexity']:.3f}, token accuracy {m['accuracy']:.4f}{agree}")
        return "; ".join(parts) + f" ({summary['tokens_per_second']:.0f} tokens/s)"
