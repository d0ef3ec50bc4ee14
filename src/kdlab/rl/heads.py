"""What imitation needs from a policy, for each kind of Stable-Baselines3 policy: one small interface.

DPD and policy distillation ask the same four things of any policy: what a student imitates at a state
(``targets``), how far a policy is from those targets (``divergence``), the policy's value of a state
(``values``, DPD's weight) and which parameters act (``actor_parameters``). PPO's ``ActorCriticPolicy`` has a
state-value head and an action distribution; TD3's and SAC's policies have an actor and a Q critic instead, so
their value of a state is Q(s, π(s)) — the critic at the actor's own (deterministic) action, as in the DPD
authors' DDPG variant. ``head(policy)`` picks the implementation by the policy's class; nothing else in
``kdlab.rl`` branches on the algorithm.

Continuous targets are actions in the environment's units (TD3/SAC actors act in [-1, 1] and are rescaled to
the action space's bounds), so a teacher of one kind can teach a student of another.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import Tensor, nn


class ActorCriticHead:
    """PPO: action probabilities (discrete, KL(target ‖ policy)) or Gaussian means (continuous, MSE); V(s)."""

    @staticmethod
    def targets(policy: ActorCriticPolicy, obs: Tensor) -> Tensor:
        with torch.no_grad():
            dist = policy.get_distribution(obs)
            if isinstance(dist, CategoricalDistribution):
                return dist.distribution.probs
            return dist.distribution.mean

    @staticmethod
    def divergence(policy: ActorCriticPolicy, obs: Tensor, target: Tensor) -> Tensor:
        dist = policy.get_distribution(obs)
        if isinstance(dist, CategoricalDistribution):
            log_p = torch.log_softmax(dist.distribution.logits, dim=-1)
            log_t = torch.log(target.clamp_min(1e-12))
            return (target * (log_t - log_p)).sum(-1)
        return ((dist.distribution.mean - target) ** 2).mean(-1)

    @staticmethod
    def values(policy: ActorCriticPolicy, obs: Tensor) -> Tensor:
        with torch.no_grad():
            return policy.predict_values(obs).flatten()

    @staticmethod
    def actor_parameters(policy: ActorCriticPolicy) -> list[nn.Parameter]:
        """Shared extractor, policy branch, action head: what a deployed policy holds (not the value branch)."""
        critic = {id(p) for m in (policy.mlp_extractor.value_net, policy.value_net) for p in m.parameters()}
        return [p for p in policy.parameters() if id(p) not in critic]


class QActorHead:
    """TD3 (deterministic actor) and SAC (squashed Gaussian; its deterministic action tanh(mean)): actions in
    environment units, MSE; the value of a state is the first critic's Q(s, π(s)) — the Q the TD3 actor
    maximises (SAC's entropy term is left out: V here ranks states, it does not train the critic)."""

    @staticmethod
    def act(policy: TD3Policy | SACPolicy, obs: Tensor) -> Tensor:
        """The deterministic action in [-1, 1] (differentiable)."""
        if isinstance(policy, SACPolicy):
            return policy.actor(obs, deterministic=True)
        return policy.actor(obs)

    @classmethod
    def env_action(cls, policy: TD3Policy | SACPolicy, obs: Tensor) -> Tensor:
        low = torch.as_tensor(policy.action_space.low, dtype=torch.float32)
        high = torch.as_tensor(policy.action_space.high, dtype=torch.float32)
        return low + 0.5 * (cls.act(policy, obs) + 1.0) * (high - low)

    @classmethod
    def targets(cls, policy: TD3Policy | SACPolicy, obs: Tensor) -> Tensor:
        with torch.no_grad():
            return cls.env_action(policy, obs)

    @classmethod
    def divergence(cls, policy: TD3Policy | SACPolicy, obs: Tensor, target: Tensor) -> Tensor:
        return ((cls.env_action(policy, obs) - target) ** 2).mean(-1)

    @classmethod
    def values(cls, policy: TD3Policy | SACPolicy, obs: Tensor) -> Tensor:
        with torch.no_grad():
            return policy.critic.q1_forward(obs, cls.act(policy, obs)).flatten()

    @staticmethod
    def actor_parameters(policy: TD3Policy | SACPolicy) -> list[nn.Parameter]:
        return list(policy.actor.parameters())


_HEADS: dict[type, Any] = {ActorCriticPolicy: ActorCriticHead, TD3Policy: QActorHead, SACPolicy: QActorHead}


def head(policy: BasePolicy) -> Any:
    """The imitation interface of ``policy`` (by class: ActorCriticPolicy, TD3Policy, SACPolicy)."""
    for kind, impl in _HEADS.items():
        if isinstance(policy, kind):
            return impl
    raise TypeError(f"kdlab.rl cannot distil a {type(policy).__name__}")
