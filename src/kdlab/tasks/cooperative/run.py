"""The cooperative driver: train every learner alone, then rounds of deficiencies → counterfactuals → retraining,
then the baselines; write the run directory (config.yaml, metrics.jsonl, fits/, summary.json last).

One round (Livanos, Davidson & Wong, AAAI 2024; the variant of the authors' notebook, generalised to n learners
and many classes as methods.md §3 describes): with the models at the start of the round, find R(i→j) on the
evaluation pool for every ordered pair; teacher i writes a counterfactual for (a seeded sample of at most
``max_per_pair`` of) those rows, labelled with the true class; accepted ones are mapped into j's space and added
to j's virtual rows, which accumulate over rounds; then every learner is retrained from scratch on its own rows
plus its virtual rows.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.config import CooperativeConfig
from kdlab.engine.loop import progress_bar
from kdlab.engine.metrics_log import MetricsLog
from kdlab.engine.rundir import new_accelerator, prepare_out, versions, write_config, write_summary
from kdlab.errors import ConfigError

from .counterfactual import counterfactuals
from .learners import Learner, build_learner
from .pool import Pool, deficiency_sets, fill_missing, load_pool, map_features, share_rows


class Participant:
    """A learner with its training rows in the pooled space and the virtual rows it has received."""

    def __init__(self, learner: Learner, x_full: np.ndarray, y: np.ndarray) -> None:
        self.learner, self.x_full, self.y = learner, x_full, y
        self.virtual_x = np.zeros((0, len(learner.columns)))
        self.virtual_y = np.zeros(0, dtype=np.int64)

    @property
    def x_own(self) -> np.ndarray:
        return self.x_full[:, self.learner.columns]


def _participants(cfg: CooperativeConfig, pool: Pool, out: Path) -> list[Participant]:
    shared = [lc for lc in cfg.learners if lc.path is None]
    shares = share_rows(pool.y_train, [lc.class_weights for lc in shared], pool.num_classes, cfg.seed)
    shares_of = dict(zip([lc.name for lc in shared], shares, strict=True))
    mean = pool.x_train.mean(0)
    result = []
    for k, lc in enumerate(cfg.learners):
        columns = np.arange(pool.n_features) if lc.features is None else np.asarray(lc.features)
        if columns.max() >= pool.n_features or columns.min() < 0:
            raise ConfigError(f"learners[{k}].features: columns must lie in 0..{pool.n_features - 1}")
        learner = build_learner(lc, columns, pool.num_classes, cfg.seed, cfg.train, out / "fits")
        if lc.path is None:
            x_full, y = pool.x_train[shares_of[lc.name]], pool.y_train[shares_of[lc.name]]
        else:
            x_own, y = _own_file(lc.path, len(columns), pool.num_classes, lc.name)
            x_full = fill_missing(x_own, columns, pool.n_features, mean)
        if len(y) == 0:
            raise ConfigError(f"learner {lc.name!r} received no training rows; check its class_weights")
        if hasattr(learner, "val"):
            learner.val = (pool.x_eval[:, columns], pool.y_eval)
        result.append(Participant(learner, x_full, y))
    return result


def _own_file(path: str, width: int, num_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = np.asarray(npz["x"], dtype=np.float64), np.asarray(npz["y"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(f"learner {name!r}: cannot read {path} as an .npz with x and y: {err}") from None
    if x.ndim != 2 or x.shape[1] != width or len(x) != len(y) or y.min() < 0 or y.max() >= num_classes:
        raise ConfigError(f"learner {name!r}: {path} must hold x (N, {width}) and y (N,) in 0..{num_classes - 1}")
    return x, y


def _scores(learner: Learner, x_full: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, Any]:
    pred = learner.predict_proba(x_full[:, learner.columns]).argmax(1)
    per_class = [float((pred[y == c] == c).mean()) if (y == c).any() else None for c in range(num_classes)]
    return {"accuracy": float((pred == y).mean()), "per_class": per_class}


def _fit(p: Participant, stage: str, x=None, y=None, probs=None) -> None:
    x = p.x_own if x is None else x
    p.learner.fit(x, p.y if y is None else y, probs, stage)


def _round(r: int, cfg: CooperativeConfig, pool: Pool, parts: list[Participant], log, bar, task) -> list[dict]:
    """Deficiencies and counterfactuals for every ordered pair with the round's starting models."""
    cf_cfg, records = cfg.counterfactual, []
    correct = np.stack([p.learner.predict_proba(pool.x_eval[:, p.learner.columns]).argmax(1) == pool.y_eval
                        for p in parts])  # fmt: skip
    rng = np.random.default_rng([cfg.seed, r])
    for (i, j), rows in deficiency_sets(correct).items():
        teacher, student = parts[i].learner, parts[j].learner
        bar.update(task, info=f"round {r}: {teacher.name} → {student.name}")
        tried = rows if cf_cfg.max_per_pair is None or len(rows) <= cf_cfg.max_per_pair else (
            np.sort(rng.choice(rows, cf_cfg.max_per_pair, replace=False)))  # fmt: skip
        x_teacher = parts[i].x_full[:, teacher.columns]
        low, high = x_teacher.min(0), x_teacher.max(0)
        scale = np.maximum(x_teacher.std(0), 1e-6 * np.maximum(high - low, 1.0))
        start = time.perf_counter()
        found = counterfactuals(teacher, pool.x_eval[tried][:, teacher.columns], pool.y_eval[tried], cf_cfg,
                                low, high, scale, seed=cfg.seed * 1000 + r * 100 + i * 10 + j)  # fmt: skip
        seconds = time.perf_counter() - start
        source_rows = tried[found.rows]
        if cfg.fill == "original":
            fill = pool.x_eval[source_rows][:, student.columns]
        elif cfg.fill == "mean":
            fill = parts[j].x_own.mean(0)
        else:
            fill = np.zeros(len(student.columns))
        mapped = map_features(found.x, teacher.columns, student.columns, fill)
        parts[j].virtual_x = np.concatenate([parts[j].virtual_x, mapped])
        parts[j].virtual_y = np.concatenate([parts[j].virtual_y, pool.y_eval[source_rows]])
        record = {
            "round": r, "teacher": teacher.name, "student": student.name, "teacher_kind": teacher.kind,
            "deficient": len(rows), "tried": found.tried, "accepted": len(found.rows),
            "unmoved": found.unmoved, "failed": found.failed, "reached_tolerance": found.reached_tolerance,
            "success_rate": len(found.rows) / found.tried if found.tried else None, "seconds": seconds,
            "classes": np.bincount(pool.y_eval[source_rows], minlength=pool.num_classes).tolist(),
        }  # fmt: skip
        log.log({"event": "pair", **record}, step=r)
        records.append(record)
        bar.advance(task)
    return records


