"""``task: classify``: tensors → classes (images, tabular rows); the default task.

Data from ``kdlab.data`` (digits, IDX, CIFAR, npz, CSV, ...), models from the zoo, a live teacher or its logit
cache (``kdlab.teacher``), the engine's in-memory tensor step (``kdlab.engine.supervised``) and one loop.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab import models
from kdlab.config import AugmentConfig, RunConfig
from kdlab.data.preprocess import PREPROCESS_FILE, Preprocess, load_preprocess
from kdlab.engine.fit import fit_summary, train_splits
from kdlab.engine.pid_log import pid_pair
from kdlab.engine.predict import predict
from kdlab.engine.rundir import (
    new_accelerator,
    prepare_out,
    run_accelerator,
    start_trackers,
    use_cpu,
    write_config,
    write_report,
    write_summary,
)
from kdlab.engine.supervised import teacher_features
from kdlab.errors import CacheError, ConfigError
from kdlab.methods import SetupContext
from kdlab.methods import build as build_method
from kdlab.teacher.logit_cache import cached_feature_names, read_cache, read_cached_features, write_cache
from kdlab.teacher.source import load_teacher, resolve_teacher

from .base import Task, register
from .classify_checks import (
    TEACHER_CHECK_ROWS,
    chance_level,
    check_outputs,
    check_teacher,
    guarded_fast_teacher,
    recorded_accuracy,
    run_health,
)


class ClassifyInputs:
    """What the classification machinery reads for one task: its data, its student, what a run keeps of its inputs.

    ``task: classify`` reads tensors (``kdlab.data``); ``text_classify`` plugs in tokenised text and Hugging Face
    models (``kdlab.tasks.text_classify``) and reuses everything else here: the teacher, its cache and checks,
    the engine's step, evaluation, ``select-ptloss``."""

    def load_data(self, cfg: RunConfig, stats: Preprocess | None = None):
        """The config's data; ``stats``: a run's saved preprocessing instead of statistics fitted again."""
        from kdlab.data import load_dataset

        d = cfg.data
        return load_dataset(
            d.name,
            path=d.path,
            val_fraction=d.val_fraction,
            seed=split_seed(cfg.seed, d.split_seed),
            download=d.download,
            label_column=d.label_column,
            normalize=d.standardize,
            val_path=d.val_path,
            test_path=d.test_path,
            image_size=d.image_size,
            stats=stats,
        )

    def build_student(self, cfg: RunConfig, data) -> nn.Module:
        return models.create(cfg.model.name, data.num_classes, tuple(data.in_shape), **cfg.model.kwargs)

    def augment(self, cfg: RunConfig) -> AugmentConfig:
        return cfg.data.augment

    def save_inputs(self, out: Path, data) -> None:
        data.preprocess.save(out / PREPROCESS_FILE)

    def data_summary(self, cfg: RunConfig, data) -> dict[str, Any]:
        return {
            "name": data.name,
            "path": None if cfg.data.path is None else str(Path(cfg.data.path).absolute()),
            "fingerprint": data.fingerprint,
            "standardize": data.standardized,
            "preprocess_sha256": data.preprocess.digest(),
            "class_names": list(data.class_names),
            "train": len(data.y_train),
            "val": len(data.y_val),
            "test": len(data.y_test),
        }


INPUTS: dict[str, ClassifyInputs] = {"classify": ClassifyInputs()}  # task name -> its inputs


def inputs_of(cfg: RunConfig) -> ClassifyInputs:
    return INPUTS[cfg.task]


def load_data(cfg: RunConfig, stats: Preprocess | None = None):
    """The config's data (its task's reader); ``stats``: a run's saved preprocessing."""
    return inputs_of(cfg).load_data(cfg, stats)


def run_preprocess(run: Path) -> Preprocess | None:
    """A run's saved preprocessing (None for runs made before it was saved: their statistics are fitted again)."""
    path = run / PREPROCESS_FILE
    return load_preprocess(path) if path.is_file() else None


def split_seed(seed: int, data_split_seed: int | None) -> int:
    return seed if data_split_seed is None else data_split_seed


def _warn_if_split_overlaps(cfg: RunConfig, source) -> None:
    """A teacher (or an ensemble member) trained on another split of the same data has seen this run's validation
    rows: say so."""
    for member in source.members:
        _warn_if_member_overlaps(cfg, member)


