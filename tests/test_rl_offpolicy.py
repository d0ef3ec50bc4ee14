"""task: rl with an off-policy learner (SB3 TD3 / SAC) on a continuous environment: the critic's Q(s, π(s)) as
DPD's value (sign), equal budgets, exact resume with the replay buffer, and bad configs as one line.

Tiny networks, a few hundred Pendulum-v1 steps: the file runs in seconds.
"""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy

from kdlab.config import load_config
from kdlab.errors import ConfigError
from kdlab.rl import dpd_step, raw_weights, run, run_rl
from kdlab.rl.imitation import values
from kdlab.rl_config import DPDConfig

POLICIES = {"td3": TD3Policy, "sac": SACPolicy}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _policy(algo: str, seed: int):
    env = gym.make("Pendulum-v1")
    torch.manual_seed(seed)
    return POLICIES[algo](env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8])


def _set_q(policy, value: float) -> None:
    """Every Q head of the critic outputs ``value`` whatever the state and action."""
    with torch.no_grad():
        for q in policy.critic.q_networks:
            q[-1].weight.zero_()
            q[-1].bias.fill_(value)


def _config(tmp_path, name: str, algo: str = "td3", **rl) -> dict:
    section = {
        "algo": algo,
        "env": {"id": "Pendulum-v1"},
        "total_steps": 512,
        "hidden": [8],
        "eval_episodes": 1,
        "offpolicy": {"round_steps": 64, "learning_starts": 64, "batch_size": 32, "buffer_size": 1000, "train_freq": 4},
    }
    section.update(rl)
    return {"task": "rl", "out": str(tmp_path / name), "seed": 1, "train": {"progress": False}, "rl": section}


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_the_critic_value_weighs_the_states_where_the_peer_is_better(algo):
    """V(s) of an actor-critic is Q(s, π(s)) from its first critic; a peer with higher Q gets weight > 1 and
    the (hard) step moves the learner's actor, never its critic; a peer with lower Q takes no step."""
    obs = torch.randn(16, 3)
    learner = _policy(algo, 0)
    with torch.no_grad():
        action = learner.actor(obs, deterministic=True) if algo == "sac" else learner.actor(obs)
        expected = learner.critic.q1_forward(obs, action).flatten()
    assert torch.allclose(values(learner, obs), expected) and expected.std() > 0
    for peer_q, self_q, skipped in ((1.0, -1.0, False), (-1.0, 1.0, True)):
        learner, peer = _policy(algo, 0), _policy(algo, 1)
        _set_q(learner, self_q)
        _set_q(peer, peer_q)
        v_peer, v_self = values(peer, obs), values(learner, obs)
        soft = raw_weights(v_peer, v_self, DPDConfig(beta=0.5))
        assert bool((soft > 1).all()) is not skipped and torch.allclose(soft, torch.exp(0.5 * (v_peer - v_self)))
        before = copy.deepcopy(learner.state_dict())
        opt = torch.optim.SGD(learner.actor.parameters(), lr=0.5)
        stats = dpd_step(learner, peer, opt, obs, DPDConfig(weighting="hard"), None)
        after = learner.state_dict()
        moved = {k.split(".")[0] for k, v in after.items() if not torch.equal(before[k], v)}
        assert stats["dpd/skipped"] is skipped
        assert moved == (set() if skipped else {"actor"})
        assert stats["dpd/advantage"] == pytest.approx(peer_q - self_q)


def test_td3_single_and_dpd_spend_the_same_environment_steps_and_teach(tmp_path):
    single = run(_config(tmp_path, "single"))
    dpd = run(_config(tmp_path, "dpd", mode="dpd", dpd={"every": 1, "batch": 32}))
    assert single["env_steps"] == dpd["env_steps"] == 512
    assert [v["env_steps"] for v in dpd["learners"].values()] == [256, 256]
    assert single["method"] == "td3 (single learner)" and dpd["method"].startswith("dpd (td3, soft")
    records = [json.loads(x) for x in (tmp_path / "dpd" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "dpd"]
    assert {r["learner"] for r in steps} == {"a", "b"} and all(r["dpd/loss"] is not None for r in steps)
    assert single["parameters"] == 3 * 8 + 8 + 8 * 1 + 1  # the actor only: no critic, no target networks
    # the TD3 run teaches: its TD3Policy loads from model.safetensors; a PPO-shaped student imitates its actions
    cfg = _config(tmp_path, "student", algo="ppo", mode="distill", total_steps=256)
    cfg["rl"]["distill"] = {"hidden": [4], "rollout_steps": 128, "steps": 5, "batch_size": 32}
    student = run({**cfg, "teacher": {"run": str(tmp_path / "single")}})
    assert student["teacher_return"] == pytest.approx(single["final_return"])
    assert student["env_steps"] == 256 and student["parameters"] < student["teacher_parameters"] == 41


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_offpolicy_resume_continues_the_same_learning_curve(tmp_path, algo):
    """Cut a run, resume it: the same metrics lines and the same policies. Two cuts: one whose checkpoint
    (round 1, 64 steps) is still in the random warm-up (96 steps: the action space's generator must be
    restored), one whose checkpoint (round 2, 128 steps) is after training began (the replay buffers, both
    optimisers and SAC's entropy coefficient must be; SAC runs only this one)."""
    base = _config(tmp_path, "full", algo, mode="dpd", total_steps=512, dpd={"every": 1, "batch": 32})
    base["rl"]["offpolicy"]["learning_starts"] = 96
    full = run_rl(load_config(base), distilling=True, resume=False, overwrite=False)

    class StopError(Exception):
        pass

    for stop_round in (2, 3) if algo == "td3" else (3,):  # the warm-up cut tests code TD3 and SAC share

        def stop(info, stop_round=stop_round):
            if info["round"] == stop_round:  # after the checkpoint of the round before
                raise StopError

        cut = load_config({**base, "out": str(tmp_path / f"cut{stop_round}")})
        with pytest.raises(StopError):
            run_rl(cut, distilling=True, resume=False, overwrite=False, callbacks=[stop])
        resumed = run(cut, resume=True)
        metrics = (tmp_path / f"cut{stop_round}" / "metrics.jsonl").read_text()
        assert metrics == (tmp_path / "full" / "metrics.jsonl").read_text(), stop_round
        assert resumed["learners"] == full["learners"]
        for name in ("a", "b"):
            a, b = (load_file(tmp_path / d / "policies" / f"{name}.safetensors") for d in ("full", f"cut{stop_round}"))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (stop_round, name)


def test_bad_offpolicy_configs_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"rl.algo: td3 needs continuous \(Box\) actions; CartPole-v1 has Discrete"):
        run(_config(tmp_path, "discrete", env={"id": "CartPole-v1"}))
    assert not (tmp_path / "discrete").exists()
    with pytest.raises(ConfigError, match="algo"):
        load_config(_config(tmp_path, "x", algo="dqn"))
    with pytest.raises(ConfigError, match=r"multiple of 2 learner\(s\) x offpolicy.round_steps"):
        load_config(_config(tmp_path, "x", mode="dpd", total_steps=576))
    with pytest.raises(ConfigError, match=r"round_steps \(64\) must be a multiple of train_freq \(5\)"):
        load_config(_config(tmp_path, "x", offpolicy={"round_steps": 64, "train_freq": 5}))