def run_cooperative(cfg: CooperativeConfig, *, overwrite: bool) -> dict[str, Any]:
    started = time.perf_counter()
    out = Path(cfg.out)
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    pool = load_pool(cfg.data, cfg.seed)
    parts = _participants(cfg, pool, out)  # every learner built (and checked) before anything is written
    acc = new_accelerator(cpu=True)
    prepare_out(out, resume=False, overwrite=overwrite, acc=acc)
    write_config(out, _absolute(cfg))
    log = MetricsLog(out / "metrics.jsonl", acc, None)
    n, rows = len(parts), {p.learner.name: {} for p in parts}
    pairs: list[dict] = []
    eval_acc: dict[str, float] = {}

    def measure(stage: str, p: Participant, step: int) -> None:
        score = _scores(p.learner, pool.x_test, pool.y_test, pool.num_classes)
        rows[p.learner.name][stage] = score
        extra = {"virtual_rows": len(p.virtual_y)} if stage.startswith("round") else {}
        log.log({"event": "learner", "stage": stage, "learner": p.learner.name, "test_accuracy": score["accuracy"],
                 "train_rows": len(p.y), **extra, "per_class": score["per_class"]}, step=step)  # fmt: skip

    total = n + cfg.rounds * (n * (n - 1) + n) + n * len(cfg.baselines)
    with progress_bar(cfg.train.progress) as bar:
        task = bar.add_task(f"cooperative {cfg.name}", total=total, info="")
        for p in parts:
            bar.update(task, info=f"alone: {p.learner.name}")
            _fit(p, "alone")
            measure("alone", p, 0)
            eval_acc[p.learner.name] = _scores(p.learner, pool.x_eval, pool.y_eval, pool.num_classes)["accuracy"]
            bar.advance(task)
        alone = [_clone_state(p) for p in parts]
        for r in range(1, cfg.rounds + 1):
            pairs += _round(r, cfg, pool, parts, log, bar, task)
            for p in parts:
                bar.update(task, info=f"round {r}: retrain {p.learner.name}")
                _fit(p, f"round{r}", np.concatenate([p.x_own, p.virtual_x]), np.concatenate([p.y, p.virtual_y]))
                measure(f"round_{r}", p, r)
                bar.advance(task)
        for name in cfg.baselines:
            for j, p in enumerate(parts):
                bar.update(task, info=f"{name}: {p.learner.name}")
                _baseline(name, j, parts, alone, pool, eval_acc)
                measure(name, p, cfg.rounds + 1)
                bar.advance(task)
    summary = _summary(cfg, rows, pairs, eval_acc, time.perf_counter() - started)
    write_summary(out, summary, acc)
    return summary


