"""Every file path of a run config made absolute, for the ``config.yaml`` a run directory keeps: that copy must
work from any directory (``kdlab evaluate RUN`` started elsewhere), while the user's own config stays as written.

It lives beside the run directory's writer rather than in ``kdlab.config``: it is about where a run keeps its
config, and it knows which keys of each task's sections are paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdlab.config import DataConfig, ModelConfig, RunBase, TeacherConfig, TextClassifyDataConfig, TextDataConfig


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().absolute())


def _absolute_glob(spec: str | list[str] | None) -> str | list[str] | None:
    if isinstance(spec, list):
        return [str(_absolute(s)) for s in spec]
    return _absolute(spec)


def _absolute_model(model: ModelConfig) -> ModelConfig:
    """A model directory given as the name (Hugging Face) or as kwargs.path / kwargs.tokenizer, made absolute."""
    update: dict[str, Any] = {}
    if Path(model.name).is_dir():
        update["name"] = _absolute(model.name)
    dirs = {k: _absolute(v) for k, v in model.kwargs.items() if k in ("path", "tokenizer") and Path(str(v)).is_dir()}
    if dirs:
        update["kwargs"] = {**model.kwargs, **dirs}
    return model.model_copy(update=update)


def _absolute_teacher(teacher: TeacherConfig) -> TeacherConfig:
    members = None if teacher.ensemble is None else [_absolute_teacher(m) for m in teacher.ensemble]
    model = None if teacher.model is None else _absolute_model(teacher.model)
    return teacher.model_copy(
        update={
            "run": _absolute(teacher.run),
            "weights": _absolute(teacher.weights),
            "ensemble": members,
            "model": model,
        }
    )


def absolute_paths(cfg: RunBase) -> RunBase:
    """``cfg`` with every file path made absolute (relative to the current directory, as it was read): the
    config a run directory keeps works from anywhere (``kdlab evaluate RUN`` started elsewhere)."""
    update: dict[str, Any] = {
        "out": _absolute(cfg.out),
        "cache": cfg.cache.model_copy(update={"path": _absolute(cfg.cache.path)}),
    }
    if cfg.teacher is not None:
        update["teacher"] = _absolute_teacher(cfg.teacher)
    update["model"] = _absolute_model(cfg.model)
    data = getattr(cfg, "data", None)
    if isinstance(data, DataConfig):
        update["data"] = data.model_copy(
            update={k: _absolute(getattr(data, k)) for k in ("path", "val_path", "test_path")}
        )
    elif isinstance(data, TextClassifyDataConfig):
        update["data"] = data.model_copy(
            update={k: _absolute(getattr(data, k)) for k in ("path", "val_path", "test_path", "token_cache")}
        )
    elif isinstance(data, TextDataConfig):
        paths = {k: _absolute_glob(getattr(data, k)) for k in ("train", "val", "test")}
        if Path(data.tokenizer).is_dir():
            paths["tokenizer"] = _absolute(data.tokenizer)
        update["data"] = data.model_copy(update=paths)
    compress = getattr(cfg, "compress", None)
    if compress is not None:
        update["compress"] = compress.model_copy(update={"source": _absolute(compress.source)})
    return cfg.model_copy(update=update)
