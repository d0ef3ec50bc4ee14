"""The learners' algorithms: the one place that maps ``rl.algo`` to a learner class and a policy class.

``ppo`` is ``learners.Learner`` (SB3 PPO, ``ActorCriticPolicy``); ``td3`` and ``sac`` are
``offpolicy.OffPolicyLearner`` (SB3 TD3/SAC, ``TD3Policy``/``SACPolicy``). Every learner offers the same
surface to the round loop — ``update()``, ``steps``, ``updates``, ``policy``, ``memory`` (``size``,
``sample``), ``imitation_optimizer``, ``state()``/``load()`` — and every policy the imitation interface of
``heads``; the loop, DPD and policy distillation never ask which algorithm they drive.
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy

from kdlab.errors import ConfigError
from kdlab.rl_config import RLSection

from .envs import make_env
from .heads import head
from .learners import Learner
from .learners import build_policy as build_actor_critic
from .offpolicy import OffPolicyLearner

LEARNERS: dict[str, type] = {"ppo": Learner, "td3": OffPolicyLearner, "sac": OffPolicyLearner}
_Q_POLICIES: dict[str, type[BasePolicy]] = {"td3": TD3Policy, "sac": SACPolicy}


def check(section: RLSection) -> None:
    """One clear line, before anything is written, for an environment the algorithm cannot act in."""
    env = make_env(section.env)
    action_space = env.action_space
    env.close()
    if section.algo in _Q_POLICIES and not isinstance(action_space, spaces.Box):
        raise ConfigError(
            f"config: rl.algo: {section.algo} needs continuous (Box) actions; {section.env.id} has {action_space}"
            " (use algo: ppo)"
        )


def make_learner(name: str, section: RLSection, seed: int) -> Any:
    return LEARNERS[section.algo](name, section, seed)


def build_policy(section: RLSection, hidden: list[int], lr: float = 1e-3) -> BasePolicy:
    """A stand-alone policy of ``section.algo``'s kind for ``section.env`` (a teacher to load, a student)."""
    if section.algo not in _Q_POLICIES:
        return build_actor_critic(section, hidden, lr)
    env = make_env(section.env)
    policy = _Q_POLICIES[section.algo](env.observation_space, env.action_space, lambda _: lr, net_arch=list(hidden))
    env.close()
    policy.set_training_mode(False)
    return policy


def actor_parameters(policy: BasePolicy) -> int:
    """Parameters that act (what a deployed policy holds; not the critic, not target networks)."""
    return sum(p.numel() for p in head(policy).actor_parameters(policy))
