"""Loading a saved model: float weights, or a storage format another package registers (the seam that lets a
task load ``kdlab compress``'s int8 models without importing ``kdlab.compress``: that package registers its
loader under the metadata key its files carry, and imports here, never the other way round)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from kdlab.errors import ConfigError

Loader = Callable[[nn.Module, Path], nn.Module]
_FORMATS: dict[str, tuple[Loader, str]] = {}


def register_format(metadata_key: str, loader: Loader, package: str) -> None:
    """Files whose safetensors metadata has ``metadata_key`` are loaded by ``loader(float_model, path)``;
    ``package`` is named in the error when it was not imported."""
    _FORMATS[metadata_key] = (loader, package)


def _unreadable(path: str | Path, err: Exception) -> ConfigError:
    """A truncated or corrupt weights file as one line (safetensors checks that the header covers the file)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError(f"{path} is not a readable safetensors file (truncated or corrupt?): {first}")


def stored_format(path: str | Path) -> str | None:
    """The registered-format key a weights file carries in its metadata (known keys only), or None."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from None
    return next((key for key in metadata if key.startswith("kdlab_")), None)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """``model`` with the weights of ``path`` (float), or the model a registered format rebuilds from it."""
    key = stored_format(path)
    if key is None:
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise _unreadable(path, err) from None
        model.load_state_dict(state)
        return model
    if key not in _FORMATS:
        raise ConfigError(f"{path} holds a {key} model: import its package first (e.g. import kdlab.compress)")
    loader, _ = _FORMATS[key]
    return loader(model, Path(path))
