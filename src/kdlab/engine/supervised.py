"""Tensors in, classes out: the step of the classification task (``ClassifyStep``); ``engine.fit`` runs it.

Whole splits live as tensors on the device (see ``batches``); the teacher is frozen, moved to the device and run
under ``torch.inference_mode`` (never wrapped, never checkpointed), or replaced by cached logits. Features a
method asks for (``Requires``) are taken by forward hooks on named submodules (``kdlab.models.tap``). A
micro-batch's loss is the mean over its rows, weighted by its rows' share of the accumulation window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from kdlab.config import AugmentConfig, TrainConfig
from kdlab.errors import ConfigError
from kdlab.eval import classification_metrics
from kdlab.io import atomic_write_json
from kdlab.methods import Method, Outputs, SetupContext
from kdlab.models.tap import FeatureTap

from . import batches
from .predict import predict
from .speed import FastTeacher, fast_student


@dataclass
class Splits:
    """Whole data splits as tensors (features, int64 labels) for your own data; ``kdlab.data.DataSplits``
    and anything else with these fields works too."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int


@dataclass
class FitResult:
    val: dict[str, float]
    test: dict[str, float]
    epochs: int
    train_seconds: float
    samples_per_second: float
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train: dict[str, float] = field(default_factory=dict)  # the last epoch's metrics on the train_eval rows


