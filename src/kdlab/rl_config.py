"""The ``rl:`` section of a ``task: rl`` run config (``kdlab.rl``): environment, PPO or TD3/SAC, DPD and policy
distillation.

Kept apart from ``kdlab.config`` (which only adds the ``task: rl`` union member) so that the run config stays
one readable file; like it, this module imports nothing of kdlab but the errors. Every budget is counted in
environment steps: a comparison of one learner with two is only fair at the same total number of steps, so the
budget is one number, ``total_steps``, shared by all learners of a run (``RLSection.steps_per_learner``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EnvConfig(_Strict):
    """A Gymnasium environment id (``gymnasium.make(id, **kwargs)``)."""

    id: str = "CartPole-v1"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class PPOConfig(_Strict):
    """Stable-Baselines3 PPO's hyper-parameters (constant schedules: a resumed run sees the same values)."""

    n_steps: int = Field(512, ge=8, description="environment steps per rollout = per PPO update")
    batch_size: int = Field(64, ge=2)
    n_epochs: int = Field(10, ge=1)
    lr: float = Field(3e-4, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_range: float = Field(0.2, gt=0)
    ent_coef: float = Field(0.0, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)


class OffPolicyConfig(_Strict):
    """Stable-Baselines3 TD3 or SAC (``rl.algo: td3 | sac``, continuous actions). One "update" of such a learner
    is ``round_steps`` environment steps, each followed by SB3's own training (``train_freq``/``gradient_steps``);
    DPD's ``every`` counts these updates. Defaults are the RL Zoo's Pendulum-v1 values with a smaller warm-up."""

    round_steps: int = Field(128, ge=1, description="environment steps of a learner per update (= per round)")
    buffer_size: int = Field(100_000, ge=1, description="replay buffer; also the memory the peer samples from")
    learning_starts: int = Field(1000, ge=0, description="random-action steps before training starts")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    gamma: float = Field(0.98, gt=0, le=1)
    tau: float = Field(0.005, gt=0, le=1)
    train_freq: int = Field(1, ge=1, description="environment steps between two training calls")
    gradient_steps: int = Field(1, ge=1, description="gradient steps per training call")
    action_noise: float = Field(
        0.1, ge=0, description="TD3: std of the Gaussian exploration noise (actions in [-1, 1])"
    )

    @model_validator(mode="after")
    def _whole_calls(self) -> OffPolicyConfig:
        if self.round_steps % self.train_freq:
            raise ValueError(f"round_steps ({self.round_steps}) must be a multiple of train_freq ({self.train_freq})")
        return self


class DPDConfig(_Strict):
    """Dual policy distillation (Lai et al., IJCAI 2020): every ``every`` PPO updates a learner samples ``batch``
    states from its peer's memory and takes ``steps`` weighted imitation steps towards the peer's policy.

    Weights, with ξ(s) = V_peer(s) − V_self(s) (``reversed``: −ξ, the sign of the authors' PPO code, kept only
    for the ablation): ``soft`` = clip(exp(β·ξ), w_min, w_max), ``hard`` = 1[ξ > 0], ``uniform`` = 1; then
    normalised to sum 1 over the batch."""

    weighting: Literal["soft", "hard", "uniform"] = "soft"
    reversed: bool = False
    beta: float = Field(0.5, ge=0)
    w_min: float = Field(0.01, gt=0)
    w_max: float = Field(100.0, gt=0)
    every: int = Field(5, ge=1, description="updates (PPO rollouts, TD3/SAC rounds) between two distillations")
    batch: int = Field(512, ge=1)
    steps: int = Field(1, ge=1, description="imitation gradient steps per distillation")
    memory: int = Field(100_000, ge=1, description="observations each learner keeps for its peer (ring buffer)")
    lr: float | None = Field(None, gt=0, description="imitation Adam's learning rate (default: ppo.lr)")
    seed_offset: int = Field(10_000, ge=1, description="learner b's seed = seed + seed_offset")

    @model_validator(mode="after")
    def _bounds(self) -> DPDConfig:
        if self.w_min > self.w_max:
            raise ValueError(f"w_min ({self.w_min}) must not exceed w_max ({self.w_max})")
        return self


class DistillConfig(_Strict):
    """Classic policy distillation: the teacher run's policy → a student with ``hidden`` layers, by KL(teacher ‖
    student) on discrete actions or squared error of the means on continuous ones, on states visited by the
    teacher (``states: teacher``) or by the student itself and labelled by the teacher (``student``: DAgger)."""

    states: Literal["teacher", "student"] = "teacher"
    hidden: list[int] = Field(default_factory=lambda: [32, 32])
    rollout_steps: int = Field(512, ge=1, description="environment steps collected per round (counted in the budget)")
    steps: int = Field(50, ge=1, description="gradient steps per round on the aggregated states")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)


class RLSection(_Strict):
    """What a ``task: rl`` run does: ``single`` (one learner: PPO, TD3 or SAC), ``dpd`` (two learners
    distilling from each other) or ``distill`` (teacher.run's policy into a smaller student)."""

    mode: Literal["single", "dpd", "distill"] = "single"
    algo: Literal["ppo", "td3", "sac"] = Field(
        "ppo", description="the learners' algorithm (Stable-Baselines3); td3 and sac need continuous actions"
    )
    env: EnvConfig = EnvConfig()
    total_steps: int = Field(20_480, ge=1, description="environment steps of the whole run, all learners together")
    hidden: list[int] = Field(default_factory=lambda: [64, 64], description="the learners' actor and critic layers")
    eval_episodes: int = Field(10, ge=1, description="deterministic episodes of the final evaluation")
    checkpoint_every: int = Field(1, ge=1, description="rounds (one update of every learner) between checkpoints")
    ppo: PPOConfig = PPOConfig()
    offpolicy: OffPolicyConfig = OffPolicyConfig()
    dpd: DPDConfig = DPDConfig()
    distill: DistillConfig = DistillConfig()

    @property
    def learners(self) -> int:
        return 2 if self.mode == "dpd" else 1

    @property
    def update_steps(self) -> int:
        """Environment steps of one learner's update: a PPO rollout, or ``offpolicy.round_steps`` for TD3/SAC."""
        return self.ppo.n_steps if self.algo == "ppo" else self.offpolicy.round_steps

    @property
    def round_steps(self) -> int:
        """Environment steps of one round: one update (or distillation round) of every learner."""
        per = self.distill.rollout_steps if self.mode == "distill" else self.update_steps
        return per * self.learners

    @property
    def steps_per_learner(self) -> int:
        return self.total_steps // self.learners

    @model_validator(mode="after")
    def _equal_budget(self) -> RLSection:
        """The budget must split into whole rounds: no learner may take a step more than ``total_steps`` allows,
        and a dpd run must spend exactly what a single learner with the same ``total_steps`` spends."""
        if self.total_steps % self.round_steps:
            what = "ppo.n_steps" if self.algo == "ppo" else "offpolicy.round_steps"
            what = "distill.rollout_steps" if self.mode == "distill" else what
            raise ValueError(
                f"total_steps ({self.total_steps}) must be a multiple of {self.learners} learner(s) x {what} "
                f"= {self.round_steps}, so that every learner spends exactly its share of the budget"
            )
        if self.mode != "distill" and self.algo == "ppo" and self.ppo.batch_size > self.ppo.n_steps:
            raise ValueError(f"ppo.batch_size ({self.ppo.batch_size}) must not exceed ppo.n_steps ({self.ppo.n_steps})")
        return self
