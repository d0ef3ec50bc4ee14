"""Intermediate features through forward hooks on named submodules, never by rewriting ``forward``.

Works on any ``nn.Module`` (the zoo's, torchvision's, a user's) and on a DDP-wrapped model, whose
submodules are named ``module.<name>``: either spelling is accepted.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple | list):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class FeatureTap:
    """Record the outputs of named submodules on every forward pass.

    >>> with FeatureTap(model, ["layer2", "fc"]) as tap:
    ...     logits = model(x)
    >>> tap.features["layer2"].shape

    ``features`` maps each requested name (as given) to the output of that module's latest call; it is
    overwritten by the next forward and kept after the hooks are removed. With ``detach=False`` (default)
    features stay in the autograd graph, so feature losses backpropagate into the model; ``detach=True``
    suits a frozen teacher. ``transform`` (a tensor → tensor callable) changes what is recorded, not what the
    model computes next (a nuisance teacher's noise channels). Use it as a context manager, or call ``remove()``.
    """

    def __init__(
        self,
        model: nn.Module,
        names: str | Iterable[str],
        detach: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError("FeatureTap needs at least one submodule name")
        self.model = model
        self.names: tuple[str, ...] = tuple(dict.fromkeys(names))
        self.detach = detach
        self.transform = transform
        self.features: dict[str, Any] = {}
        modules = {name: resolve_submodule(model, name) for name in self.names}
        self._handles: list[RemovableHandle] = [
            module.register_forward_hook(self._recorder(name)) for name, module in modules.items()
        ]

    def _recorder(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            value = _detached(output) if self.detach else output
            if self.transform is not None and isinstance(value, torch.Tensor):
                value = self.transform(value)
            self.features[name] = value

        return hook

    def clear(self) -> None:
        """Drop the recorded features (and the graph they hold)."""
        self.features = {}

    def remove(self) -> None:
        """Remove the hooks; idempotent. Recorded features stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def active(self) -> bool:
        """Whether the hooks are still installed."""
        return bool(self._handles)

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"FeatureTap({list(self.names)}, detach={self.detach}, {state})"


def resolve_submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, also trying with/without the ``module.`` prefix of DDP-style wrappers.

    An unknown name raises ValueError listing the closest submodule names.
    """
    candidates = [name]
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and not name.startswith("module."):
        candidates.append(f"module.{name}" if name else "module")
    if name.startswith("module."):
        candidates.append(name.removeprefix("module."))
    for candidate in candidates:
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    known = [n for n, _ in model.named_modules() if n]
    if isinstance(inner, nn.Module):
        known += [n.removeprefix("module.") for n in known if n.startswith("module.")]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}" if close else f"; submodules include: {', '.join(known[:12])}"
    raise ValueError(f"model {type(model).__name__} has no submodule {name!r}{hint}")
