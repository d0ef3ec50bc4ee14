"""What a distillation method is: a named, registered object that turns one batch into loss terms.

A method knows nothing of Accelerate or the loop: it gets the batch, the student's logits, the teacher's
logits (or None) and the training progress, and returns named loss terms; their sum is optimised and
each is logged. Hyper-parameters are a pydantic model (``Params``) so typos in a config are errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from kdlab.config import ConfigError


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StepState:
    """Where training is: ``progress`` counts epochs as a float (2.5 = half-way through the third)."""

    epoch: int
    step: int
    epochs: int
    progress: float


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True

    def __init__(self, params: MethodParams, num_classes: int) -> None:
        self.params = params
        self.num_classes = num_classes

    def compute(
        self, batch: dict[str, Tensor], student_logits: Tensor, teacher_logits: Tensor | None, state: StepState
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def current_values(self, state: StepState) -> dict[str, float]:
        """Hyper-parameters in effect at ``state`` (e.g. scheduled weights); the loop logs them per epoch."""
        return {}

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.model_dump().items())
        return f"{self.name}({args})"


_METHODS: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: ``@register("kd")`` makes the method available to configs as ``method: {name: kd}``."""

    def add(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def available() -> list[str]:
    return sorted(_METHODS)


def get_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise ConfigError(f"config: method.name: unknown method {name!r}; available: {', '.join(available())}")
    return _METHODS[name]


def build(name: str, params: dict[str, Any], num_classes: int) -> Method:
    """Validate ``params`` against the method's ``Params`` and instantiate it."""
    cls = get_class(name)
    try:
        parsed = cls.Params.model_validate(params)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"config: unknown key 'method.{where}' for method {name!r}") from None
        if first["type"] == "value_error":  # our own validators' messages already say what was wrong
            raise ConfigError(f"config: method.{where}: {first['msg'].removeprefix('Value error, ')}") from None
        raise ConfigError(f"config: method.{where}: {first['msg']} (got {first.get('input')!r})") from None
    return cls(parsed, num_classes)
