"""Dual policy distillation (Lai et al., IJCAI 2020) against one PPO learner at equal environment steps, and
classic policy distillation of a teacher into a 4x smaller student.

    python benchmarks/dpd.py             # CartPole-v1 + Acrobot-v1, 5 arms x 5 seeds (~40 min, 2 shared cores)
    python benchmarks/dpd.py --quick     # CartPole only, 2 seeds, 8,192 steps (a smoke run)
    python benchmarks/dpd.py --envs Pendulum-v1   # continuous control with SAC learners (results/dpd_pendulum.*)

Arms (every run through ``kdlab.rl.run``, the same code as ``kdlab rl``), each at the same total budget:
  single     one PPO learner (Stable-Baselines3) with the whole budget;
  uniform    DPD, two learners with half the budget each, mutual imitation with equal weights;
  hard       DPD, weights 1[V_peer > V_self];
  soft       DPD, weights clip(exp(β (V_peer − V_self)), 0.01, 100), β = 0.5;
  reversed   DPD soft with the sign of the authors' PPO code, exp(β (V_self − V_peer)).
A DPD arm's numbers are the mean of its two learners (x axis of the curves: the run's total steps).
Budgets: CartPole-v1 12,288 and Acrobot-v1 16,384 environment steps per run (sized for a shared 2-core
machine; the paper uses 100k-20M). PPO: n_steps 256, batch 64, 5 epochs, lr 3e-4, 64x64 actor and critic.
DPD: one imitation step on 256 states of the peer's memory after every update of a learner (every: 1, steps:
1) — five times the authors' rate (1 step every 5 updates), whose effect at this budget would be too small to
see; 10 steps per update (a third of all gradient steps) held DPD far below one learner in a first run.
Final return: 10 deterministic evaluation episodes; AUC: mean rolling (10-episode) training return over the
budget. Distillation: a teacher trained once (single PPO learner, 40,960 steps, seed 100) → a [30, 30]
student (4.0x fewer actor parameters) on the teacher's states and on the student's own (DAgger), 5,120
steps each, 5 seeds. Results: benchmarks/results/dpd.{json,md,png} (--quick: benchmarks/results/quick/).

Pendulum-v1 (``--envs Pendulum-v1``; results/dpd_pendulum.*, no distillation part): the same five arms with
Stable-Baselines3 SAC learners (``rl.algo: sac``; DPD's value is the critic's Q(s, π(s))), 10,000 environment
steps per run, rounds of 200 steps (one episode), SAC lr 1e-3, batch 128, γ 0.98, 500 warm-up steps, one
gradient step every 2 environment steps (train_freq 2: half SB3's default, for the shared machine), 64x64
actor and critics. DPD: 20 imitation steps on 256 states of the peer's replay buffer after every round,
β = 0.75 (the authors' DDPG example) — a tenth of the authors' DDPG rate (one step per training step).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
ARMS = {
    "single": {"mode": "single"},
    "uniform": {"mode": "dpd", "dpd": {"weighting": "uniform"}},
    "hard": {"mode": "dpd", "dpd": {"weighting": "hard"}},
    "soft": {"mode": "dpd", "dpd": {"weighting": "soft"}},
    "reversed": {"mode": "dpd", "dpd": {"weighting": "soft", "reversed": True}},
}
DPD = {"every": 1, "steps": 1, "batch": 256, "beta": 0.5}
PPO = {"n_steps": 256, "batch_size": 64, "n_epochs": 5, "lr": 3e-4}
BUDGET = {"CartPole-v1": 12_288, "Acrobot-v1": 16_384}  # sized for a shared 2-core machine (load avg ~8)
# continuous control: off-policy learners, each with its own budget and DPD setting
OFFPOLICY = {
    "Pendulum-v1": {
        "algo": "sac",
        "budget": 10_000,
        "offpolicy": {
            "round_steps": 200,
            "learning_starts": 500,
            "train_freq": 2,
            "batch_size": 128,
            "lr": 1e-3,
            "gamma": 0.98,
        },
        "dpd": {"every": 1, "steps": 20, "batch": 256, "beta": 0.75},
    }
}
STUDENT = [30, 30]


def _config(env: str, arm: str, seed: int, steps: int, out: Path) -> dict[str, Any]:
    rl = {"env": {"id": env}, "total_steps": steps, "ppo": PPO, "hidden": [64, 64], **ARMS[arm]}
    off = OFFPOLICY.get(env)
    if off is not None:
        rl.update({"algo": off["algo"], "offpolicy": {**off["offpolicy"], "buffer_size": steps}})
    if rl["mode"] == "dpd":
        rl["dpd"] = {**(DPD if off is None else off["dpd"]), **ARMS[arm]["dpd"]}
    return {
        "task": "rl",
        "name": f"{env}-{arm}-s{seed}",
        "out": str(out),
        "seed": seed,
        "train": {"progress": False},
        "rl": rl,
    }


def _run(config: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process (one torch thread); a finished run directory is read, not run again."""
    import torch

    torch.set_num_threads(1)
    from kdlab.rl import run

    summary = Path(config["out"]) / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    return run(config, overwrite=True)