def _warn_if_member_overlaps(cfg: RunConfig, source) -> None:
    raw = source.run_config
    if raw is None:  # a teacher from weights: its split is unknown
        return
    theirs_val, ours_val = (raw.get("data") or {}).get("val_path"), getattr(cfg.data, "val_path", None)
    if ours_val and theirs_val and Path(theirs_val).absolute() == Path(ours_val).absolute():
        return  # the same validation file: nothing was carved
    data = raw.get("data") or {}
    theirs = split_seed(raw.get("seed", 0), data.get("split_seed"))
    ours = split_seed(cfg.seed, cfg.data.split_seed)
    theirs_path, ours_path = data.get("path"), cfg.data.path
    same_path = theirs_path == ours_path or (
        theirs_path is not None and ours_path is not None and Path(theirs_path).absolute() == Path(ours_path).absolute()
    )
    same_data = data.get("name") == cfg.data.name and same_path
    if same_data and (theirs != ours or data.get("val_fraction") != cfg.data.val_fraction):
        warnings.warn(
            f"the teacher ({source.directory}) was trained on the split of seed {theirs}, this run uses seed {ours}: "
            "the teacher trained on most of this run's validation rows, so its validation outputs (and a PTLoss "
            f"epsilon selected on them) are optimistic; set data.split_seed: {theirs} to share its split",
            stacklevel=2,
        )


def build_student(cfg: RunConfig, data) -> nn.Module:
    return inputs_of(cfg).build_student(cfg, data)


def teacher_and_cache(
    cfg: RunConfig, data, features: tuple[str, ...] = ()
) -> tuple[nn.Module | None, dict | None, str]:
    """The live teacher, or cached logits when a valid cache exists and augmentation is off — and, when the method
    reads teacher ``features``, a cache that holds them (``cache.features``; else the live teacher). Cached
    features come back in the logits dict under ``"features"``: ``{split: {name: tensor}}``."""
    source = resolve_teacher(cfg.teacher)
    _warn_if_split_overlaps(cfg, source)
    cache_file = _cache_file(cfg, source, data)
    augmenting = inputs_of(cfg).augment(cfg).enabled
    if cfg.cache.use == "require":
        if augmenting:
            raise ConfigError("cache.use=require with data augmentation: cached logits cannot follow augmented inputs")
        if not cache_file.is_file():
            raise CacheError(f"no logit cache at {cache_file}; run `kdlab cache-logits CONFIG` first")
    usable = cfg.cache.use != "never" and not augmenting and cache_file.is_file()
    if usable and features and cfg.cache.use != "require":  # auto: a cache without these features is not used
        usable = set(features) <= set(cached_feature_names(cache_file))
    if usable:
        cached: dict = read_cache(cache_file, data.fingerprint, source.fingerprint(), cfg.cache.topk)
        if features:
            cached["features"] = read_cached_features(cache_file, features)
        return None, cached, f"cached logits {cache_file}"
    teacher = load_teacher(source, data.num_classes, tuple(data.in_shape), data)
    return teacher, None, source.describe()


def run_fingerprints(cfg: RunConfig, data) -> dict[str, str]:
    """What a method's artefact (ReAugKD's knowledge base) is tied to: the data's and the teacher's fingerprints."""
    teacher = resolve_teacher(cfg.teacher).fingerprint() if cfg.teacher is not None else ""
    return {"data": data.fingerprint, "teacher": teacher}


def _cache_file(cfg: RunConfig, source, data) -> Path:
    if cfg.cache.path:
        return Path(cfg.cache.path)
    k = f"-top{cfg.cache.topk}" if cfg.cache.topk else ""  # a cache per k: another k never reads this one
    return source.directory / f"logits-{data.fingerprint[:16]}{source.tag}{k}.safetensors"


