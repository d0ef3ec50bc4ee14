"""One PPO learner: Stable-Baselines3's PPO driven one update at a time, plus what DPD adds to it.

SB3 runs its own loop inside ``learn``; two learners that take turns (and distil in between) need control
after every update, so each ``update`` is one ``learn`` call of exactly ``n_steps`` environment steps with
``reset_num_timesteps=False`` (SB3 then continues the same episode, counters and buffers). A callback
(SB3's extension point) collects the finished episodes; the rollout's observations go into a ring buffer,
the "memory" the peer samples from. PPO itself is SB3's, untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy

from kdlab.rl_config import RLSection

from .envs import make_env, make_vec_env, restore, snapshot


class ObsMemory:
    """The last ``capacity`` observations a learner saw (a ring buffer), sampled uniformly by its peer."""

    def __init__(self, capacity: int, shape: tuple[int, ...]) -> None:
        self.data = np.zeros((capacity, *shape), dtype=np.float32)
        self.pos = 0
        self.size = 0

    def add(self, rows: np.ndarray) -> None:
        for row in rows.reshape(-1, *self.data.shape[1:]):
            self.data[self.pos] = row
            self.pos = (self.pos + 1) % len(self.data)
            self.size = min(self.size + 1, len(self.data))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.data[rng.integers(0, self.size, size=n)]

    def state(self) -> dict[str, Any]:
        return {"data": torch.from_numpy(self.data[: self.size].copy()), "pos": self.pos, "size": self.size}

    def load(self, state: dict[str, Any]) -> None:
        self.size, self.pos = int(state["size"]), int(state["pos"])
        self.data[: self.size] = state["data"].numpy()


class Episodes(BaseCallback):
    """Collects (environment step, return, length) of every episode finished during one ``learn`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[tuple[int, float, int]] = []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self.episodes.append((self.model.num_timesteps, float(info["episode"]["r"]), int(info["episode"]["l"])))
        return True


def policy_kwargs(hidden: list[int]) -> dict[str, Any]:
    return {"net_arch": {"pi": list(hidden), "vf": list(hidden)}}


def build_policy(section: RLSection, hidden: list[int], lr: float = 1e-3) -> ActorCriticPolicy:
    """A stand-alone SB3 actor-critic policy for ``section.env`` (a teacher to load, a student to distil)."""
    env = make_env(section.env)
    policy = ActorCriticPolicy(env.observation_space, env.action_space, lambda _: lr, **policy_kwargs(hidden))
    env.close()
    policy.set_training_mode(False)
    return policy


def sb3_state(model: Any, env: Any) -> dict[str, Any]:
    """What any SB3 algorithm needs to go on exactly where it stopped, besides its networks and optimisers: its
    counters, the last observation and episode starts, and every environment copy's state."""
    return {
        "num_timesteps": model.num_timesteps,
        "n_updates": model._n_updates,
        "episode_num": model._episode_num,
        "last_obs": torch.from_numpy(np.asarray(model._last_obs).copy()),
        "last_episode_starts": torch.from_numpy(np.asarray(model._last_episode_starts).copy()),
        "env": [snapshot(e) for e in env.envs],
    }


def load_sb3_state(model: Any, env: Any, state: dict[str, Any]) -> None:
    model.num_timesteps, model._n_updates = int(state["num_timesteps"]), int(state["n_updates"])
    model._episode_num = int(state["episode_num"])
    model._last_obs = state["last_obs"].numpy()
    model._last_episode_starts = state["last_episode_starts"].numpy()
    for e, text in zip(env.envs, state["env"], strict=True):
        restore(e, text)
    env._seeds = [None] * env.num_envs  # the first reset's seeds were used before the checkpoint


class SB3Learner:
    """What every learner driven by an SB3 algorithm shares (PPO here, TD3/SAC in ``offpolicy``): one update is
    ``round_steps`` environment steps through the algorithm's own ``learn``, counted on its model."""

    model: Any
    round_steps: int

    @property
    def policy(self) -> Any:
        return self.model.policy

    @property
    def steps(self) -> int:
        return int(self.model.num_timesteps)

    @property
    def updates(self) -> int:
        return self.steps // self.round_steps

    def update(self) -> list[tuple[int, float, int]]:
        """One round of the algorithm's own training; returns the finished episodes."""
        episodes = Episodes()
        self.model.learn(self.round_steps, callback=episodes, reset_num_timesteps=False, log_interval=None)
        return episodes.episodes


class Learner(SB3Learner):
    """A named PPO learner with its own environment copy and seed, memory and imitation optimiser."""

    def __init__(self, name: str, section: RLSection, seed: int) -> None:
        self.name, self.section = name, section
        ppo = section.ppo
        self.round_steps = ppo.n_steps
        self.env = make_vec_env(section.env)
        self.model = PPO(
            "MlpPolicy",
            self.env,
            n_steps=ppo.n_steps,
            batch_size=ppo.batch_size,
            n_epochs=ppo.n_epochs,
            learning_rate=ppo.lr,
            gamma=ppo.gamma,
            gae_lambda=ppo.gae_lambda,
            clip_range=ppo.clip_range,
            ent_coef=ppo.ent_coef,
            vf_coef=ppo.vf_coef,
            max_grad_norm=ppo.max_grad_norm,
            policy_kwargs=policy_kwargs(section.hidden),
            seed=seed,
            device="cpu",
            verbose=0,
        )
        self.model.set_logger(Logger(folder=None, output_formats=[]))  # no files, no console
        shape = self.env.observation_space.shape or ()
        self.memory = ObsMemory(section.dpd.memory, tuple(shape))
        lr = section.dpd.lr or ppo.lr
        self.imitation_optimizer = torch.optim.Adam(self.model.policy.parameters(), lr=lr)

    def update(self) -> list[tuple[int, float, int]]:
        """One PPO update: ``n_steps`` environment steps, then SB3's PPO epochs; the rollout joins the memory."""
        episodes = super().update()
        self.memory.add(self.model.rollout_buffer.observations)
        return episodes

    def obs_tensor(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(obs, dtype=torch.float32)

    # ---- checkpoint ----

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.policy.optimizer.state_dict(),
            "imitation_optimizer": self.imitation_optimizer.state_dict(),
            "memory": self.memory.state(),
            **sb3_state(self.model, self.env),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.policy.optimizer.load_state_dict(state["optimizer"])
        self.imitation_optimizer.load_state_dict(state["imitation_optimizer"])
        self.memory.load(state["memory"])
        load_sb3_state(self.model, self.env, state)
