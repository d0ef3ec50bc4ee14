"""The ``compress`` section (``kdlab compress``: prune and/or quantize a finished run, recovering with a method).

It lives here rather than in ``kdlab.config`` (which imports it into the run config), so the shared config module
stays one screen per concern. Like every config section: unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PruneConfig(_Strict):
    kind: Literal["unstructured", "structured"] = "unstructured"
    sparsity: float = Field(0.5, ge=0, lt=1)
    steps: int = Field(1, ge=1)  # iterative: prune a step, recover train.epochs, repeat
    schedule: Literal["geometric", "linear"] = "geometric"
    norm: Literal["l1", "l2"] = "l1"  # structured: unit score = norm of its incoming weights


class QuantizeConfig(_Strict):
    """int8 quantization (kdlab.compress.quantize): ``ptq`` after training, or ``qat`` trained with ``method``."""

    mode: Literal["ptq", "qat"] = "ptq"
    scheme: Literal["int8_dynamic", "int8_weight_only"] = "int8_dynamic"


class CompressConfig(_Strict):
    """``kdlab compress``: prune and/or quantize the model of the finished run ``source``, recovering with ``method``.

    Prune first, then quantize. Without either section it prunes with ``PruneConfig``'s defaults (as before
    quantization existed).
    """

    source: str
    prune: PruneConfig | None = None
    quantize: QuantizeConfig | None = None

    @model_validator(mode="after")
    def _default_prune(self) -> CompressConfig:
        if self.prune is None and self.quantize is None:
            self.prune = PruneConfig()
        return self
