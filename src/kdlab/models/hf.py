"""Hugging Face causal language models (the ``hf`` extra): built from a config, or read from a local directory.

``model: {name: hf_causal_lm, kwargs: {...}}`` in a ``task: causal_lm`` config:

* ``kwargs: {path: DIR}`` — ``AutoModelForCausalLM.from_pretrained(DIR, local_files_only=True)``;
* ``kwargs: {architecture: llama, hidden_size: 64, num_hidden_layers: 2, ...}`` — a fresh model of that
  architecture (``AutoConfig.for_model``); ``vocab_size`` defaults to the tokenizer's and
  ``max_position_embeddings`` to the block size.

transformers is imported here only, so ``import kdlab`` and the image tasks never load it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.quiet import preload_torchao

NAME = "hf_causal_lm"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("Hugging Face models need the hf extra: pip install 'kdlab[hf]'") from None
    preload_torchao()  # transformers imports it with the first model class: without its CPU-machine warnings
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # kdlab draws its own progress bar
    return transformers


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def load_pretrained(path: str | Path) -> nn.Module:
    """A causal LM from a local Hugging Face directory (no download is ever tried)."""
    tf = _transformers()
    if not is_model_dir(path):
        raise ConfigError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        return tf.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"cannot load the model in {path}: {str(err).splitlines()[0]}") from None


def build_causal_lm(name: str, kwargs: dict[str, Any], vocab_size: int, block_size: int) -> nn.Module:
    """The ``model`` section of a causal-LM config as a model (fresh from a config, or from a directory)."""
    if name != NAME:
        raise ConfigError(f"task: causal_lm needs model.name: {NAME}, got {name!r}")
    kwargs = dict(kwargs)
    if "path" in kwargs:
        if len(kwargs) > 1:
            raise ConfigError("model.kwargs.path (a pretrained directory) takes no other keys")
        return load_pretrained(kwargs["path"])
    tf = _transformers()
    architecture = kwargs.pop("architecture", "llama")
    kwargs.setdefault("vocab_size", vocab_size)
    kwargs.setdefault("max_position_embeddings", block_size)
    try:
        config = tf.AutoConfig.for_model(architecture, **kwargs)
        return tf.AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f"model.kwargs: cannot build a {architecture!r} causal LM: {str(err).splitlines()[0]}"
        ) from None


def vocab_size(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


class HiddenStates(nn.Module):
    """The model without its output layer: input ids (B, L) → final hidden states (B, L, H).

    The fused losses apply the head themselves (``head_weight``), so the (tokens × vocabulary) logits
    are never formed. Being the module that DDP wraps, it keeps the gradient synchronisation intact.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        if getattr(model.get_output_embeddings(), "bias", None) is not None:
            raise ConfigError("an output layer with a bias is not supported by the fused losses")

    @property
    def head_weight(self) -> Tensor:
        return self.model.get_output_embeddings().weight

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def weights_digest(directory: str | Path) -> str:
    """sha256 over a model directory's config.json and weight files (the teacher part of a cache fingerprint)."""
    root = Path(directory)
    digest = hashlib.sha256()
    for path in [root / "config.json", *sorted(root.glob("*.safetensors")), *sorted(root.glob("*.bin"))]:
        if path.is_file():
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
