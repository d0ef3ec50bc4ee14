"""Models by name (timm-style): ``create("resnet20", num_classes=100, in_shape=(3, 32, 32), **hyper_parameters)``.

A factory takes ``num_classes`` and ``in_shape`` plus keyword hyper-parameters and returns an ``nn.Module``
whose ``forward(x)`` gives logits ``(N, num_classes)``. Registry names are case-insensitive (mdistiller
spells ``MobileNetV2``); a name of the form ``"package.module:callable"`` builds a user's own model, so
configs can point at code kdlab has never seen — under the trust check of ``kdlab.models.trust``.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn

from .trust import import_user_module

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_FIXED = ("num_classes", "in_shape")


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make a model class or factory function available as ``create(name, ...)``."""
    key = name.lower()
    if not key or ":" in key:
        raise ValueError(f"model name {name!r} must be non-empty and contain no ':'")

    def add(factory: Factory) -> Factory:
        if key in _REGISTRY and _REGISTRY[key] is not factory:
            raise ValueError(f"model {key!r} is already registered by {_REGISTRY[key].__qualname__}")
        _REGISTRY[key] = factory
        return factory

    return add


def available() -> list[str]:
    """Names accepted by ``create``, sorted (besides any ``"package.module:callable"``)."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int, in_shape: Sequence[int], **kw: Any) -> nn.Module:
    """Build the model registered as ``name`` (or the user callable ``"package.module:callable"``).

    ``in_shape`` is the shape of one example without the batch dimension: ``(C, H, W)`` for images,
    ``(F,)`` for vectors. Unknown names, malformed arguments and unknown hyper-parameters raise
    ``ValueError`` with one line that says what is accepted.
    """
    num_classes = _check_num_classes(num_classes)
    shape = _check_in_shape(in_shape)
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {type(name).__name__}")
    if ":" in name:
        factory = _import_callable(name)
    else:
        factory = _REGISTRY.get(name.lower())
        if factory is None:
            raise ValueError(
                f"unknown model {name!r}; available: {', '.join(available())} "
                "(or give your own as 'package.module:callable')"
            )
    _check_arguments(name, factory, kw)
    model = factory(num_classes=num_classes, in_shape=shape, **kw)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _as_int(value: object) -> int | None:
    """``value`` as an int if it is integral (int, numpy/torch integer), else None; bools are not sizes."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_num_classes(num_classes: object) -> int:
    n = _as_int(num_classes)
    if n is None or n < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return n


def _check_in_shape(in_shape: object) -> tuple[int, ...]:
    dims = [_as_int(d) for d in in_shape] if isinstance(in_shape, Sequence) and not isinstance(in_shape, str) else []
    if not dims or any(d is None or d < 1 for d in dims):
        raise ValueError(
            f"in_shape must be a non-empty sequence of positive integers, e.g. (3, 32, 32); got {in_shape!r}"
        )
    return tuple(dims)  # type: ignore[arg-type]


def check_import(name: str) -> None:
    """Resolve a ``"package.module:callable"`` model name now (trust, import, attribute) without building it: a
    run checks its model this way before it creates its directory. Registry names need nothing."""
    if isinstance(name, str) and ":" in name:
        _import_callable(name)


def _import_callable(spec: str) -> Callable[..., nn.Module]:
    """Resolve ``"package.module:attr[.attr]"``; every failure becomes one ValueError naming what is missing, and
    code from outside the user's project is refused unless trusted (``kdlab.models.trust``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model {spec!r} must look like 'package.module:callable'")
    obj: Any = import_user_module(module_name, spec)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (model {spec!r})") from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def _check_arguments(name: str, factory: Callable[..., nn.Module], kw: dict[str, Any]) -> None:
    """Reject unknown/missing hyper-parameters before calling, so a TypeError inside the model is not masked."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: let the call itself decide
        return
    try:
        signature.bind(num_classes=0, in_shape=(), **kw)
    except TypeError as err:
        accepted = [
            p.name
            for p in signature.parameters.values()
            if p.name not in _FIXED and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        hint = f"hyper-parameters: {', '.join(accepted)}" if accepted else "no hyper-parameters"
        raise ValueError(
            f"bad arguments for model {name!r}: {err}; it takes num_classes, in_shape and {hint}"
        ) from None