def _augment(x: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    from kdlab.data import augment, gaussian_noise, mixup

    if cfg.crop_padding or cfg.hflip:
        x = augment(x, crop_padding=cfg.crop_padding, hflip=cfg.hflip, generator=generator)
    x = mixup(x, cfg.mixup_alpha, generator)
    return gaussian_noise(x, cfg.noise_std, generator)


def train_eval_rows(n: int, size: int, seed: int) -> Tensor:
    """The fixed training rows whose fidelity is logged every epoch: a seeded sample of ``size``, sorted."""
    if size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def tap(model: nn.Module, names: tuple[str, ...], detach: bool) -> FeatureTap | None:
    """Forward hooks on ``names`` (a teacher behind the speed switches is tapped on its own modules); a wrong
    name is one ``ConfigError`` line listing the submodules that exist."""
    if not names:
        return None
    inner = model.teacher if isinstance(model, FastTeacher) else model
    transform = getattr(inner, "feature_transform", None)  # a nuisance teacher's noise (kdlab.teacher.nuisance)
    try:
        return FeatureTap(inner, names, detach=detach, transform=transform)
    except ValueError as err:
        raise ConfigError(f"config: method layer names: {err}") from None


@torch.inference_mode()
def teacher_features(
    teacher: nn.Module, x: Tensor, names: tuple[str, ...], batch: int, dtype: torch.dtype = torch.float16
) -> dict[str, Tensor]:
    """The outputs of the teacher's submodules ``names`` over a whole split, on the CPU in ``dtype`` (float16 for a
    logit cache; float32 for a method's setup)."""
    device = next(teacher.parameters()).device
    probe = tap(teacher.eval(), names, detach=True)
    assert probe is not None
    pieces: dict[str, list[Tensor]] = {n: [] for n in names}
    with probe:
        for start in range(0, len(x), batch):
            teacher(x[start : start + batch].to(device))
            for n in names:
                pieces[n].append(probe.features[n].to(dtype).cpu())
    return {n: torch.cat(parts) for n, parts in pieces.items()}


class ClassifyStep:
    """The classification task's side of the loop (``kdlab.engine.loop.TaskStep``)."""

    def __init__(
        self,
        student: nn.Module,
        data: Splits,
        method: Method,
        cfg: TrainConfig,
        acc: Accelerator,
        *,
        seed: int,
        teacher: nn.Module | None,
        cached_logits: dict[str, Tensor] | None,
        augment_cfg: AugmentConfig,
        out_dir: Path,
        fingerprints: dict[str, str] | None = None,
    ) -> None:
        self.fingerprints = dict(fingerprints or {})
        self.label, self.rows, self.method, self.cfg, self.acc = method.name, len(data.y_train), method, cfg, acc
        self.num_classes, self.seed, self.augment_cfg, self.out_dir = data.num_classes, seed, augment_cfg, out_dir
        self.student = fast_student(student, channels_last=cfg.channels_last)
        self.teacher = None if teacher is None else teacher.to(acc.device).eval().requires_grad_(False)
        self.data = {k: getattr(data, k).to(acc.device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test")}
        self.data["y_test"] = data.y_test.to(acc.device)
        self.lengths = getattr(data, "lengths", None)  # rows of varying length (text): for train.group_by_length
        cached = dict(cached_logits or {})
        features = cached.pop("features", {})  # teacher features from the cache: {split: {name: tensor}}
        self.cached = {k: v.to(acc.device) for k, v in cached.items()}
        self.cached_features = {s: {n: t.to(acc.device) for n, t in f.items()} for s, f in features.items()}
        if augment_cfg.enabled and "train" in self.cached:
            raise ConfigError("cached teacher logits cannot follow augmented training inputs; pass a live teacher")
        needs = method.requires()
        self.needs_teacher = method.needs_teacher
        self.student_tap = tap(self.student, needs.student_features, detach=False)
        self.teacher_tap = None
        if needs.teacher_features and not set(needs.teacher_features) <= set(self.cached_features.get("train", {})):
            if self.teacher is None:
                raise ConfigError(
                    f"method {method.name!r} needs teacher features {list(needs.teacher_features)}: a live teacher, "
                    "or a cache made with them (cache.features)"
                )
            self.teacher_tap = tap(self.teacher, needs.teacher_features, detach=True)
        fit_rows = train_eval_rows(self.rows, cfg.train_eval_size, seed).to(acc.device)
        self.teacher_split_logits: dict[str, Tensor | None] = {}
        if len(fit_rows):  # fidelity on (un-augmented) training rows too: the train/test fidelity gap per epoch
            self.data["x_train_eval"] = self.data["x_train"][fit_rows]
            self.data["y_train_eval"] = self.data["y_train"][fit_rows]
            if "train" in self.cached:
                self.cached["train_eval"] = self.cached["train"][fit_rows]
        for split in ("val", "train_eval"):  # before training, so train_seconds counts training alone
            self.split_teacher_logits(split)

    # ---- before training ----

    def split_teacher_logits(self, split: str) -> Tensor | None:
        """The teacher's logits on a whole split (cached, or one pass of the live teacher, then kept)."""
        if not self.needs_teacher or f"x_{split}" not in self.data:
            return None
        if split not in self.teacher_split_logits:
            if split in self.cached:
                logits = self.cached[split]
            elif self.teacher is None:
                logits = None
            else:
                logits = predict(
                    self.teacher, self.data[f"x_{split}"], self.num_classes, self.cfg.eval_batch_size, self.acc
                )
            self.teacher_split_logits[split] = logits
        return self.teacher_split_logits[split]

    @torch.no_grad()
    def feature_shapes(self, side: str, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        cached = self.cached_features.get("train", {})
        if side == "teacher" and set(names) <= set(cached):
            return {name: tuple(cached[name].shape[1:]) for name in names}
        model = self.student if side == "student" else self.teacher
        if model is None:
            raise ConfigError(f"method {self.method.name!r} needs teacher features: a live teacher")
        probe = tap(model.to(self.acc.device), names, detach=True)
        assert probe is not None
        was_training = model.training
        model.eval()
        with probe:
            model(self.data["x_train"][:2])
        model.train(was_training)
        return {name: tuple(probe.features[name].shape[1:]) for name in names}

    def split_teacher_features(self, split: str, names: tuple[str, ...], rows: int | None = None) -> dict[str, Tensor]:
        """The teacher's named features over a whole (un-augmented) split (or its first ``rows``), float32 on the
        CPU: from the cache when it holds them, else one pass of the live teacher."""
        cached = self.cached_features.get(split, {})
        if set(names) <= set(cached):
            return {n: cached[n][:rows].float().cpu() for n in names}
        if self.teacher is None:
            raise ConfigError(
                f"method {self.method.name!r} needs teacher features {list(names)} on {split}: a live teacher, or a "
                "cache made with them (cache.features)"
            )
        x = self.data[f"x_{split}"][:rows]
        return teacher_features(self.teacher, x, names, self.cfg.eval_batch_size, torch.float32)

    def write_file(self, relative: str, writer: Callable[[Path], None]) -> None:
        if self.acc.is_main_process:
            writer(self.out_dir / relative)
        self.acc.wait_for_everyone()

    def write_report(self, stem: str, payload: dict[str, Any], plot: Callable[[Path], None] | None) -> None:
        if self.acc.is_main_process:
            atomic_write_json(self.out_dir / f"{stem}.json", payload)
            if plot is not None:
                plot(self.out_dir / f"{stem}.png")
        self.acc.wait_for_everyone()

    def setup_context(self) -> SetupContext:
        def teacher_logits(split: str, rows: int | None = None) -> Tensor:
            logits = self.split_teacher_logits(split)
            if logits is None:
                raise ConfigError(f"method {self.method.name!r} needs the teacher's logits on {split}")
            if len(logits) == 0:
                raise ConfigError(
                    f"method {self.method.name!r} selects on the {split} split and this run has none "
                    "(data.val_fraction: 0 without a validation file): give it one or fix the method's choice"
                )
            return logits[:rows]

        return SetupContext(
            num_classes=self.num_classes,
            device=self.acc.device,
            out_dir=self.out_dir,
            teacher_logits=teacher_logits,
            labels=lambda split, rows=None: self.data[f"y_{split}"][:rows],
            feature_shapes=self.feature_shapes,
            write_report=self.write_report,
            teacher_features=self.split_teacher_features,
            fingerprints=self.fingerprints,
            write_file=self.write_file,
        )

    # ---- one step ----

    def batch(self, index: Tensor, epoch: int, step: int, window_rows: int) -> dict[str, Tensor]:
        x, y = self.data["x_train"][index], self.data["y_train"][index]
        if self.augment_cfg.enabled:
            rank = self.acc.process_index
            x = _augment(x, self.augment_cfg, batches.batch_generator(self.seed, epoch, step, rank))
        return {"x": x, "y": y, "index": index}

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Outputs, Outputs | None]:
        teacher = self._teacher_outputs(batch) if self.needs_teacher else None
        logits = model(batch["x"])
        features = dict(self.student_tap.features) if self.student_tap is not None else {}
        return Outputs(logits=logits.float(), features=features), teacher

    def _teacher_outputs(self, batch: dict[str, Tensor]) -> Outputs:
        if "train" in self.cached and self.teacher_tap is None:
            index = batch["index"]
            features = {n: t[index] for n, t in self.cached_features.get("train", {}).items()}
            return Outputs(logits=self.cached["train"][index], features=features)
        if self.teacher is None:
            return Outputs()
        with torch.inference_mode():
            logits = self.teacher(batch["x"]).float()
        features = {k: v.clone() for k, v in self.teacher_tap.features.items()} if self.teacher_tap else {}
        return Outputs(logits=logits.clone(), features=features)  # normal tensors: losses may save them

    def objective(self, terms: dict[str, Tensor], batch: dict[str, Tensor], window_rows: int) -> tuple[Tensor, float]:
        """Terms are means over this process's rows: weighted by the rows' share of the window (× the world size,
        which undoes DDP's averaging), a partial batch counts per row, not per batch."""
        share = len(batch["y"]) * self.acc.num_processes / window_rows
        return sum(terms.values()) * share, 1.0  # type: ignore[return-value]

    def count(self, batch: dict[str, Tensor]) -> int:
        return len(batch["y"]) * self.acc.num_processes

    # ---- evaluation ----

    def evaluate(self, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
        out = {}
        for split in splits:
            if f"x_{split}" not in self.data:
                out[split] = {}
                continue
            x, y = self.data[f"x_{split}"], self.data[f"y_{split}"]
            if len(y) == 0:  # no validation split (data.val_fraction: 0): nothing to measure, not NaN
                out[split] = {}
                continue
            logits = predict(self.student, x, self.num_classes, self.cfg.eval_batch_size, self.acc)
            out[split] = classification_metrics(logits, y, self.split_teacher_logits(split))
        return out

    def describe_epoch(self, evaluations: dict[str, dict[str, float]]) -> str:
        val = evaluations.get("val", {})
        return f"val acc {val['accuracy']:.4f}" if "accuracy" in val else "no validation split"
