"""One off-policy learner for continuous control: Stable-Baselines3's TD3 or SAC, driven one round at a time.

Like the PPO learner (``learners.Learner``), each ``update`` is one ``learn(round_steps,
reset_num_timesteps=False)`` call: SB3 collects the steps and trains after each ``train_freq`` of them with its
own TD3/SAC code, untouched. The peer's "memory" is this learner's replay buffer (its observations, sampled
uniformly — the DPD authors' DDPG variant samples the partner's replay buffer too). A checkpoint holds the
filled part of the replay buffer as tensors (not SB3's pickled ``save_replay_buffer``: state.pt is read with
``weights_only=True``), both optimisers (and SAC's entropy coefficient), the counters, the action space's
generator (random warm-up actions) and the environment's state, so a resumed run continues the same curve.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from kdlab.rl_config import RLSection

from .envs import make_vec_env
from .learners import SB3Learner, load_sb3_state, sb3_state

ALGORITHMS: dict[str, type[OffPolicyAlgorithm]] = {"td3": TD3, "sac": SAC}
_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class ReplayMemory:
    """The peer's view of a learner's replay buffer: its stored observations, sampled uniformly."""

    def __init__(self, buffer: ReplayBuffer) -> None:
        self.buffer = buffer

    @property
    def size(self) -> int:
        return self.buffer.buffer_size if self.buffer.full else self.buffer.pos

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        rows = self.buffer.observations[: self.size].reshape(self.size * self.buffer.n_envs, -1)
        return rows[rng.integers(0, len(rows), size=n)].astype(np.float32)


def buffer_state(buffer: ReplayBuffer) -> dict[str, Any]:
    """The filled rows of every array of ``buffer`` as tensors, with its position."""
    n = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {
        k: torch.from_numpy(getattr(buffer, k)[:n].copy())
        for k in _BUFFER_FIELDS
        if getattr(buffer, k, None) is not None
    }
    return {"arrays": arrays, "pos": buffer.pos, "full": buffer.full}


def load_buffer(buffer: ReplayBuffer, state: dict[str, Any]) -> None:
    for key, value in state["arrays"].items():
        getattr(buffer, key)[: len(value)] = value.numpy()
    buffer.pos, buffer.full = int(state["pos"]), bool(state["full"])


class OffPolicyLearner(SB3Learner):
    """A named TD3/SAC learner with its own environment copy and seed, replay buffer and imitation optimiser."""

    def __init__(self, name: str, section: RLSection, seed: int) -> None:
        self.name, self.section = name, section
        cfg = section.offpolicy
        self.round_steps = cfg.round_steps
        self.env = make_vec_env(section.env)
        extra: dict[str, Any] = {}
        if section.algo == "td3" and cfg.action_noise > 0:
            dims = self.env.action_space.shape[0]
            extra["action_noise"] = NormalActionNoise(np.zeros(dims), cfg.action_noise * np.ones(dims))
        self.model = ALGORITHMS[section.algo](
            "MlpPolicy",
            self.env,
            learning_rate=cfg.lr,
            buffer_size=cfg.buffer_size,
            learning_starts=cfg.learning_starts,
            batch_size=cfg.batch_size,
            tau=cfg.tau,
            gamma=cfg.gamma,
            train_freq=cfg.train_freq,
            gradient_steps=cfg.gradient_steps,
            policy_kwargs={"net_arch": list(section.hidden)},
            seed=seed,
            device="cpu",
            verbose=0,
            **extra,
        )
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.memory = ReplayMemory(self.model.replay_buffer)
        self.imitation_optimizer = torch.optim.Adam(self.policy.actor.parameters(), lr=section.dpd.lr or cfg.lr)

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        found = {"actor": self.policy.actor.optimizer, "critic": self.policy.critic.optimizer}
        if getattr(self.model, "ent_coef_optimizer", None) is not None:  # SAC with a learned entropy coefficient
            found["ent_coef"] = self.model.ent_coef_optimizer
        return found

    # ---- checkpoint ----

    def state(self) -> dict[str, Any]:
        m = self.model
        state = {
            "optimizers": {k: opt.state_dict() for k, opt in self._optimizers().items()},
            "imitation_optimizer": self.imitation_optimizer.state_dict(),
            "replay": buffer_state(m.replay_buffer),
            "action_rng": json.dumps(m.action_space.np_random.bit_generator.state),
            **sb3_state(m, self.env),
        }
        if getattr(m, "log_ent_coef", None) is not None:
            state["log_ent_coef"] = m.log_ent_coef.detach().clone()
        return state

    def load(self, state: dict[str, Any]) -> None:
        m = self.model
        for key, opt in self._optimizers().items():
            opt.load_state_dict(state["optimizers"][key])
        self.imitation_optimizer.load_state_dict(state["imitation_optimizer"])
        load_buffer(m.replay_buffer, state["replay"])
        m.action_space.np_random.bit_generator.state = json.loads(state["action_rng"])
        if "log_ent_coef" in state:
            with torch.no_grad():
                m.log_ent_coef.copy_(state["log_ent_coef"])
        load_sb3_state(m, self.env, state)
