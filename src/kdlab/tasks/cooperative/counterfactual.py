"""Counterfactual virtual instances: a teacher edits an example it classifies right so that it finds the edit
even more typical of that class (the "quintessential" instance of Livanos et al.).

Target: y' = o + alpha (onehot(c) - o), o = f(x) the teacher's probabilities. Search:
    x' = argmin ||f(x') - y'||² + l1 · Σ_k |x'_k - x_k| / scale_k,   x' inside [low, high] (the teacher's data range)
stopping once max_k |f(x')_k - y'_k| <= tolerance (the swarm: once its best is within the tolerance and has not
improved for ``patience`` iterations — the first point inside the tolerance is rarely the closest one). The L1
term is Σ|x - x'| (methods.md §3: the notebook also writes |Σ(x - x')| once; we follow the former), divided per
column by the teacher's training std so that columns in different units weigh alike.

- Differentiable teachers (torch): Adam on all instances at once — the loss is a sum of per-row terms and Adam
  is element-wise, so rows do not interact; a row that reached the tolerance is frozen.
- Black-box teachers (trees, neighbours, any ``predict_proba``): particle swarm with ``pyswarms``' backend
  (its swarm, global-best topology, velocity and boundary handlers), one swarm per instance, with the teacher
  queried once per iteration for all swarms' particles together — the costly part is ``predict_proba``.

An instance the search left where it was ("unmoved") or left on another class than c ("failed") is discarded;
both are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kdlab.config_cooperative import CounterfactualConfig
from kdlab.errors import ConfigError

from .learners import Learner


@dataclass
class Counterfactuals:
    """The accepted instances (teacher space) and which input rows they came from, with the discard counts."""

    x: np.ndarray
    rows: np.ndarray
    unmoved: int
    failed: int
    reached_tolerance: int

    @property
    def tried(self) -> int:
        return len(self.rows) + self.unmoved + self.failed


def targets(probs: np.ndarray, classes: np.ndarray, alpha: float) -> np.ndarray:
    """y' = o + alpha (onehot(c) - o): alpha of the way from the teacher's output to full confidence in c."""
    onehot = np.eye(probs.shape[1])[classes]
    return probs + alpha * (onehot - probs)


def _verdict(x0: np.ndarray, x1: np.ndarray, probs: np.ndarray, target: np.ndarray, classes, tol) -> Counterfactuals:
    moved = np.any(np.abs(x1 - x0) > 1e-12, axis=1)
    on_class = probs.argmax(1) == classes
    keep = moved & on_class
    reached = np.abs(probs - target).max(1) <= tol + 1e-12
    return Counterfactuals(
        x=x1[keep], rows=np.flatnonzero(keep), unmoved=int((~moved).sum()),
        failed=int((moved & ~on_class).sum()), reached_tolerance=int((keep & reached).sum()),
    )  # fmt: skip


def gradient_counterfactuals(
    teacher: Learner, x0: np.ndarray, classes: np.ndarray, cfg: CounterfactualConfig, low, high, scale
) -> Counterfactuals:
    """Adam on the instances (in units of ``scale``) through the teacher's ``probs_tensor``."""
    scale_t = torch.as_tensor(scale, dtype=torch.float32)
    lo, hi = torch.as_tensor(low / scale, dtype=torch.float32), torch.as_tensor(high / scale, dtype=torch.float32)
    u0 = torch.as_tensor(x0, dtype=torch.float32) / scale_t
    with torch.no_grad():
        target = torch.as_tensor(targets(teacher.probs_tensor(u0 * scale_t).double().numpy(), classes, cfg.alpha))
    target = target.float()
    u = u0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=cfg.gradient.lr)
    done = torch.zeros(len(u), dtype=torch.bool)
    for _ in range(cfg.gradient.steps):
        probs = teacher.probs_tensor(u * scale_t)
        done |= ((probs - target).abs().amax(1) <= cfg.tolerance).detach()
        if bool(done.all()):
            break
        rows = ((probs - target) ** 2).sum(1) + cfg.l1 * (u - u0).abs().sum(1)
        loss = rows[~done].sum()
        optimizer.zero_grad()
        loss.backward()
        before = u.detach().clone()
        optimizer.step()
        with torch.no_grad():
            u.copy_(torch.where(done[:, None], before, torch.minimum(torch.maximum(u, lo), hi)))
    x1 = (u.detach() * scale_t).double().numpy()
    x1 = np.where(np.abs(x1 - x0) < 1e-6 * np.maximum(scale, 1e-12), x0, x1)  # float32 round trip is no move
    probs = teacher.predict_proba(x1)
    return _verdict(x0, x1, probs, targets(teacher.predict_proba(x0), classes, cfg.alpha), classes, cfg.tolerance)


