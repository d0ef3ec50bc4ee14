"""Environments of a ``task: rl`` run: creation, evaluation, and a snapshot of their state for exact resume.

A checkpoint of an RL run must hold more than weights: where each environment is inside its episode, its
random generator, and the wrappers' counters (time limit, episode statistics). Gymnasium has no state API, so
``snapshot`` records every plain-data attribute (numbers, strings, lists, arrays) of each wrapper layer and of
the environment itself, plus its generator; ``restore`` sets them back. That is exact for the classic-control
environments (CartPole, Acrobot, Pendulum, MountainCar), whose whole state is such attributes; an environment
holding state in other objects (a physics engine) resumes from the right weights but not mid-episode exactly.
The snapshot is JSON text: it goes into ``state.pt`` (read with ``weights_only=True``), never a pickle.
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from kdlab.errors import ConfigError
from kdlab.rl_config import EnvConfig

_PLAIN = (bool, int, float, str, type(None))


def make_env(env: EnvConfig) -> gym.Env:
    """``gymnasium.make`` with one clear line for an unknown id or bad keyword arguments."""
    try:
        return gym.make(env.id, **env.kwargs)
    except (gym.error.Error, TypeError) as err:
        raise ConfigError(f"config: rl.env: cannot make {env.id!r}: {str(err).splitlines()[0]}") from None


def make_vec_env(env: EnvConfig) -> DummyVecEnv:
    """One environment, wrapped by SB3's Monitor (episode returns in ``info["episode"]``) in a DummyVecEnv."""
    return DummyVecEnv([lambda: Monitor(make_env(env))])


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return {"__npscalar__": value.item(), "dtype": str(value.dtype)}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=value["dtype"]).reshape(value["shape"])
    if isinstance(value, dict) and "__npscalar__" in value:
        return np.dtype(value["dtype"]).type(value["__npscalar__"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _is_plain(value: Any) -> bool:
    if isinstance(value, (*_PLAIN, np.generic)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biuf"
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    return False


def _layers(env: gym.Env) -> list[Any]:
    layers, node = [], env
    while node is not None:
        layers.append(node)
        node = node.__dict__.get("env")  # wrappers keep the inner environment in .env; the base has none
    return layers


def snapshot(env: gym.Env) -> str:
    """The plain-data state of every layer of ``env`` and its random generator, as JSON text."""
    layers = []
    for layer in _layers(env):
        attrs = {k: _encode(v) for k, v in vars(layer).items() if k != "env" and _is_plain(v)}
        layers.append({"type": type(layer).__name__, "attrs": attrs})
    rng = env.unwrapped.__dict__.get("_np_random")
    return json.dumps({"layers": layers, "rng": None if rng is None else rng.bit_generator.state})


def restore(env: gym.Env, text: str) -> None:
    """Set back what ``snapshot`` recorded; a different wrapper stack is a clear error (another environment)."""
    state = json.loads(text)
    layers = _layers(env)
    if [type(x).__name__ for x in layers] != [x["type"] for x in state["layers"]]:
        raise ConfigError("the checkpoint's environment has other wrappers than this run's; pass --overwrite")
    for layer, saved in zip(layers, state["layers"], strict=True):
        for key, value in saved["attrs"].items():
            decoded = _decode(value)
            if isinstance(getattr(layer, key, None), tuple) and isinstance(decoded, list):
                decoded = tuple(decoded)
            setattr(layer, key, decoded)
    if state["rng"] is not None:
        rng = np.random.Generator(getattr(np.random, state["rng"]["bit_generator"])())
        rng.bit_generator.state = state["rng"]
        env.unwrapped._np_random = rng


def evaluate_policy_return(policy: Any, env_cfg: EnvConfig, episodes: int, seed: int) -> dict[str, float]:
    """Mean and std of the undiscounted return of ``episodes`` deterministic episodes on a fresh environment
    seeded ``seed`` (evaluation steps are not part of any training budget)."""
    import torch

    env = make_env(env_cfg)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                action, _ = policy.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)), "episodes": episodes}
