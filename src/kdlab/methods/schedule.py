"""Loss weights and temperatures as functions of the epoch (constant, linear, cosine, step).

A scheduled value in a method's config is a number or a spec such as ``{schedule: linear, start: 0.9,
end: 0.1}``. Epochs are counted from 1 as in ``metrics.jsonl``, and a value is constant within an epoch,
so the per-epoch log states exactly what was used. ``linear``/``cosine`` go from ``start`` at epoch 1 to
``end`` at epoch ``epochs`` (default: the run's last epoch) and stay at ``end`` afterwards; ``step``
uses ``values[i]`` after ``i`` milestones have passed (milestone ``m``: the value changes after epoch ``m``).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def all_values(self) -> list[float]:
        raise NotImplementedError


class Constant(_Spec):
    schedule: Literal["constant"]
    value: float

    def all_values(self) -> list[float]:
        return [self.value]


class Linear(_Spec):
    schedule: Literal["linear"]
    start: float
    end: float
    epochs: int | None = Field(None, ge=1, description="epoch at which `end` is reached (default: the last)")

    def all_values(self) -> list[float]:
        return [self.start, self.end]


class Cosine(Linear):
    schedule: Literal["cosine"]  # type: ignore[assignment]


class Step(_Spec):
    schedule: Literal["step"]
    milestones: list[int]
    values: list[float]

    @model_validator(mode="after")
    def _shape(self) -> Step:
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError("step needs one more value than milestones (values[0] applies before the first)")
        ms = self.milestones
        if any(m < 1 for m in ms) or any(b <= a for a, b in pairwise(ms)):
            raise ValueError("step milestones must be increasing epochs >= 1")
        return self

    def all_values(self) -> list[float]:
        return list(self.values)


Spec = Annotated[Constant | Linear | Cosine | Step, Field(discriminator="schedule")]
_SPEC = TypeAdapter(Spec)
EXAMPLE = "{schedule: linear, start: 0.9, end: 0.1}"


def _parse(value: Any) -> Any:
    """A number, or a schedule spec; a bad spec becomes one message naming the key."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a schedule such as {EXAMPLE}")
    if isinstance(value, int | float | _Spec):
        return value
    if isinstance(value, dict):
        try:
            return _SPEC.validate_python(value)
        except ValidationError as err:
            errors = err.errors()
            first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
            where = ".".join(str(p) for p in first["loc"][1:])
            if first["type"] == "union_tag_invalid":
                kinds = "constant, linear, cosine or step"
                raise ValueError(f"unknown schedule {value.get('schedule')!r}; use {kinds}") from None
            if first["type"] == "union_tag_not_found":
                raise ValueError(f"a schedule needs a 'schedule' key, e.g. {EXAMPLE}") from None
            if first["type"] == "extra_forbidden":
                raise ValueError(f"unknown schedule key {where!r}") from None
            message = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"schedule {where}: {message}" if where else f"schedule: {message}") from None
    raise ValueError(f"expected a number or a schedule such as {EXAMPLE}")


def _bounded(low: float, inclusive: bool):
    def check(value: float | _Spec) -> float | _Spec:
        values = [value] if isinstance(value, int | float) else value.all_values()
        bad = [v for v in values if (v < low if inclusive else v <= low)]
        if bad:
            raise ValueError(f"must be {'>=' if inclusive else '>'} {low} at every epoch (got {bad[0]})")
        return float(value) if isinstance(value, int | float) else value

    return BeforeValidator(check)


# Order matters: BeforeValidators run last-to-first, so _parse turns dicts into specs before the bound check.
NonNegative = Annotated[float | Spec, _bounded(0.0, True), BeforeValidator(_parse)]
Positive = Annotated[float | Spec, _bounded(0.0, False), BeforeValidator(_parse)]


def value_at(spec: float | _Spec, epoch: int, epochs: int) -> float:
    """The value during ``epoch`` (1-based) of a run of ``epochs`` epochs."""
    if isinstance(spec, int | float):
        return float(spec)
    if isinstance(spec, Constant):
        return spec.value
    if isinstance(spec, Linear):  # also Cosine
        span = spec.epochs or epochs
        t = 1.0 if span <= 1 else min(max((epoch - 1) / (span - 1), 0.0), 1.0)
        if isinstance(spec, Cosine):
            t = (1.0 - math.cos(math.pi * t)) / 2.0
        return spec.start * (1.0 - t) + spec.end * t
    if isinstance(spec, Step):
        return spec.values[sum(epoch > m for m in spec.milestones)]
    raise TypeError(f"not a schedule: {spec!r}")