def _curve(run_dir: Path, budget: int, points: int = 50) -> list[float]:
    """The run's learning curve on a grid of the budget: the mean of its learners' rolling returns."""
    from kdlab.rl import curves

    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    grid = curves.grid(budget, points)
    learners = [n for n in curves.learner_names(records) if curves.episodes(records, n)]
    return np.mean([curves.curve(curves.episodes(records, n), grid) for n in learners], axis=0).tolist()


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs", nargs="+", default=None, help="default: CartPole-v1 Acrobot-v1 (+ distillation)")
    args = parser.parse_args()
    envs = args.envs or (["CartPole-v1"] if args.quick else ["CartPole-v1", "Acrobot-v1"])
    unknown = [e for e in envs if e not in BUDGET and e not in OFFPOLICY]
    if unknown:
        parser.error(f"no budget for {unknown}; known: {[*BUDGET, *OFFPOLICY]}")
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    budget = (
        {"CartPole-v1": 8192, "Pendulum-v1": 2000}
        if args.quick
        else {**BUDGET, **{e: o["budget"] for e, o in OFFPOLICY.items()}}
    )
    budget = {e: budget[e] for e in envs}
    teacher_steps, distill_steps = (8192, 2048) if args.quick else (40_960, 5_120)
    distill = "CartPole-v1" in envs  # the policy-distillation part runs with the default (CartPole) benchmark
    work = ROOT / "runs" / ("bench-dpd-quick" if args.quick else "bench-dpd")
    results = RESULTS / "quick" if args.quick else RESULTS
    name = "dpd" if distill else "dpd_" + "_".join(e.split("-")[0].lower() for e in envs)
    results.mkdir(parents=True, exist_ok=True)
    load_start, start = [round(x, 2) for x in os.getloadavg()], time.perf_counter()

    jobs = {
        (e, a, s): _config(e, a, s, budget[e], work / e / a / f"seed{s}") for e in envs for a in ARMS for s in seeds
    }
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        teacher_cfg = _config("CartPole-v1", "single", 100, teacher_steps, work / "teacher")
        teacher_future = pool.submit(_run, teacher_cfg) if distill else None
        futures = {key: pool.submit(_run, cfg) for key, cfg in jobs.items()}
        summaries = {key: f.result() for key, f in futures.items()}
        distillation = None
        if teacher_future is not None:
            distillation = _distillation(pool, teacher_cfg, teacher_future.result(), seeds, distill_steps, work)
    wall = time.perf_counter() - start

    table: dict[str, Any] = {}
    for env in envs:
        table[env] = {}
        for arm in ARMS:
            rows = [summaries[(env, arm, s)] for s in seeds]
            single = [summaries[(env, "single", s)] for s in seeds]
            table[env][arm] = {
                "final_return": _stats([r["final_return"] for r in rows]),
                "auc": _stats([r["auc"] for r in rows]),
                "best_learner_final": _stats([max(v["final_return"] for v in r["learners"].values()) for r in rows]),
                "final_minus_single": _stats(
                    [r["final_return"] - b["final_return"] for r, b in zip(rows, single, strict=True)]
                ),
                "auc_minus_single": _stats([r["auc"] - b["auc"] for r, b in zip(rows, single, strict=True)]),
                "env_steps": sorted({r["env_steps"] for r in rows}),
                "per_seed": {"final_return": [r["final_return"] for r in rows], "auc": [r["auc"] for r in rows]},
                "curve": [_curve(work / env / arm / f"seed{s}", budget[env]) for s in seeds],
            }
    payload = {
        "environment": {**environment(), "torch_threads_per_run": 1, "workers": args.workers},
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "wall_seconds": wall,
        "budget_env_steps": budget,
        "seeds": seeds,
        "ppo": PPO,
        "dpd": DPD,
        "table": table,
        "distillation": distillation,
    }
    if name != "dpd":
        payload.update({"algo": {e: OFFPOLICY[e]["algo"] for e in envs if e in OFFPOLICY}})
        payload.update({"offpolicy": {e: OFFPOLICY[e] for e in envs if e in OFFPOLICY}, "name": name})
    from kdlab.io import atomic_write_json, atomic_write_text

    atomic_write_json(results / f"{name}.json", payload)
    atomic_write_text(results / f"{name}.md", _markdown(payload))
    _plot(payload, results / f"{name}.png")
    print(_markdown(payload))