def _clone_state(p: Participant) -> Learner:
    """The alone-trained learner, kept as the peer teacher of the KD baseline (retraining makes a new model)."""
    import copy

    return copy.deepcopy(p.learner)


def _baseline(name: str, j: int, parts: list[Participant], alone: list[Learner], pool: Pool, eval_acc) -> None:
    p = parts[j]
    cols = p.learner.columns
    if name == "pooled":  # every learner's training rows, in this learner's columns
        x = np.concatenate([q.x_full for q in parts])[:, cols]
        _fit(p, name, x, np.concatenate([q.y for q in parts]))
    elif name == "own_plus_pool":  # the labels cooperation uses, given directly
        _fit(p, name, np.concatenate([p.x_own, pool.x_eval[:, cols]]), np.concatenate([p.y, pool.y_eval]))
    else:  # soft-label KD from the peer most accurate on the evaluation pool, on own rows + the pool
        peer = max((k for k in range(len(parts)) if k != j), key=lambda k: eval_acc[parts[k].learner.name])
        teacher = alone[peer]
        x_full = np.concatenate([p.x_full, pool.x_eval])
        probs = teacher.predict_proba(x_full[:, teacher.columns])
        y = np.concatenate([p.y, probs[len(p.y) :].argmax(1)])  # own labels; the peer's on the pool
        _fit(p, name, x_full[:, cols], y, probs)


def _absolute(cfg: CooperativeConfig) -> CooperativeConfig:
    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().absolute())

    learners = [lc.model_copy(update={"path": absolute(lc.path)}) for lc in cfg.learners]
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": absolute(cfg.data.path)}),
                                  "learners": learners})  # fmt: skip


def _summary(cfg: CooperativeConfig, rows, pairs: list[dict], eval_acc, seconds: float) -> dict[str, Any]:
    per_kind: dict[str, dict[str, float]] = {}
    for rec in pairs:
        kind = per_kind.setdefault(rec["teacher_kind"], {"tried": 0, "accepted": 0, "seconds": 0.0})
        kind["tried"] += rec["tried"]
        kind["accepted"] += rec["accepted"]
        kind["seconds"] += rec["seconds"]
    for kind in per_kind.values():
        kind["per_second"] = kind["tried"] / kind["seconds"] if kind["seconds"] > 0 else None
    return {
        "task": "cooperative", "name": cfg.name, "out": str(Path(cfg.out).absolute()), "seed": cfg.seed,
        "rounds": cfg.rounds,
        "learners": {name: {stage: s["accuracy"] for stage, s in stages.items()} for name, stages in rows.items()},
        "per_class": {name: {stage: s["per_class"] for stage, s in stages.items()} for name, stages in rows.items()},
        "eval_pool_accuracy_alone": eval_acc, "pairs": pairs, "counterfactuals_by_teacher_kind": per_kind,
        "wall_seconds": seconds, "versions": versions(machine=platform.machine()),
    }  # fmt: skip
