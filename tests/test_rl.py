"""task: rl — DPD's weights and imitation step, the equal budget, exact resume, and policy distillation.

Tiny networks and budgets (a few hundred environment steps): the whole file runs in well under 30 s.
"""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from typer.testing import CliRunner

from kdlab.cli import app
from kdlab.config import load_config
from kdlab.errors import ConfigError
from kdlab.rl import dpd_step, imitation_step, normalise, raw_weights, run
from kdlab.rl_config import DPDConfig


class Match(gym.Env):
    """A tiny task: the observation is a one-hot cue, the reward 1 for the action it names; 10 steps."""

    observation_space = spaces.Box(0.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.cue = int(self.np_random.integers(4))
        return np.eye(4, dtype=np.float32)[self.cue], {}

    def step(self, action):
        reward = float(int(action) == self.cue)
        self.t += 1
        self.cue = int(self.np_random.integers(4))
        return np.eye(4, dtype=np.float32)[self.cue], reward, False, self.t >= 10, {}


gym.register("KdlabMatch-v0", entry_point=Match)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _policy(obs_space, action_space, seed: int) -> ActorCriticPolicy:
    torch.manual_seed(seed)
    return ActorCriticPolicy(obs_space, action_space, lambda _: 1e-3, net_arch={"pi": [8], "vf": [8]})


def _cartpole(seed: int) -> ActorCriticPolicy:
    env = gym.make("CartPole-v1")
    return _policy(env.observation_space, env.action_space, seed)


def _config(tmp_path, name: str, **rl) -> dict:
    section = {
        "total_steps": 512,
        "hidden": [8],
        "eval_episodes": 2,
        "ppo": {"n_steps": 128, "batch_size": 32, "n_epochs": 1},
    }
    section.update(rl)
    return {"task": "rl", "out": str(tmp_path / name), "seed": 1, "train": {"progress": False}, "rl": section}


# ---- DPD's weights ----


def test_a_state_where_the_peer_is_better_weighs_more_than_one():
    v_self = torch.tensor([0.0, 0.0, 0.0])
    v_peer = torch.tensor([2.0, 0.0, -2.0])
    soft = raw_weights(v_peer, v_self, DPDConfig(beta=0.5))
    assert soft[0] > 1 and soft[1] == 1 and soft[2] < 1
    assert torch.allclose(soft, torch.exp(0.5 * (v_peer - v_self)))
    assert torch.equal(raw_weights(v_peer, v_self, DPDConfig(weighting="hard")), torch.tensor([1.0, 0.0, 0.0]))
    flipped = raw_weights(v_peer, v_self, DPDConfig(beta=0.5, reversed=True))  # the authors' PPO sign
    assert flipped[0] < 1 and flipped[2] > 1
    assert torch.equal(raw_weights(v_peer, v_self, DPDConfig(weighting="uniform")), torch.ones(3))
    clipped = raw_weights(torch.tensor([100.0, -100.0]), torch.zeros(2), DPDConfig(beta=1.0, w_min=0.1, w_max=10.0))
    assert torch.equal(clipped, torch.tensor([10.0, 0.1]))
    assert torch.allclose(normalise(soft).sum(), torch.tensor(1.0))
    assert torch.equal(normalise(torch.zeros(2)), torch.zeros(2))


def _set_value(policy: ActorCriticPolicy, value: float) -> None:
    with torch.no_grad():
        policy.value_net.weight.zero_()
        policy.value_net.bias.fill_(value)


def test_the_step_imitates_only_where_the_peer_value_is_higher():
    """Through dpd_step itself: hard weights take a step when V_peer > V_self, none when it is lower."""
    obs = torch.randn(16, 4)
    for peer_value, self_value, skipped in ((1.0, 0.0, False), (0.0, 1.0, True)):
        learner, peer = _cartpole(0), _cartpole(1)
        _set_value(learner, self_value)
        _set_value(peer, peer_value)
        before = copy.deepcopy(learner.state_dict())
        opt = torch.optim.SGD(learner.parameters(), lr=0.5)
        stats = dpd_step(learner, peer, opt, obs, DPDConfig(weighting="hard"), None)
        moved = any(not torch.equal(before[k], v) for k, v in learner.state_dict().items())
        assert stats["dpd/skipped"] is skipped and moved is not skipped
        assert stats["dpd/peer_better"] == (0.0 if skipped else 1.0)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_uniform_weights_are_behaviour_cloning(env_id):
    """One uniform DPD step = one SGD step of plain behaviour cloning on the same states: KL(peer ‖ self)
    (cross-entropy to the peer's probabilities) for discrete actions, MSE to the peer's means for continuous."""
    env = gym.make(env_id)
    learner, peer = (
        _policy(env.observation_space, env.action_space, 0),
        _policy(env.observation_space, env.action_space, 1),
    )
    with torch.no_grad():  # away from SB3's near-zero initial head: distributions far apart, a real gradient
        for policy in (learner, peer):
            policy.action_net.weight.normal_()
    reference = copy.deepcopy(learner)
    obs = torch.randn(32, env.observation_space.shape[0])

    loss = imitation_step(learner, torch.optim.SGD(learner.parameters(), lr=0.3), obs, *_target(peer, obs))
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.3)
    features = reference.mlp_extractor.forward_actor(reference.extract_features(obs))
    out = reference.action_net(features)
    with torch.no_grad():
        target_out = peer.action_net(peer.mlp_extractor.forward_actor(peer.extract_features(obs)))
    if isinstance(env.action_space, spaces.Discrete):
        p = torch.softmax(target_out, -1)
        ref_loss = torch.nn.functional.kl_div(torch.log_softmax(out, -1), p, reduction="batchmean")
    else:
        ref_loss = torch.nn.functional.mse_loss(out, target_out)
    ref_opt.zero_grad()
    ref_loss.backward()
    ref_opt.step()
    assert loss == pytest.approx(float(ref_loss.detach()), rel=1e-5) and loss > 1e-2
    for (name, a), b in zip(learner.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def _target(peer, obs):
    from kdlab.rl.imitation import policy_targets

    uniform = normalise(raw_weights(torch.zeros(len(obs)), torch.zeros(len(obs)), DPDConfig(weighting="uniform")))
    return policy_targets(peer, obs), uniform, None


# ---- budget, run directory, resume ----


def test_a_budget_that_does_not_split_into_equal_shares_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 2 learner"):
        load_config(_config(tmp_path, "x", mode="dpd", total_steps=384))
    load_config(_config(tmp_path, "x", mode="single", total_steps=384))  # 3 updates of one learner: fine


def test_single_and_dpd_spend_the_same_environment_steps(tmp_path):
    single = run(_config(tmp_path, "single"))
    dpd = run(_config(tmp_path, "dpd", mode="dpd", dpd={"every": 1, "batch": 32}))
    assert single["env_steps"] == dpd["env_steps"] == 512
    assert [v["env_steps"] for v in dpd["learners"].values()] == [256, 256]
    records = [json.loads(x) for x in (tmp_path / "dpd" / "metrics.jsonl").read_text().splitlines()]
    assert {r["learner"] for r in records if r["kind"] == "dpd"} == {"a", "b"}
    assert max(r["budget_step"] for r in records if r["kind"] == "episode") <= 512
    assert sorted(p.name for p in (tmp_path / "dpd" / "policies").iterdir()) == ["a.safetensors", "b.safetensors"]


def test_resume_continues_the_same_learning_curve(tmp_path):
    from kdlab.rl import run_rl

    base = _config(tmp_path, "full", mode="dpd", total_steps=512, dpd={"every": 1, "batch": 32})
    base["rl"]["ppo"]["n_steps"] = 64
    full = run_rl(load_config(base), distilling=True, resume=False, overwrite=False)

    class StopError(Exception):
        pass

    def stop(info):
        if info["round"] == 3:  # after the checkpoint of round 2; round 3's lines must be dropped and redone
            raise StopError

    cut = load_config({**base, "out": str(tmp_path / "cut")})
    with pytest.raises(StopError):
        run_rl(cut, distilling=True, resume=False, overwrite=False, callbacks=[stop])
    assert not (tmp_path / "cut" / "summary.json").exists()
    resumed = run(cut, resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert resumed["learners"] == full["learners"]
    from safetensors.torch import load_file

    for name in ("a", "b"):
        a, b = (load_file(tmp_path / run_dir / "policies" / f"{name}.safetensors") for run_dir in ("full", "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- policy distillation ----


def _perfect_teacher(tmp_path):
    """A finished rl run on Match whose policy is set by hand to always name the cue (return 10 of 10): the
    test is about distillation, not about how fast PPO learns."""
    run(_config(tmp_path, "teacher", env={"id": "KdlabMatch-v0"}, total_steps=128, hidden=[16], ppo={"n_steps": 128}))
    from safetensors.torch import load_file, save_file

    path = tmp_path / "teacher" / "model.safetensors"
    state = load_file(path)
    first, head = torch.zeros(16, 4), torch.zeros(4, 16)
    first[:4], head[:, :4] = 3 * torch.eye(4), 10 * torch.eye(4)
    state.update({"mlp_extractor.policy_net.0.weight": first, "mlp_extractor.policy_net.0.bias": torch.zeros(16)})
    state.update({"action_net.weight": head, "action_net.bias": torch.zeros(4)})
    save_file(state, path)
    return tmp_path / "teacher"


def test_a_distilled_student_reaches_its_teacher_return(tmp_path):
    teacher = _perfect_teacher(tmp_path)
    cfg = _config(tmp_path, "student", env={"id": "KdlabMatch-v0"}, mode="distill", total_steps=256, eval_episodes=5)
    cfg["rl"]["distill"] = {"hidden": [4], "rollout_steps": 128, "steps": 40, "batch_size": 64, "lr": 0.03}
    cfg["teacher"] = {"run": str(teacher)}
    student = run(cfg)
    assert student["teacher_return"] == 10.0
    assert student["final_return"] == 10.0
    assert student["parameters"] < student["teacher_parameters"]
    records = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["budget_step"] for r in records if r["kind"] == "eval"] == [128, 256]
    dagger = {**cfg["rl"], "distill": {**cfg["rl"]["distill"], "states": "student"}}
    assert run({**cfg, "out": str(tmp_path / "dagger"), "rl": dagger})["final_return"] == 10.0
    untrained = run(
        {
            **cfg,
            "out": str(tmp_path / "none"),
            "rl": {**dagger, "distill": {**dagger["distill"], "steps": 1, "lr": 1e-6}},
        }
    )
    assert untrained["final_return"] < 5  # what the student gets without distillation


# ---- commands ----


def test_commands_and_bad_inputs(tmp_path):
    runner = CliRunner()
    path = tmp_path / "single.yaml"
    path.write_text(json.dumps(_config(tmp_path, "cli", total_steps=256)))
    result = runner.invoke(app, ["rl", str(path)])
    assert result.exit_code == 0, result.output
    assert "CartPole-v1: final return" in result.output
    again = runner.invoke(app, ["rl", str(path), "--resume"])
    assert again.exit_code == 0 and "already finished; nothing done" in again.output
    result = runner.invoke(
        app, ["distill", str(path), "--set", f"out={tmp_path / 'cli2'}"]
    )  # through the registry: a single learner is not distillation
    assert "rl.mode: dpd or distill" in str(result.exception)
    with pytest.raises(ConfigError, match="cannot make 'NoSuchEnv-v9'"):
        run(_config(tmp_path, "bad", env={"id": "NoSuchEnv-v9"}))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match=r"needs teacher\.run"):
        run(_config(tmp_path, "noteacher", mode="distill"))
    from kdlab.api import evaluate
    from kdlab.eval.report import write_report

    assert (
        evaluate(tmp_path / "cli")["test"]["return"]
        == json.loads((tmp_path / "cli" / "summary.json").read_text())["final_return"]
    )

    html = write_report([tmp_path / "cli"], tmp_path / "report.html").read_text()
    assert "returns of" in html and "test return" in html