def run_classify(
    cfg: RunConfig, *, distilling: bool, resume: bool, overwrite: bool, callbacks=None, student: nn.Module | None = None
) -> dict[str, Any]:
    """One training run; ``student``: start from this model (e.g. a pruned one) instead of a fresh ``cfg.model``."""
    wall_start = time.perf_counter()
    out = Path(cfg.out)
    if distilling and cfg.teacher is None:
        raise ConfigError("distill needs a 'teacher' section (teacher.run: DIR, or teacher.model + teacher.weights)")
    method_cfg = cfg.method if distilling else cfg.method.model_copy(update={"name": "ce"})
    if not distilling and cfg.method.name != "ce":
        raise ConfigError(f"train uses plain cross-entropy; method {cfg.method.name!r} needs `kdlab distill`")
    augment = inputs_of(cfg).augment(cfg)
    if not distilling and augment.distill_only:
        raise ConfigError("data.augment.mixup_alpha/noise_std change distillation inputs only: use `kdlab distill`")
    data = load_data(cfg)
    if cfg.train.group_by_length and getattr(data, "lengths", None) is None:
        raise ConfigError("train.group_by_length is for inputs of varying length (task: text_classify)")
    method = build_method(method_cfg.name, method_cfg.params(), data.num_classes)
    pid = pid_pair(cfg.train, method, cfg.teacher is not None, len(data.y_val))  # train.pid_every: against it
    if student is not None:
        _check_describes(cfg, data, student)
    acc = run_accelerator(cfg.train, cfg.tracking, out)
    teacher, cached, teacher_desc = (None, None, None)
    if (distilling and method.needs_teacher) or pid:  # before touching `out`: a bad teacher leaves nothing behind
        features = tuple(dict.fromkeys((*method.requires().teacher_features, *(pid[1:] if pid else ()))))
        teacher, cached, teacher_desc = teacher_and_cache(cfg, data, features)
    fast_report = None
    if teacher is not None:
        check_outputs(teacher, data, f"teacher {teacher_desc}")
        temperature = float(getattr(method.params, "temperature", 1.0))
        teacher, fast_report = guarded_fast_teacher(cfg.teacher, data, teacher, temperature, acc)
    teacher_check, checked = (None, None)
    if teacher is not None or cached:
        teacher_check, checked = _check_teacher(cfg, data, teacher, cached, acc)
    if cached is None and checked is not None:  # the check's pass over the whole validation split is the one the
        cached = {"val": checked}  # step would make next (same predict call): kept instead of run twice
    torch.manual_seed(cfg.seed)
    student = build_student(cfg, data) if student is None else student
    check_outputs(student, data, f"model {cfg.model.name!r}")  # before touching `out`, as the teacher
    prepare_out(out, resume, overwrite, acc)
    if acc.is_main_process:
        write_config(out, cfg)
        inputs_of(cfg).save_inputs(out, data)
    start_trackers(acc, cfg.tracking, cfg.name, cfg.model_dump(mode="json"))
    result = train_splits(
        student,
        data,
        method,
        cfg.train,
        out_dir=out,
        seed=cfg.seed,
        teacher=teacher,
        cached_logits=cached,
        augment_cfg=augment,
        resume=resume,
        accelerator=acc,
        callbacks=callbacks,
        fingerprints=run_fingerprints(cfg, data) if distilling and method.fingerprinted else None,
    )
    health = run_health(result.history, chance_level(data.y_val, data.num_classes))
    for note in health:
        warnings.warn(note, stacklevel=2)
    warned = [teacher_check["message"]] if teacher_check and "message" in teacher_check else []
    summary = {
        "name": cfg.name,
        **fit_summary(result, method, acc, cfg.seed, data),
        "model": cfg.model.name,
        "teacher": teacher_desc,
        "teacher_check": teacher_check,
        "fast_teacher": fast_report,
        "warnings": [*warned, *health],
        "wall_seconds": time.perf_counter() - wall_start,
        "parameters": models.count_parameters(student),
        "data": inputs_of(cfg).data_summary(cfg, data),
    }
    write_summary(out, summary, acc)
    return summary


def _check_teacher(
    cfg: RunConfig, data, teacher: nn.Module | None, cached: dict | None, acc
) -> tuple[dict | None, torch.Tensor | None]:
    """The teacher's accuracy before training (``teacher.check``): on validation, or on training rows when the
    run has no validation split. Also the live teacher's logits when they cover the whole validation split."""
    if cfg.teacher is None or cfg.teacher.check == "off":
        return None, None
    split = "val" if len(data.y_val) else "train"
    rows = min(len(getattr(data, f"y_{split}")), TEACHER_CHECK_ROWS)
    whole_val = None
    if cached is not None:
        logits = cached[split][:rows]
    else:
        assert teacher is not None
        x = getattr(data, f"x_{split}")[:rows]
        logits = predict(teacher.to(acc.device), x, data.num_classes, cfg.train.eval_batch_size, acc)
        whole_val = logits if split == "val" and rows == len(data.y_val) else None
    directory = Path(cfg.teacher.run) if cfg.teacher.run is not None else None
    recorded = recorded_accuracy(cfg.teacher, directory)
    y = getattr(data, f"y_{split}")[:rows]
    report = check_teacher(logits, y, data.num_classes, split=split, recorded=recorded, mode=cfg.teacher.check)
    return report, whole_val


