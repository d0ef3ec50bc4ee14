"""The ``task: rl`` driver: one loop of rounds for a single learner, DPD's two learners, or policy distillation.

A round is one update of every learner (or one collect-and-train of a distilled student), so that the budget
is spent in equal shares: after round k every learner has taken exactly k · n_steps environment steps, and the
run stops at ``rl.total_steps`` in all (``kdlab.rl_config`` refuses a budget that does not split into whole
rounds; the loop checks the count after every round). The run directory is the usual one: config.yaml,
metrics.jsonl (every finished episode with its learner and budget step), checkpoints/ (every
``rl.checkpoint_every`` rounds: policies as safetensors, the rest — optimisers, memories, environment states,
random generators — in a ``weights_only`` state.pt), policies/*.safetensors and summary.json (final evaluation
return and area under the learning curve per learner).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.utils import set_random_seed
from torch import nn

from kdlab.config import RunConfig
from kdlab.engine.checkpoint import Position, latest_checkpoint, load_checkpoint, save_checkpoint, save_weights
from kdlab.engine.loop import progress_bar
from kdlab.engine.metrics_log import MetricsLog
from kdlab.engine.rundir import prepare_out, run_accelerator, versions, write_config, write_summary
from kdlab.errors import ConfigError, TrainingError

from . import curves
from .algorithms import actor_parameters, build_policy, check, make_learner
from .distill import Distiller
from .envs import evaluate_policy_return
from .imitation import dpd_step
from .teacher import load_teacher

EVAL_SEED = 1_000_000  # evaluation episodes use seeds no training environment starts from


class _Empty:
    """The engine checkpoint's optimizer/scheduler slots: an RL run keeps all of its state in ``RunState``."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class RunState:
    """Everything besides the policies' weights that a resumed run needs to continue the same curve."""

    def __init__(self, agents: dict[str, Any], rng: np.random.Generator) -> None:
        self.agents, self.rng, self.round = agents, rng, 0

    def state_dict(self) -> dict[str, Any]:
        legacy = np.random.get_state()
        return {
            "round": self.round,
            "agents": {name: agent.state() for name, agent in self.agents.items()},
            "rng": json.dumps(self.rng.bit_generator.state),
            "numpy": [torch.from_numpy(legacy[1].astype(np.int64)), json.dumps([legacy[0], *legacy[2:]])],
            "python": json.dumps(random.getstate()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        for name, agent in self.agents.items():
            agent.load(state["agents"][name])
        self.rng.bit_generator.state = json.loads(state["rng"])
        head = json.loads(state["numpy"][1])
        np.random.set_state((head[0], state["numpy"][0].numpy().astype(np.uint32), *head[1:]))
        version, internal, gauss = json.loads(state["python"])
        random.setstate((version, tuple(internal), gauss))


def _check_mode(cfg: RunConfig, distilling: bool) -> None:
    mode = cfg.rl.mode
    if distilling and mode == "single":
        raise ConfigError("kdlab distill with task: rl needs rl.mode: dpd or distill (one learner is kdlab train)")
    if not distilling and mode == "distill":
        raise ConfigError("rl.mode: distill distils teacher.run's policy: use kdlab distill or kdlab rl")
    if cfg.tracking.tensorboard or cfg.tracking.mlflow:
        raise ConfigError("tracking: task: rl logs to metrics.jsonl only (kdlab report draws its curves)")
    if (mode == "distill") != (cfg.teacher is not None):
        raise ConfigError("rl.mode: distill needs teacher.run (a finished task: rl run); other modes take no teacher")


def describe(cfg: RunConfig) -> str:
    s = cfg.rl
    if s.mode == "dpd":
        sign = ", reversed sign" if s.dpd.reversed else ""
        beta = f" β={s.dpd.beta}" if s.dpd.weighting == "soft" else ""
        algo = "" if s.algo == "ppo" else f"{s.algo}, "
        return f"dpd ({algo}{s.dpd.weighting}{beta}{sign}, every {s.dpd.every} updates)"
    if s.mode == "distill":
        return f"policy distillation ({s.distill.states} states)"
    return f"{s.algo} (single learner)"


def run_rl(cfg: RunConfig, *, distilling: bool, resume: bool, overwrite: bool, callbacks=None) -> dict[str, Any]:
    """One ``task: rl`` run; returns its summary (also written to ``<out>/summary.json``). ``callbacks``:
    callables receiving ``{"round", "env_steps"}`` after every round (before its checkpoint)."""
    wall_start = time.perf_counter()
    _check_mode(cfg, distilling)
    section, out = cfg.rl, Path(cfg.out)
    check(section)  # an unknown environment, or one the algorithm cannot act in: one line, nothing written
    teacher = load_teacher(cfg) if section.mode == "distill" else None
    acc = run_accelerator(cfg.train, cfg.tracking, out)
    prepare_out(out, resume, overwrite, acc)
    write_config(out, cfg)
    set_random_seed(cfg.seed)
    if teacher is not None:
        student = build_policy(section, section.distill.hidden, section.distill.lr)
        agents: dict[str, Any] = {"student": Distiller(section, student, teacher, cfg.seed)}
        policies = {"student": student}
    else:
        names = ["a", "b"][: section.learners]
        agents = {n: make_learner(n, section, cfg.seed + i * section.dpd.seed_offset) for i, n in enumerate(names)}
        policies = {n: a.policy for n, a in agents.items()}
    state = RunState(agents, np.random.default_rng(cfg.seed))
    modules = nn.ModuleDict(policies)
    checkpoint = latest_checkpoint(out / "checkpoints") if resume else None
    offset = None
    if checkpoint is not None:
        offset = load_checkpoint(checkpoint, modules, _Empty(), _Empty(), state).metrics_offset
    log = MetricsLog(out / "metrics.jsonl", acc, offset)
    rounds = section.total_steps // section.round_steps
    with progress_bar(cfg.train.progress) as bar:
        task = bar.add_task(describe(cfg).split(" (")[0], total=rounds, completed=state.round, info="")
        while state.round < rounds:
            info = _round(cfg, agents, state, log)
            state.round += 1
            spent = sum(a.steps for a in agents.values())
            if spent != state.round * section.round_steps:  # the equal-budget invariant
                raise TrainingError(f"rl: {spent} environment steps after {state.round} rounds; expected equal shares")
            bar.update(task, completed=state.round, info=info)
            for callback in callbacks or []:
                callback({"round": state.round, "env_steps": spent})
            if state.round % section.checkpoint_every == 0 and state.round < rounds:
                position = Position(0, 0, state.round, log.offset())
                save_checkpoint(out / "checkpoints", modules, _Empty(), _Empty(), position, state)
    summary = _finish(cfg, agents, policies, out, log, wall_start)
    write_summary(out, summary, acc)
    return summary


def _round(cfg: RunConfig, agents: dict[str, Any], state: RunState, log: MetricsLog) -> str:
    """One update of every learner (and DPD's distillation steps); returns the progress bar's text."""
    section = cfg.rl
    n = len(agents)
    shown = []
    for i, (name, agent) in enumerate(agents.items()):
        if isinstance(agent, Distiller):
            episodes, loss = agent.round()
            ret = evaluate_policy_return(agent.student, section.env, section.eval_episodes, EVAL_SEED)["return_mean"]
            log.log(
                {"kind": "eval", "learner": name, "budget_step": agent.steps, "return": ret, "loss": loss}, agent.steps
            )
            actor = "student" if section.distill.states == "student" else "teacher"
            _log_episodes(log, f"{actor} (acting)", episodes, 1)
            shown.append(f"{name} {ret:.1f}")
            continue
        episodes = agent.update()
        _log_episodes(log, name, episodes, n)
        if episodes:
            shown.append(f"{name} {np.mean([e[1] for e in episodes[-10:]]):.1f}")
        peer = list(agents.values())[1 - i] if section.mode == "dpd" else None
        if peer is not None and agent.updates % section.dpd.every == 0 and peer.memory.size:
            obs = torch.as_tensor(peer.memory.sample(section.dpd.batch, state.rng))
            stats = dpd_step(agent.policy, peer.policy, agent.imitation_optimizer, obs, section.dpd, None)
            log.log({"kind": "dpd", "learner": name, "budget_step": agent.steps * n, **stats}, agent.steps * n)
    return "return " + ", ".join(shown)


def _log_episodes(log: MetricsLog, name: str, episodes: list[tuple[int, float, int]], n: int) -> None:
    for step, ret, length in episodes:
        record = {"kind": "episode", "learner": name, "env_step": step, "budget_step": step * n, "return": ret}
        log.log({**record, "length": length}, step * n)


def _finish(cfg, agents, policies, out: Path, log: MetricsLog, wall_start: float) -> dict[str, Any]:
    """Final evaluation, the policies as safetensors, and the summary."""
    section = cfg.rl
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    kind = "eval" if section.mode == "distill" else "episode"
    per: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        final = evaluate_policy_return(policy, section.env, section.eval_episodes, EVAL_SEED)
        points = curves.episodes(records, name, kind)
        per[name] = {
            "final_return": final["return_mean"],
            "final_return_std": final["return_std"],
            "auc": curves.area(points, section.total_steps),
            "last_train_return": float(np.mean([p[1] for p in points[-curves.WINDOW :]])) if points else None,
            "env_steps": agents[name].steps,
        }
    best = max(per, key=lambda n: per[n]["final_return"])
    meta = {
        "env": section.env.id,
        "hidden": json.dumps(section.distill.hidden if section.mode == "distill" else section.hidden),
    }
    for name, policy in policies.items():
        save_weights(policy, out / "policies" / f"{name}.safetensors", meta)
    save_weights(policies[best], out / "model.safetensors", {**meta, "learner": best})
    final_return = float(np.mean([p["final_return"] for p in per.values()]))
    summary: dict[str, Any] = {
        "name": cfg.name,
        "complete": True,
        "task": "rl",
        "mode": section.mode,
        "method": describe(cfg),
        "model": f"mlp{section.distill.hidden if section.mode == 'distill' else section.hidden}",
        "env": section.env.id,
        "env_steps": sum(a.steps for a in agents.values()),
        "budget": section.total_steps,
        "final_return": final_return,
        "auc": float(np.mean([p["auc"] for p in per.values()])),
        "best_learner": best,
        "learners": per,
        "parameters": actor_parameters(policies[best]),
        "test": {"return": final_return},
        "evaluation": {"test": {"return": final_return, "episodes": section.eval_episodes}},
        "wall_seconds": time.perf_counter() - wall_start,
        "threads": torch.get_num_threads(),
        "seed": cfg.seed,
        "versions": _versions(),
    }
    teacher = agents.get("student")
    if teacher is not None:
        t = evaluate_policy_return(teacher.teacher, section.env, section.eval_episodes, EVAL_SEED)
        summary["teacher"] = str(cfg.teacher.run)
        summary["teacher_return"] = t["return_mean"]
        summary["teacher_parameters"] = actor_parameters(teacher.teacher)
    return summary


def _versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3

    return versions(gymnasium=gymnasium.__version__, stable_baselines3=stable_baselines3.__version__)
