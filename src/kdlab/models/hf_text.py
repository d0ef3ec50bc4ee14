"""Hugging Face sequence classifiers (the ``hf`` extra) as zoo models: ``model: {name: hf_text, kwargs: {...}}``.

* ``kwargs: {path: DIR}`` — ``AutoModelForSequenceClassification.from_pretrained(DIR, local_files_only=True)``: a
  fine-tuned classifier (its label set is checked against the data's), or an encoder that gets a fresh head;
* ``kwargs: {architecture: bert, tokenizer: DIR, hidden_size: 64, num_hidden_layers: 2, ...}`` — a fresh model
  of that architecture for a student trained from scratch (``vocab_size`` defaults to the tokenizer's);
* ``tokenizer: DIR`` (default: ``path``), ``pooling: cls|mean`` (the ``features`` a feature method taps).

Each model keeps its own tokenizer, so a teacher and a student may tokenise differently. The classification
task's tensors hold every tokenizer's ids side by side (``kdlab.data.text_table``): ``bind_input`` tells the model
which columns are its own; ``forward`` trims the padding the batch does not need (dynamic padding).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError

from .hf import _transformers, is_model_dir
from .registry import register

NAME = "hf_text"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)
TYPE_BITS = 2  # packed input: id << TYPE_BITS | token type; -1 is padding (kdlab.data.text_table.pack)


def tokenizer_files(directory: str | Path) -> list[Path]:
    """A tokenizer directory's files (``TOKENIZER_FILES`` present); none is one clear line."""
    root = Path(directory)
    found = [root / name for name in TOKENIZER_FILES if (root / name).is_file()]
    if not found:
        raise ConfigError(f"{root} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...)")
    return found


def tokenizer_fingerprint(directory: str | Path) -> str:
    """sha256 over a tokenizer directory's files: what a tokenisation (and a cache of it) depends on."""
    digest = hashlib.sha256()
    for path in tokenizer_files(directory):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_tokenizer(directory: str | Path) -> Any:
    """A fast tokenizer from a local directory (never a download)."""
    tf = _transformers()
    if not Path(directory).is_dir():
        raise ConfigError(f"tokenizer directory not found: {directory}")
    tokenizer_files(directory)  # one clear line for a directory without a tokenizer
    try:
        return tf.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"cannot load the tokenizer in {directory}: {str(err).splitlines()[0]}") from None


def tokenizer_dir(kwargs: dict[str, Any]) -> str:
    """The tokenizer directory an ``hf_text`` model's kwargs name (``tokenizer``, else ``path``)."""
    directory = kwargs.get("tokenizer") or kwargs.get("path")
    if directory is None:
        raise ConfigError("model hf_text needs kwargs.path (a model directory) or kwargs.tokenizer (a tokenizer dir)")
    return str(directory)


def _default_label(name: str, index: int) -> bool:
    return name in (f"LABEL_{index}", str(index))


def saved_labels(path: str | Path) -> list[str] | None:
    """The label names a fine-tuned classifier directory declares (None: an encoder without a classifier head)."""
    config = json.loads((Path(path) / "config.json").read_text())
    if not any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return None
    id2label = config.get("id2label") or {}
    if id2label:
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    return [f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))]


