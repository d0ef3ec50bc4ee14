"""Losses by name (timm-style registry): ``get("ptloss", epsilon=[0.1, 0.2])`` -> an nn.Module."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a loss module available as ``get(name, **kwargs)``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return add


def available() -> list[str]:
    """Names accepted by ``get``, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: object) -> nn.Module:
    """Instantiate the loss module registered as ``name`` with its hyper-parameters."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(available())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for loss {name!r}: {err}") from None
