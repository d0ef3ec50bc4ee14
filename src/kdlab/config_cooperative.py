"""The sections of ``task: cooperative`` (``kdlab.tasks.cooperative``): learners of any kind, their data and
feature spaces, the evaluation pool, the counterfactual search and the baselines.

They live here rather than in ``kdlab.config`` (which only adds the task's tag to the run config's union), so the
shared config module stays one screen per task. Like every config section: unknown keys are errors.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LearnerModelConfig(_Strict):
    """A torch learner: a kdlab zoo name (``mlp``) or the user's ``package.module:callable`` (trust policy of
    ``kdlab.models.trust``), trained with the run's ``train`` section through the engine's one loop."""

    name: str = "mlp"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class LearnerConfig(_Strict):
    """One learner: exactly one of ``estimator`` (a scikit-learn class with ``predict_proba``, by import path)
    or ``model`` (a torch network); its columns of the pooled feature space; its training rows."""

    name: str
    estimator: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    model: LearnerModelConfig | None = None
    # columns of the pooled feature space this learner sees, in its own column order (None: all of them);
    # the map between two learners copies the columns they share and fills the rest (``fill``)
    features: list[int] | None = None
    # its own training file (.npz with x, y — x already in this learner's columns); None: a share of the pool
    path: str | None = None
    # relative share of each class's pooled training rows this learner receives (default 1 per class), relative
    # to the other learners without a ``path``: their shares split every class's rows disjointly — a skewed
    # learner gets little of some classes (a single learner sharing the pool gets all of them)
    class_weights: dict[int, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> LearnerConfig:
        if (self.estimator is None) == (self.model is None):
            raise ValueError(f"learner {self.name!r}: give exactly one of 'estimator' (scikit-learn) or 'model'")
        if self.model is not None and self.kwargs:
            raise ValueError(f"learner {self.name!r}: 'kwargs' are the estimator's; a model takes model.kwargs")
        if self.features is not None and (not self.features or len(set(self.features)) != len(self.features)):
            raise ValueError(f"learner {self.name!r}: features must be distinct column indices (at least one)")
        if any(w < 0 for w in self.class_weights.values()):
            raise ValueError(f"learner {self.name!r}: class_weights must be >= 0")
        return self


class PoolConfig(_Strict):
    """The pooled data: ``digits`` (sklearn), ``npz`` or ``csv`` at ``path`` (``kdlab.data``'s sources). Its
    training part is shared out to the learners; ``eval_fraction`` of it is the pooled evaluation set on which
    deficiencies are found; the source's test split measures every learner."""

    name: Literal["digits", "npz", "csv"] = "digits"
    path: str | None = None
    label_column: str | int = -1
    eval_fraction: float = Field(0.2, gt=0, lt=1)


class GradientSearchConfig(_Strict):
    """Counterfactuals by a differentiable (torch) teacher: Adam on the instance, in its standardised units."""

    steps: int = Field(300, ge=1)
    lr: float = Field(0.05, gt=0)


class SwarmSearchConfig(_Strict):
    """Counterfactuals by a black-box teacher: particle swarm (``pyswarms``), one swarm per instance."""

    particles: int = Field(24, ge=2)
    iterations: int = Field(40, ge=1)
    c1: float = Field(0.5, ge=0)
    c2: float = Field(0.3, ge=0)
    w: float = Field(0.9, ge=0)
    # particles start within this fraction of each feature's range around the instance (the rest of the box
    # is still reachable): a counterfactual is a small edit, not a search of the whole space
    init_radius: float = Field(0.1, gt=0, le=1)
    # a swarm whose best is within the tolerance stops after this many iterations without improving its cost
    patience: int = Field(5, ge=1)


class CounterfactualConfig(_Strict):
    """Target y' = o + alpha (onehot(c) - o); cost ``||f(x') - y'||² + l1 · Σ|x' - x| / scale`` (scale: the
    teacher's training std per column); stop when max |f(x') - y'| <= tolerance; x' kept inside the teacher's
    training data range. An instance the search did not move, or moved off class c, is discarded and counted."""

    alpha: float = Field(0.5, gt=0, le=1)
    l1: float = Field(1e-4, ge=0)
    tolerance: float = Field(0.01, gt=0)
    # at most this many deficient instances per ordered pair and round (a seeded sample); None: all
    max_per_pair: int | None = Field(200, ge=1)
    gradient: GradientSearchConfig = GradientSearchConfig()
    swarm: SwarmSearchConfig = SwarmSearchConfig()


Baseline = Literal["kd_best_peer", "own_plus_pool", "pooled"]


class CooperativeSections(_Strict):
    """What ``task: cooperative`` adds to the run config (``kdlab.config.CooperativeConfig``)."""

    data: PoolConfig = PoolConfig()
    learners: list[LearnerConfig] = Field(min_length=2)
    rounds: int = Field(1, ge=1)
    # how a column the student has and the teacher lacks is filled in a transferred instance: "original" (the
    # pooled instance's own value), "mean" (the student's training mean) or "zero"
    fill: Literal["original", "mean", "zero"] = "original"
    counterfactual: CounterfactualConfig = CounterfactualConfig()
    # reference rows next to the cooperative rounds: soft-label KD from the best peer on the evaluation pool,
    # own data plus the labelled evaluation pool (the labels cooperation uses), everyone on the pooled data
    baselines: list[Baseline] = Field(default_factory=lambda: ["kd_best_peer", "own_plus_pool", "pooled"])

    @model_validator(mode="after")
    def _distinct_names(self) -> CooperativeSections:
        if getattr(self, "teacher", None) is not None:
            raise ValueError("task: cooperative has no 'teacher' section: every learner teaches the others")
        names = [learner.name for learner in self.learners]
        if len(set(names)) != len(names):
            raise ValueError(f"learners: names must be distinct (got {names})")
        return self
