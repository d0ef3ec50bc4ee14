"""The distillation objective of ``kdlab.hf``: which token-level loss, its temperature, ε and weights."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kdlab.config import MethodConfig


class DistillMethod(BaseModel):
    """``loss = beta · D(teacher ‖ student) + alpha · CE(labels)``, D one of kdlab's fused token-level losses.

    ``name``: ``kd`` (T² · KL(q ‖ p)), ``ptloss`` (KD with the first M Maclaurin coefficients perturbed by
    ``epsilon``, shape (M,)), ``reverse_kl`` (T² · KL(p ‖ q)) or ``jsd`` (``jsd_beta`` mixes the two sides).
    ``alpha`` weighs the cross-entropy of the untempered student on the labels (0: pure distillation).
    Extra keys are errors, so a typo in a config cannot silently fall back to a default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["kd", "ptloss", "reverse_kl", "jsd"] = "kd"
    temperature: float = Field(1.0, gt=0)
    epsilon: list[float] | None = Field(None, min_length=1)
    alpha: float = Field(0.0, ge=0, description="weight of the hard-label cross-entropy")
    beta: float = Field(1.0, gt=0, description="weight of the distillation term")
    jsd_beta: float = Field(0.5, gt=0, lt=1)
    chunk_size: int | None = Field(None, ge=1, description="tokens per chunk of the fused loss (None: automatic)")

    @model_validator(mode="after")
    def _epsilon_only_for_ptloss(self) -> DistillMethod:
        if self.name == "ptloss" and self.epsilon is None:
            raise ValueError("method 'ptloss' needs epsilon, a list of M numbers (e.g. [0.2, -0.1])")
        if self.name != "ptloss" and self.epsilon is not None:
            raise ValueError(f"epsilon is only used by method 'ptloss', not by {self.name!r}")
        return self

    @classmethod
    def parse(cls, method: DistillMethod | MethodConfig | dict[str, Any] | str) -> DistillMethod:
        """Accept this model, kdlab's ``MethodConfig`` (``method:`` of a YAML config), a dict or a bare name."""
        if isinstance(method, cls):
            return method
        if isinstance(method, str):
            return cls(name=method)
        if isinstance(method, MethodConfig):
            method = {"name": method.name, **method.params()}
        return cls.model_validate(method)
