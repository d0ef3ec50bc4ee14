"""Learning curves from metrics.jsonl: return against the run's environment-step budget, and its area.

A point of the curve at budget step x is the mean return of the last ``window`` episodes a learner finished
by then (what PPO implementations log as the rolling episode return). The x axis is the *run's* budget: a
learner of a two-learner run that has taken n steps stands at 2n, so a DPD curve and a single learner's curve
are compared at the same total number of environment steps. The area under the curve is its mean over an
evenly spaced grid of the budget (in units of return): higher means it learned sooner, not only better.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WINDOW = 10


def episodes(records: list[dict[str, Any]], learner: str, kind: str = "episode") -> list[tuple[int, float]]:
    """(budget step, return) of ``learner``'s records of ``kind``, in logged order."""
    return [
        (int(r["budget_step"]), float(r["return"]))
        for r in records
        if r.get("kind") == kind and r.get("learner") == learner
    ]


def curve(points: list[tuple[int, float]], grid: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """The rolling mean return at each grid step (before the first episode: the first episode's return)."""
    if not points:
        return np.full(len(grid), np.nan)
    steps = np.array([p[0] for p in points])
    returns = np.array([p[1] for p in points])
    out = np.empty(len(grid))
    for i, x in enumerate(grid):
        done = int(np.searchsorted(steps, x, side="right"))
        out[i] = returns[max(0, done - window) : max(1, done)].mean()
    return out


def grid(budget: int, points: int = 100) -> np.ndarray:
    return np.linspace(budget / points, budget, points)


def area(points: list[tuple[int, float]], budget: int, window: int = WINDOW) -> float:
    """The normalised area under the learning curve (its mean over the budget)."""
    return float(np.nanmean(curve(points, grid(budget), window))) if points else float("nan")


def learner_names(records: list[dict[str, Any]]) -> list[str]:
    return sorted({str(r["learner"]) for r in records if "learner" in r})
