"""``task: text_classify``: texts (or text pairs) → classes with Hugging Face sequence classifiers.

Everything but the inputs is the classification task's: the teacher (a fine-tuned classifier directory, a kdlab
run, an ensemble), its logit cache, its checks and fast switches, every classification method, the engine's step,
``evaluate``, ``select-ptloss``, torchrun. What differs is here: the data are tables of texts read from local
files, tokenised once by every model's own tokenizer (student and teacher may tokenise differently), and the
student is an ``hf_text`` model (``kdlab.models.hf_text``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from kdlab import models
from kdlab.config import AugmentConfig, RunConfig, TeacherConfig
from kdlab.data.text_table import build_splits, load_tables
from kdlab.errors import ConfigError
from kdlab.io import atomic_write_json
from kdlab.models.hf_text import load_tokenizer, tokenizer_dir, tokenizer_fingerprint

from .base import register
from .classify import INPUTS, ClassifyInputs, ClassifyTask, split_seed

TOKENIZATION_FILE = "tokenization.json"
HF_DIR = "hf"  # the finished student as a plain Hugging Face directory


def teacher_tokenizer_dirs(teacher: TeacherConfig | None) -> list[str]:
    """The tokenizer directories of a teacher (each member of an ensemble), read from its config or run."""
    if teacher is None:
        return []
    if teacher.ensemble is not None:
        return [d for member in teacher.ensemble for d in teacher_tokenizer_dirs(member)]
    if teacher.run is not None:
        config = Path(teacher.run) / "config.yaml"
        if not config.is_file():
            raise ConfigError(f"teacher.run: {teacher.run} is not a kdlab run directory (no config.yaml)")
        raw = yaml.safe_load(config.read_text()) or {}
        return [tokenizer_dir((raw.get("model") or {}).get("kwargs") or {})]
    assert teacher.model is not None
    return [tokenizer_dir(teacher.model.kwargs)]


class TextInputs(ClassifyInputs):
    """Tables of texts, tokenised by the student's tokenizer and every teacher's."""

    def load_data(self, cfg: RunConfig, stats: Any = None):
        d = cfg.data
        tables, columns, notes = load_tables(
            d.path,
            val_path=d.val_path,
            test_path=d.test_path,
            columns=d.text_columns,
            label_column=d.label_column,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            seed=split_seed(cfg.seed, d.split_seed),
        )
        directories = [tokenizer_dir(cfg.model.kwargs), *teacher_tokenizer_dirs(cfg.teacher)]
        keyed: dict[str, str] = {}
        for directory in directories:  # one tokenisation per distinct tokenizer (by content)
            keyed.setdefault(tokenizer_fingerprint(directory), directory)
        tokenizers = [(key, load_tokenizer(directory)) for key, directory in keyed.items()]
        return build_splits(
            tables, tokenizers, max_length=d.max_length, cache_dir=d.token_cache, columns=columns, notes=tuple(notes)
        )

    def build_student(self, cfg: RunConfig, data) -> nn.Module:
        model = models.create(cfg.model.name, data.num_classes, tuple(data.in_shape), **cfg.model.kwargs)
        if not hasattr(model, "bind_input"):
            raise ConfigError(f"task text_classify needs model.name: hf_text, got {cfg.model.name!r}")
        model.bind_input(data)
        return model

    def augment(self, cfg: RunConfig) -> AugmentConfig:
        return AugmentConfig()  # no input augmentation for token ids

    def save_inputs(self, out: Path, data) -> None:
        atomic_write_json(
            out / TOKENIZATION_FILE,
            {
                "fingerprint": data.fingerprint,
                "columns": list(data.columns),
                "class_names": list(data.class_names),
                "segments": {key: list(span) for key, span in data.segments.items()},
            },
        )

    def data_summary(self, cfg: RunConfig, data) -> dict[str, Any]:
        return {
            "name": "text",
            "path": str(Path(cfg.data.path).absolute()),
            "fingerprint": data.fingerprint,
            "text_columns": list(data.columns),
            "max_length": cfg.data.max_length,
            "notes": list(data.notes),
            "class_names": list(data.class_names),
            "train": len(data.y_train),
            "val": len(data.y_val),
            "test": len(data.y_test),
        }


INPUTS["text_classify"] = TextInputs()


def save_hf_directory(run: Path, cfg: RunConfig, class_names: list[str]) -> Path:
    """The finished student as a plain Hugging Face directory (``<run>/hf``: weights, config with the label
    names, tokenizer), which ``AutoModelForSequenceClassification`` and a ``pipeline`` load without kdlab."""
    from safetensors.torch import load_file

    from kdlab.models.hf import _transformers

    _transformers()  # quiet: no progress bar of its own
    model = models.create(cfg.model.name, len(class_names), (1,), **cfg.model.kwargs)
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    hf = model.model
    hf.config.id2label = dict(enumerate(class_names))
    hf.config.label2id = {name: i for i, name in enumerate(class_names)}
    target, staging = run / HF_DIR, run / f".{HF_DIR}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    hf.save_pretrained(str(staging))
    load_tokenizer(tokenizer_dir(cfg.model.kwargs)).save_pretrained(str(staging))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def load_hf_directory(run: Path):
    """(model, tokenizer) of a finished text run's ``hf`` directory, the model in eval mode."""
    from kdlab.models.hf import _transformers

    directory = run / HF_DIR
    if not (directory / "config.json").is_file():
        raise ConfigError(f"{run} has no {HF_DIR}/ directory (was the run finished?)")
    tf = _transformers()
    model = tf.AutoModelForSequenceClassification.from_pretrained(str(directory), local_files_only=True)
    return model.eval(), load_tokenizer(directory)


@register
class TextClassifyTask(ClassifyTask):
    name = "text_classify"

    def run(self, cfg, *, distilling, resume, overwrite, callbacks=None, student=None):
        summary = super().run(
            cfg, distilling=distilling, resume=resume, overwrite=overwrite, callbacks=callbacks, student=student
        )
        if int(os.environ.get("RANK", "0")) == 0:
            save_hf_directory(Path(cfg.out), cfg, summary["data"]["class_names"])
        return summary

    def load_model(self, run, cfg):
        """The student as a Hugging Face model (it takes the student tokenizer's ``input_ids``)."""
        return load_hf_directory(run)[0]

    def predict_proba(self, run, cfg, raw, retrieval=True):
        """Class probabilities for a list of texts (or of (text, text) pairs), in the run's class order."""
        import torch

        model, tokenizer = load_hf_directory(run)
        texts = list(raw)
        pairs = all(isinstance(t, tuple | list) and len(t) == 2 for t in texts) and bool(texts)
        first = [t[0] for t in texts] if pairs else [str(t) for t in texts]
        second = [t[1] for t in texts] if pairs else None
        batch = tokenizer(
            first, second, truncation=True, max_length=cfg.data.max_length, padding=True, return_tensors="pt"
        )
        with torch.inference_mode():
            return torch.softmax(model(**batch).logits.float(), -1).numpy()
