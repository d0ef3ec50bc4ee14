"""What a distillation method is: a named, registered object that turns one batch into loss terms (contract v2).

A method knows nothing of Accelerate, the loop or the task: it declares what it needs (``requires``: logits,
named intermediate features, hidden states for token tasks), may prepare itself once before training
(``setup``), may own trainable modules (``modules``: a regressor, a filter, a guide network; the engine puts
them in the optimizer, wraps them for DDP with the student, checkpoints them and saves them beside — never
inside — the student's weights) and other resumable state (``state_dict``), and returns named loss terms from
``compute``; their sum is optimised and each is logged. Hyper-parameters are a pydantic model (``Params``) so a
typo in a config is an error. Scheduled values arrive in ``StepState``; nothing about progress is kept on ``self``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from kdlab.errors import ConfigError

TOKEN_TASKS = ("causal_lm",)  # tasks whose outputs are token-level hidden states + head weight (fused losses)


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StepState:
    """Where training is: ``progress`` counts epochs as a float (2.5 = half-way through the third)."""

    epoch: int
    step: int
    epochs: int
    progress: float


@dataclass(frozen=True)
class Requires:
    """What a method needs from a forward pass; the task fills an ``Outputs`` with exactly this.

    ``student_features`` / ``teacher_features``: names of submodules (``model.get_submodule(name)``) whose outputs
    are recorded by forward hooks (``kdlab.models.tap``); the student's stay in the autograd graph."""

    logits: bool = True
    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()


@dataclass
class Outputs:
    """One side's outputs for a batch. Classification: ``logits`` (N, C) and ``features``. Token tasks keep the
    fused loss (the (tokens × vocabulary) logits never exist): the student gives ``hidden`` (N, T, H) and
    ``head_weight`` (V, H); the teacher gives the same, or ``sparse`` (a top-k ``SparseTeacher`` from a cache)."""

    logits: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    hidden: Tensor | None = None
    head_weight: Tensor | None = None
    sparse: Any = None


@dataclass
class SetupContext:
    """What ``Method.setup`` sees, once, before training (and before the optimizer is built).

    ``teacher_logits(split, rows=None)``: the teacher's (N, C) logits on a split (live or cached; token tasks: one
    row per target token, the first ``rows`` of them); ``labels(split, rows=None)``, aligned with them;
    ``feature_shapes(side, names)``: the shapes (without the batch dimension) of named features of the student or
    the teacher on one training example — what a method needs to size its own modules; ``write_report(stem,
    payload, plot)``: ``<stem>.json`` (and ``<stem>.png`` through ``plot``) in the run directory, on rank 0.

    Where a task has them: ``teacher_features(split, names)``: the teacher's named features over a whole split
    (float32, on the CPU; ReAugKD's knowledge base); ``fingerprints``: ``{"data": ..., "teacher": ...}`` of what
    the run reads; ``write_file(relative, writer)``: ``writer(out_dir / relative)`` on rank 0 (a method's own
    artefact, e.g. a knowledge base). Tasks without them keep the defaults (a one-line error, {}, None)."""

    num_classes: int
    device: Any
    out_dir: Path | None
    teacher_logits: Callable[..., Tensor]
    labels: Callable[..., Tensor]
    feature_shapes: Callable[[str, tuple[str, ...]], dict[str, tuple[int, ...]]]
    write_report: Callable[[str, dict[str, Any], Callable[[Path], None] | None], None]
    teacher_features: Callable[[str, tuple[str, ...]], dict[str, Tensor]] = field(
        default=lambda split, names: _unavailable("the teacher's features over a whole split")
    )
    fingerprints: dict[str, str] = field(default_factory=dict)
    write_file: Callable[[str, Callable[[Path], None]], None] | None = None


def _unavailable(what: str) -> Any:
    raise ConfigError(f"this task does not give a method {what}")


