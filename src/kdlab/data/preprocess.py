"""What turns a source's raw values into a model's input, as data: ``(x · scale − mean) / std``, saved with a run.

A model is only right on the inputs it was trained on, so the preprocessing is part of the model: a run writes
``preprocess.json`` (the fitted statistics, a digest of them, the data fingerprint) and ``evaluate``, ``export``
and the Python loading API apply it; a teacher trained on other inputs (raw features, or another split's
statistics) gets its own through ``input_adapter``. JSON, not pickle: floats round-trip exactly and the file is
safe to open and to read.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import DataError

PREPROCESS_FILE = "preprocess.json"
_FORMAT = "kdlab.preprocess/v1"


@dataclass(frozen=True, eq=False)
class Preprocess:
    """``model_input = (raw · scale − mean) / std`` per channel (images, ``per_channel``) or per feature.

    ``raw`` is what the source holds (0..255 for 8-bit pixels, a CSV's numbers as written); ``standardize=False``
    keeps ``mean = 0`` and ``std = 1``.
    """

    scale: float
    mean: Tensor
    std: Tensor
    per_channel: bool
    standardize: bool
    data_fingerprint: str = ""

    def _view(self, x: Tensor) -> tuple[int, ...]:
        if self.per_channel:
            return (1, -1, *([1] * (x.ndim - 2)))
        return (1, *self.mean.shape)

    def apply(self, raw: Tensor) -> Tensor:
        """The model input for raw values (a new float32 tensor)."""
        x = raw.to(torch.float32) * self.scale
        view = self._view(x)
        return (x - self.mean.to(x.device).view(view)) / self.std.to(x.device).view(view)

    def invert(self, x: Tensor) -> Tensor:
        """The scaled values (``raw · scale``) behind a model input."""
        view = self._view(x)
        return x * self.std.to(x.device).view(view) + self.mean.to(x.device).view(view)

    def payload(self) -> dict[str, Any]:
        body = {
            "format": _FORMAT,
            "scale": self.scale,
            "standardize": self.standardize,
            "per_channel": self.per_channel,
            "shape": list(self.mean.shape),
            "mean": self.mean.double().reshape(-1).tolist(),
            "std": self.std.double().reshape(-1).tolist(),
            "data_fingerprint": self.data_fingerprint,
        }
        return {**body, "sha256": _digest(body)}

    def save(self, path: Path) -> None:
        from kdlab.io import atomic_write_json

        atomic_write_json(path, self.payload())

    def digest(self) -> str:
        return str(self.payload()["sha256"])


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def identity(in_shape: tuple[int, ...], *, scale: float = 1.0, per_channel: bool = False) -> Preprocess:
    """Raw features as they are (times ``scale``): what a teacher trained outside kdlab on raw values expects."""
    shape = (in_shape[0],) if per_channel else in_shape
    return Preprocess(scale, torch.zeros(shape), torch.ones(shape), per_channel, standardize=False)


def load_preprocess(path: Path) -> Preprocess:
    """A saved ``preprocess.json``; a damaged or edited file is one ``DataError`` line."""
    try:
        payload = json.loads(path.read_text())
        body = {k: v for k, v in payload.items() if k != "sha256"}
        if payload.get("format") != _FORMAT or payload.get("sha256") != _digest(body):
            raise ValueError("digest mismatch (edited or damaged)")
        shape = tuple(int(d) for d in payload["shape"])
        mean = torch.tensor(payload["mean"], dtype=torch.float64).to(torch.float32).reshape(shape)
        std = torch.tensor(payload["std"], dtype=torch.float64).to(torch.float32).reshape(shape)
        scale = float(payload["scale"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise DataError(f"{path}: unreadable preprocessing statistics ({err})") from None
    if not (math.isfinite(scale) and bool(torch.isfinite(mean).all()) and bool((std > 0).all())):
        raise DataError(f"{path}: preprocessing statistics are not finite and positive")
    return Preprocess(
        scale=scale,
        mean=mean,
        std=std,
        per_channel=bool(payload["per_channel"]),
        standardize=bool(payload["standardize"]),
        data_fingerprint=str(payload.get("data_fingerprint", "")),
    )


class InputAdapter(nn.Module):
    """Turns one preprocessing's model input into another's: ``x · weight + bias`` (both broadcast per channel or
    per feature). Registered as a forward pre-hook, so the wrapped model keeps its submodule names (feature
    methods tap them) and its forward."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.to(x.dtype) + self.bias.to(x.dtype)


def input_adapter(given: Preprocess, wanted: Preprocess, in_shape: tuple[int, ...]) -> InputAdapter | None:
    """The adapter from ``given``'s model inputs to ``wanted``'s (None when they are the same); both must start
    from the same raw values (the same scale)."""
    if not math.isclose(given.scale, wanted.scale, rel_tol=1e-6):
        raise DataError(
            f"the teacher expects raw values scaled by {wanted.scale}, this data is scaled by {given.scale}"
        )

    def full(stat: Tensor, per_channel: bool) -> Tensor:  # every element of one input, float64
        stat = stat.double()
        return stat.view(-1, *([1] * (len(in_shape) - 1))).expand(in_shape) if per_channel else stat.view(in_shape)

    g_mean, g_std = full(given.mean, given.per_channel), full(given.std, given.per_channel)
    w_mean, w_std = full(wanted.mean, wanted.per_channel), full(wanted.std, wanted.per_channel)
    weight = (g_std / w_std).float().contiguous()
    bias = ((g_mean - w_mean) / w_std).float().contiguous()
    if bool((weight == 1).all()) and bool((bias == 0).all()):
        return None
    return InputAdapter(weight, bias)


def attach_input_adapter(model: nn.Module, adapter: InputAdapter | None) -> nn.Module:
    """``model`` fed through ``adapter`` (kept as its submodule ``kdlab_input``, so it moves with ``.to()``)."""
    if adapter is None:
        return model
    model.add_module("kdlab_input", adapter)
    model.register_forward_pre_hook(lambda module, args: (module.kdlab_input(args[0]), *args[1:]))
    return model


class RawInputModel(nn.Module):
    """A model that takes raw values: ``model((raw · scale − mean) / std)`` — what ``kdlab export`` writes to ONNX
    and ``kdlab.load_model`` returns, so a user feeds the numbers they have, not kdlab's standardised ones."""

    def __init__(self, model: nn.Module, preprocess: Preprocess, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        view = (1, -1, *([1] * (len(in_shape) - 1))) if preprocess.per_channel else (1, *in_shape)
        self.scale = float(preprocess.scale)
        self.register_buffer("mean", preprocess.mean.reshape(view).clone())
        self.register_buffer("std", preprocess.std.reshape(view).clone())

    def forward(self, raw: Tensor) -> Tensor:
        return self.model((raw.to(self.mean.dtype) * self.scale - self.mean) / self.std)