def _distillation(pool, teacher_cfg, teacher, seeds, distill_steps: int, work: Path) -> dict[str, Any]:
    """Classic policy distillation on CartPole: the teacher run into a 4x smaller student, both state sources."""
    distill_jobs = {}
    for states in ("teacher", "student"):
        for s in seeds:
            cfg = _config("CartPole-v1", "single", s, distill_steps, work / "distill" / states / f"seed{s}")
            rl = {
                **cfg["rl"],
                "mode": "distill",
                "distill": {"states": states, "hidden": STUDENT, "rollout_steps": 512},
            }
            distill_jobs[(states, s)] = {**cfg, "rl": rl, "teacher": {"run": teacher_cfg["out"]}}
    distilled = {k: f.result() for k, f in {k: pool.submit(_run, c) for k, c in distill_jobs.items()}.items()}
    rows = {
        states: {
            "final_return": _stats([distilled[(states, s)]["final_return"] for s in seeds]),
            "auc": _stats([distilled[(states, s)]["auc"] for s in seeds]),
            "student_parameters": distilled[(states, seeds[0])]["parameters"],
            "env_steps": distilled[(states, seeds[0])]["env_steps"],
            "per_seed": [distilled[(states, s)]["final_return"] for s in seeds],
        }
        for states in ("teacher", "student")
    }
    return {
        "env": "CartPole-v1",
        "teacher_final_return": teacher["final_return"],
        "teacher_parameters": teacher["parameters"],
        "teacher_env_steps": teacher["env_steps"],
        "student_hidden": STUDENT,
        "rows": rows,
    }


def _pm(stat: dict[str, float], digits: int = 1) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _markdown(p: dict[str, Any]) -> str:
    env = p["environment"]
    off = p.get("offpolicy")
    title = "one PPO learner, and policy distillation" if off is None else f"one {'/'.join(p['algo'].values())} learner"
    setting = f"PPO {p['ppo']}; DPD {p['dpd']}" if off is None else f"learners and DPD per environment: {off}"
    lines = [
        f"# Dual policy distillation vs {title}",
        "",
        f"Command: `{env['command']}` · {env['date_utc']} UTC · {env['machine']} · {p['environment']['workers']} runs "
        f"at a time, 1 torch thread each · load average {p['load_average']['start']} → {p['load_average']['end']} "
        f"(a shared machine) · wall {p['wall_seconds'] / 60:.1f} min · torch {env['torch']}, kdlab {env['kdlab']}.",
        "",
        f"Every arm spends the same environment steps in all, {p['budget_env_steps']} (a DPD learner half); "
        f"seeds {p['seeds']}. {setting}. Final = mean return of 10 deterministic episodes "
        "after training (a DPD run: the mean of its two learners; 'best' = its better learner); AUC = mean rolling "
        "training return over the budget. Δ = arm − single learner, paired by seed. Budget sized for a shared "
        "2-core machine (the paper's setting is 100k–20M steps).",
    ]
    for env_id, arms in p["table"].items():
        lines += [
            "",
            f"## {env_id}",
            "",
            "| arm | final return | AUC | best learner final | Δ final | Δ AUC |",
            "|---|---|---|---|---|---|",
        ]
        for arm, row in arms.items():
            lines.append(
                f"| {arm} | {_pm(row['final_return'])} | {_pm(row['auc'])} | {_pm(row['best_learner_final'])} | "
                f"{_pm(row['final_minus_single'])} | {_pm(row['auc_minus_single'])} |"
            )
    d = p["distillation"]
    if d is None:
        return "\n".join([*lines, "", f"![learning curves]({p['name']}.png)", ""])
    lines += [
        "",
        f"## Policy distillation ({d['env']})",
        "",
        f"Teacher: one PPO learner, {d['teacher_env_steps']:,} steps, {d['teacher_parameters']:,} actor parameters, "
        f"final return {d['teacher_final_return']:.1f}. Student: hidden {d['student_hidden']}.",
        "",
        "| states | student params | env steps | student final return | AUC (per-round evaluation) |",
        "|---|---|---|---|---|",
    ]
    for states, row in d["rows"].items():
        name = "teacher's rollouts" if states == "teacher" else "student's own (DAgger)"
        cells = [
            name,
            f"{row['student_parameters']:,}",
            f"{row['env_steps']:,}",
            _pm(row["final_return"]),
            _pm(row["auc"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![learning curves](dpd.png)", ""]
    return "\n".join(lines)


def _plot(p: dict[str, Any], path: Path) -> None:
    from kdlab.eval.plots import plt, save_png

    envs = list(p["table"])
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, env_id in zip(axes[0], envs, strict=True):
        budget = p["budget_env_steps"][env_id]
        for arm, row in p["table"][env_id].items():
            curves = np.array(row["curve"])
            x = np.linspace(budget / curves.shape[1], budget, curves.shape[1])
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(x, mean, label=arm)
            ax.fill_between(x, mean - std, mean + std, alpha=0.15)
        ax.set(
            title=f"{env_id} ({len(p['seeds'])} seeds, mean ± std)",
            xlabel="total environment steps",
            ylabel="rolling return",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    main()