class Predictor(Protocol):
    """What a method may leave in a finished run besides the student: a predictor on the student's outputs (ReAugKD:
    its knowledge base). ``features``: the student submodules whose outputs it reads. ``choose(logits, features,
    labels)``: fix its own settings on validation rows (returns what it chose); ``probabilities(logits,
    features)``: (N, C) probabilities; ``metrics(logits, features, labels)``: its named metrics on a split;
    ``files``: what it keeps on disk (for the footprint)."""

    features: tuple[str, ...]
    files: list[Path]

    def choose(self, logits: Tensor, features: dict[str, Tensor], labels: Tensor) -> dict[str, Any]: ...

    def probabilities(self, logits: Tensor, features: dict[str, Tensor]) -> Tensor: ...

    def metrics(self, logits: Tensor, features: dict[str, Tensor], labels: Tensor) -> dict[str, float]: ...


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classify",)  # the tasks whose outputs this method can read
    fingerprinted: ClassVar[bool] = False  # setup reads ctx.fingerprints (hashing a teacher's weights: only then)
    phased: ClassVar[bool] = False  # ``trains`` alternates parameter groups: DDP must expect unused parameters

    def __init__(self, params: MethodParams, num_classes: int) -> None:
        self.params = params
        self.num_classes = num_classes
        self.task = "classify"  # set by ``build``: the task whose outputs ``compute`` will see

    @classmethod
    def params_for(cls, task: str) -> type[MethodParams]:
        """The hyper-parameters this method takes in ``task`` (token tasks have their own defaults)."""
        return cls.Params

    @property
    def token_level(self) -> bool:
        """Whether this instance was built for a token-level task (``TOKEN_TASKS``)."""
        return self.task in TOKEN_TASKS

    def requires(self) -> Requires:
        return Requires()

    def setup(self, ctx: SetupContext) -> None:
        """Run once before training (e.g. PTLoss's epsilon selection, building a regressor of the right size)."""

    def modules(self) -> dict[str, nn.Module]:
        """Trainable modules this method owns, by name (``method/<name>.safetensors`` in the run directory)."""
        return {}

    def trains(self, state: StepState) -> tuple[str, ...] | None:
        """Which parameter groups ("student" or a module name) step at ``state``; None = all of them (the default).
        Alternating (multi-level) methods return one phase's groups; the others keep their weights that step."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Anything besides ``modules()`` that must survive a resume (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, got keys {sorted(state)}")

    def compute(
        self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def predictor(self, run_dir: Path, fingerprints: dict[str, str]) -> Predictor | None:
        """The inference-time predictor this method left in the finished run ``run_dir`` (checked against the
        ``fingerprints`` of the data and teacher evaluation sees), or None: the student alone predicts."""
        return None

    def current_values(self, state: StepState) -> dict[str, Any]:
        """Hyper-parameters in effect at ``state`` (e.g. scheduled weights) and what the method measured over the
        epoch; the loop logs them per epoch (``method/<key>`` in metrics.jsonl). Numbers also go to the trackers;
        strings, lists and dicts (e.g. per-example values of a few rows) go to metrics.jsonl only."""
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


def supporting(task: str) -> list[str]:
    return [name for name in available() if task in _METHODS[name].tasks]


def build(name: str, params: dict[str, Any], num_classes: int, task: str = "classify") -> Method:
    """Validate ``params`` against the method's parameters for ``task`` and instantiate it."""
    cls = get_class(name)
    if task not in cls.tasks:
        raise ConfigError(
            f"config: method {name!r} does not support task {task!r}; methods for {task}: {', '.join(supporting(task))}"
        )
    try:
        parsed = cls.params_for(task).model_validate(params)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"config: unknown key 'method.{where}' for method {name!r}") from None
        if first["type"] == "value_error":  # our own validators' messages already say what was wrong
            raise ConfigError(f"config: method.{where}: {first['msg'].removeprefix('Value error, ')}") from None
        raise ConfigError(f"config: method.{where}: {first['msg']} (got {first.get('input')!r})") from None
    method = cls(parsed, num_classes)
    method.task = task
    return method