def _check_describes(cfg: RunConfig, data, model: nn.Module) -> None:
    """``cfg.model`` must build ``model``'s shape, or the run directory's config.yaml could not reload its weights."""
    expected = {k: tuple(v.shape) for k, v in build_student(cfg, data).state_dict().items()}
    given = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != given:
        name = next(k for k in sorted(expected.keys() | given.keys()) if expected.get(k) != given.get(k))
        raise ConfigError(
            f"the given model does not match model {cfg.model.name!r} with kwargs {cfg.model.kwargs}: {name} is "
            f"{given.get(name, 'missing')} in the model, {expected.get(name, 'missing')} in the config"
        )


def select_ptloss_classify(cfg: RunConfig, output: Path | None):
    """``kdlab select-ptloss``: the proxy-teacher selection a ptloss run with ``epsilon: auto`` would make (the
    method's own ``setup``, on the teacher's validation logits), written to ``output``."""
    params = {**cfg.method.params(), "epsilon": "auto"}
    data = load_data(cfg)
    method = build_method("ptloss", params, data.num_classes)
    acc = new_accelerator(cpu=use_cpu(cfg.train), mixed_precision=cfg.train.mixed_precision)
    teacher, cached, _ = teacher_and_cache(cfg, data)
    out = output or Path(f"{cfg.out}-ptloss-selection")

    def teacher_logits(split: str, rows: int | None = None) -> torch.Tensor:
        if cached is not None:
            return cached[split][:rows]
        x = getattr(data, f"x_{split}")[:rows]
        return predict(teacher.to(acc.device), x, data.num_classes, cfg.train.eval_batch_size, acc)

    def no_features(side: str, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        raise ConfigError("select-ptloss reads no features")

    method.setup(
        SetupContext(
            num_classes=data.num_classes,
            device=acc.device,
            out_dir=out,
            teacher_logits=teacher_logits,
            labels=lambda split, rows=None: getattr(data, f"y_{split}")[:rows],
            feature_shapes=no_features,
            write_report=lambda stem, payload, plot: write_report(out, stem, payload, plot, acc),
        )
    )
    return method.selection, out


def cache_logits_classify(cfg: RunConfig) -> Path:
    """Run the teacher once over train/val/test and store its logits next to it (or at cache.path)."""
    data = load_data(cfg)
    source = resolve_teacher(cfg.teacher)
    teacher = load_teacher(source, data.num_classes, tuple(data.in_shape), data)
    acc = new_accelerator(cpu=use_cpu(cfg.train), mixed_precision=cfg.train.mixed_precision)
    teacher = teacher.to(acc.device)
    batch = cfg.cache.batch_size or cfg.train.eval_batch_size
    splits = {
        split: predict(teacher, getattr(data, f"x_{split}"), data.num_classes, batch, acc)
        for split in ("train", "val", "test")
    }
    features = None
    if cfg.cache.features and acc.is_main_process:
        names = tuple(cfg.cache.features)
        features = {s: teacher_features(teacher, getattr(data, f"x_{s}"), names, batch) for s in splits}
    path = _cache_file(cfg, source, data)
    if acc.is_main_process:
        write_cache(path, splits, data.fingerprint, source.fingerprint(), cfg.cache.topk, features)
    acc.wait_for_everyone()
    return path


@register
class ClassifyTask(Task):
    name = "classify"

    def run(self, cfg, *, distilling, resume, overwrite, callbacks=None, student=None):
        return run_classify(
            cfg, distilling=distilling, resume=resume, overwrite=overwrite, callbacks=callbacks, student=student
        )

    def evaluate(self, run, cfg, splits, latency):
        from .classify_eval import evaluate_classify

        return evaluate_classify(run, cfg, splits, latency)

    def load_model(self, run, cfg):
        from .classify_eval import load_raw_model

        return load_raw_model(run, cfg)

    def predict_proba(self, run, cfg, raw, retrieval=True):
        from .classify_predictor import predict_proba

        return predict_proba(run, cfg, raw, retrieval)

    def cache_logits(self, cfg):
        return cache_logits_classify(cfg)

    def select_ptloss(self, cfg, output):
        return select_ptloss_classify(cfg, output)

    def check(self, cfg):
        pid_pair(cfg.train, build_method(cfg.method.name, cfg.method.params(), 2), cfg.teacher is not None)
