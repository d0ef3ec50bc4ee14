"""The distillation objective of ``kdlab.hf``: a kdlab method (``kdlab.methods``) built for token-level tasks.

The Trainer and ``distillation_loss`` take the same method objects as ``kdlab distill`` with ``task: causal_lm``:
``kd``, ``ptloss``, ``reverse_kl``, ``jsd`` (or ``ce``), ``loss = beta · D(teacher ‖ student) + alpha · CE``
(defaults alpha 0, beta 1, T 1). Extra keys are errors, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdlab.config import MethodConfig
from kdlab.errors import ConfigError
from kdlab.methods import Method, build

TASK = "causal_lm"


def distill_method(method: Method | MethodConfig | Mapping[str, Any] | str = "kd", **params: Any) -> Method:
    """A token-level method from a built method, kdlab's ``MethodConfig`` (``method:`` of a YAML config), a mapping
    ``{"name": ..., **params}`` or a name plus keyword parameters: ``distill_method("ptloss", epsilon=[0.2])``.

    PTLoss needs its ``epsilon`` here (the Trainer has no validation pass to choose one: use ``kdlab
    select-ptloss``); ``beta`` must be positive (a Trainer without a teacher term is plain fine-tuning)."""
    if isinstance(method, Method):
        if not method.token_level:
            raise ConfigError(f"method {method.name!r} was not built for task {TASK!r}: build(..., task={TASK!r})")
        return method
    if isinstance(method, str):
        spec: dict[str, Any] = {"name": method, **params}
    elif isinstance(method, MethodConfig):
        spec = {"name": method.name, **method.params(), **params}
    else:
        spec = {**method, **params}
    name = spec.pop("name", "kd")
    if name == "ptloss" and spec.get("epsilon", "auto") == "auto":
        raise ConfigError("method 'ptloss' needs epsilon, a list of M numbers (e.g. [0.2, -0.1])")
    built = build(name, spec, 0, task=TASK)
    if getattr(built.params, "beta", 1.0) <= 0:
        raise ConfigError(f"method {name!r}: beta must be > 0 for distillation")
    return built