def swarm_counterfactuals(
    teacher: Learner, x0: np.ndarray, classes: np.ndarray, cfg: CounterfactualConfig, low, high, scale, seed: int
) -> Counterfactuals:
    """Global-best particle swarm per instance (pyswarms' backend), the teacher queried for all swarms at once.

    Particle 0 starts at the instance itself, the others uniformly within ``init_radius`` of the column ranges
    around it; so the search never ends worse than "no edit", and an instance the teacher cannot improve stays
    put (and is discarded as unmoved, as the authors do)."""
    try:
        from pyswarms.backend import create_swarm
        from pyswarms.backend.handlers import BoundaryHandler, VelocityHandler
        from pyswarms.backend.operators import compute_pbest
        from pyswarms.backend.topology import Star
    except ImportError:
        raise ConfigError(
            f"teacher {teacher.name!r} is not differentiable: its counterfactuals need pyswarms "
            "(pip install 'kdlab[cooperative]')"
        ) from None

    sw = cfg.swarm
    n, d = x0.shape
    target = targets(teacher.predict_proba(x0), classes, cfg.alpha)
    span = np.maximum(high - low, 1e-12)
    bounds = (low.astype(float), high.astype(float))
    topology, bh, vh = Star(), BoundaryHandler(strategy="nearest"), VelocityHandler(strategy="unmodified")
    state = np.random.get_state()  # pyswarms draws from numpy's global generator: seed it, then put it back
    np.random.seed(seed % 2**32)
    rng = np.random.default_rng(seed)
    try:
        swarms = []
        for i in range(n):
            start = x0[i] + rng.uniform(-1, 1, (sw.particles, d)) * sw.init_radius * span
            start[0] = x0[i]
            start = np.clip(start, low, high)
            swarm = create_swarm(sw.particles, d, options={"c1": sw.c1, "c2": sw.c2, "w": sw.w}, bounds=bounds,
                                 init_pos=start)  # fmt: skip
            swarm.pbest_cost = np.full(sw.particles, np.inf)
            swarms.append(swarm)
        best_gap = np.full((n, sw.particles), np.inf)  # max |f - y'| at each particle's personal best
        stale = np.zeros(n, dtype=int)  # iterations since the swarm's best cost last improved
        active = np.ones(n, dtype=bool)
        for step in range(sw.iterations + 1):
            idx = np.flatnonzero(active)
            if not len(idx):
                break
            positions = np.concatenate([swarms[i].position for i in idx])
            probs = teacher.predict_proba(positions).reshape(len(idx), sw.particles, -1)
            for k, i in enumerate(idx):
                swarm = swarms[i]
                gap = ((probs[k] - target[i]) ** 2).sum(1)
                swarm.current_cost = gap + cfg.l1 * (np.abs(swarm.position - x0[i]) / scale).sum(1)
                improved = swarm.current_cost < swarm.pbest_cost
                best_gap[i, improved] = np.abs(probs[k] - target[i]).max(1)[improved]
                swarm.pbest_pos, swarm.pbest_cost = compute_pbest(swarm)
                before = swarm.best_cost if step else np.inf
                swarm.best_pos, swarm.best_cost = topology.compute_gbest(swarm)
                stale[i] = stale[i] + 1 if swarm.best_cost >= before - 1e-12 else 0
                if best_gap[i, int(np.argmin(swarm.pbest_cost))] <= cfg.tolerance and stale[i] >= sw.patience:
                    active[i] = False
                    continue
                if step < sw.iterations:
                    swarm.velocity = topology.compute_velocity(swarm, vh=vh, bounds=bounds)
                    swarm.position = topology.compute_position(swarm, bounds=bounds, bh=bh)
    finally:
        np.random.set_state(state)
    x1 = np.stack([np.asarray(s.best_pos, dtype=float) for s in swarms]) if n else x0.copy()
    return _verdict(x0, x1, teacher.predict_proba(x1), target, classes, cfg.tolerance)


def counterfactuals(
    teacher: Learner, x0: np.ndarray, classes: np.ndarray, cfg: CounterfactualConfig, low, high, scale, seed: int
) -> Counterfactuals:
    """The gradient search for a differentiable teacher, the swarm for any other."""
    if not len(x0):
        return Counterfactuals(x0[:0], np.zeros(0, dtype=int), 0, 0, 0)
    if teacher.differentiable:
        return gradient_counterfactuals(teacher, x0, classes, cfg, low, high, scale)
    return swarm_counterfactuals(teacher, x0, classes, cfg, low, high, scale, seed)