class TextClassifier(nn.Module):
    """A sequence classifier on kdlab's packed token tensors: ``(N, columns)`` int64 → logits ``(N, C)``.

    ``features`` (an identity) sees the pooled final hidden state — ``[CLS]`` or the masked mean — so feature
    methods (FitNets, VID, ReAugKD, ...) tap ``features`` on any architecture. ``label_order`` reorders the
    logits of a classifier fine-tuned with its classes in another order than the data's."""

    def __init__(self, model: nn.Module, tokenizer_key: str, pad_id: int, pooling: str, labels: list[str] | None):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"model hf_text: pooling must be 'cls' or 'mean', got {pooling!r}")
        self.model = model
        self.features = nn.Identity()
        self.tokenizer_key, self.pad_id, self.pooling, self.labels = tokenizer_key, pad_id, pooling, labels
        self.columns = slice(0, None)  # until bound: the whole input is this model's (its own data)
        self.label_order: Tensor | None = None

    def bind_input(self, data) -> None:
        """Read this model's columns of ``data``'s packed tensors; check the label set against the data's."""
        segments = getattr(data, "segments", {})
        if self.tokenizer_key not in segments:
            raise ConfigError("the data was not tokenised with this model's tokenizer (a bug: please report it)")
        start, stop = segments[self.tokenizer_key]
        self.columns = slice(start, stop)
        names = list(data.class_names)
        if self.labels is None:
            return
        if len(self.labels) != len(names):
            raise ConfigError(
                f"the model's classifier has {len(self.labels)} labels ({', '.join(self.labels[:5])}), "
                f"the data has {len(names)} ({', '.join(names[:5])}): the label sets must match"
            )
        if all(_default_label(n, i) for i, n in enumerate(self.labels)) or self.labels == names:
            return
        if sorted(self.labels) != sorted(names):
            raise ConfigError(
                f"the model's labels ({', '.join(self.labels)}) are not the data's ({', '.join(names)}): "
                "the label sets must match"
            )
        self.label_order = torch.tensor([self.labels.index(n) for n in names])

    def forward(self, x: Tensor) -> Tensor:
        packed = x[:, self.columns]
        mask = packed >= 0
        width = int(mask.sum(1).max()) if len(packed) else 1  # right-padded: trim what no row of the batch uses
        packed, mask = packed[:, : max(width, 1)], mask[:, : max(width, 1)]
        ids = torch.where(mask, packed >> TYPE_BITS, self.pad_id)
        types = torch.where(mask, packed & ((1 << TYPE_BITS) - 1), 0)
        kwargs: dict[str, Tensor] = {"input_ids": ids, "attention_mask": mask.long()}
        if getattr(self.model.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = types
        out = self.model(**kwargs, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
        self.features(pooled)
        logits = out.logits
        return logits if self.label_order is None else logits[:, self.label_order.to(logits.device)]


@register(NAME)
def hf_text(
    num_classes: int,
    in_shape: tuple[int, ...],
    *,
    path: str | None = None,
    tokenizer: str | None = None,
    architecture: str | None = None,
    pooling: str = "cls",
    **config: Any,
) -> TextClassifier:
    """A sequence classifier from a local directory (``path``) or fresh from a config (``architecture``)."""
    tf = _transformers()
    tok_dir = tokenizer_dir({"path": path, "tokenizer": tokenizer or path})
    tok = load_tokenizer(tok_dir)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    key = tokenizer_fingerprint(tok_dir)
    if path is not None:
        if architecture is not None or config:
            raise ConfigError("model.kwargs.path (a pretrained directory) takes only tokenizer and pooling beside it")
        if not is_model_dir(path):
            raise ConfigError(f"{path} is not a Hugging Face model directory (no config.json)")
        labels = saved_labels(path)
        if labels is not None and len(labels) != num_classes:
            raise ConfigError(
                f"the classifier in {path} has {len(labels)} labels ({', '.join(labels[:5])}), the data has "
                f"{num_classes}: the label sets must match"
            )
        try:
            model = tf.AutoModelForSequenceClassification.from_pretrained(
                str(path), num_labels=num_classes, local_files_only=True
            )
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"cannot load the model in {path}: {str(err).splitlines()[0]}") from None
        return TextClassifier(model, key, pad_id, pooling, labels)
    config.setdefault("vocab_size", len(tok))
    config.setdefault("pad_token_id", pad_id)
    try:
        model_config = tf.AutoConfig.for_model(architecture or "bert", num_labels=num_classes, **config)
        model = tf.AutoModelForSequenceClassification.from_config(model_config)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f"model.kwargs: cannot build a {architecture!r} classifier: {str(err).splitlines()[0]}"
        ) from None
    return TextClassifier(model, key, pad_id, pooling, None)
