"""Classic policy distillation (Rusu et al., 2016): a trained teacher policy into a smaller student.

Each round collects ``rollout_steps`` environment steps — acted by the teacher (``states: teacher``) or by the
student itself (``states: student``: DAgger, Ross et al. 2011, the student meets the states its own mistakes
lead to and the teacher labels them) — adds the states to an aggregated data set, and takes ``steps`` gradient
steps of KL(teacher ‖ student) (discrete) or mean regression (continuous) on minibatches of it. The teacher
labels states when they are used, so only observations are stored. Collected steps count against
``rl.total_steps`` like any learner's.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.policies import BasePolicy

from kdlab.rl_config import RLSection

from .envs import make_env, restore, snapshot
from .imitation import imitation_step, policy_targets


class Distiller:
    """The student, its environment copy, the aggregated states and the round loop."""

    def __init__(self, section: RLSection, student: BasePolicy, teacher: BasePolicy, seed: int):
        self.section, self.student, self.teacher = section, student, teacher
        self.cfg = section.distill
        self.env = make_env(section.env)
        self.obs, _ = self.env.reset(seed=seed)
        self.optimizer = torch.optim.Adam(student.parameters(), lr=self.cfg.lr)
        self.states: list[np.ndarray] = []
        self.steps = 0
        self.episode = [0.0, 0]  # running return and length of the episode in progress
        self.rng = np.random.default_rng(seed)

    @property
    def actor(self) -> BasePolicy:
        return self.student if self.cfg.states == "student" else self.teacher

    def collect(self) -> list[tuple[int, float, int]]:
        """``rollout_steps`` steps of the acting policy (sampled actions); returns the episodes it finished."""
        finished = []
        for _ in range(self.cfg.rollout_steps):
            self.states.append(np.asarray(self.obs, dtype=np.float32))
            with torch.no_grad():
                action, _ = self.actor.predict(self.obs, deterministic=False)
            self.obs, reward, terminated, truncated, _ = self.env.step(action)
            self.steps += 1
            self.episode = [self.episode[0] + float(reward), self.episode[1] + 1]
            if terminated or truncated:
                finished.append((self.steps, self.episode[0], self.episode[1]))
                self.episode = [0.0, 0]
                self.obs, _ = self.env.reset()
        return finished

    def train(self) -> float:
        """``steps`` minibatch steps on the aggregated states; returns the mean loss."""
        data = torch.as_tensor(np.stack(self.states))
        losses = []
        for _ in range(self.cfg.steps):
            obs = data[torch.as_tensor(self.rng.integers(0, len(data), size=self.cfg.batch_size))]
            target = policy_targets(self.teacher, obs)
            weights = torch.full((len(obs),), 1.0 / len(obs))
            losses.append(imitation_step(self.student, self.optimizer, obs, target, weights, None))
        return float(np.mean(losses))

    def round(self) -> tuple[list[tuple[int, float, int]], float]:
        episodes = self.collect()
        return episodes, self.train()

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "states": torch.as_tensor(np.stack(self.states)) if self.states else torch.zeros(0),
            "obs": torch.as_tensor(np.asarray(self.obs)),
            "steps": self.steps,
            "episode": json.dumps(self.episode),
            "rng": json.dumps(self.rng.bit_generator.state),
            "env": snapshot(self.env),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.states = list(state["states"].numpy()) if state["states"].numel() else []
        self.obs = state["obs"].numpy()
        self.steps = int(state["steps"])
        self.episode = json.loads(state["episode"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        restore(self.env, state["env"])
