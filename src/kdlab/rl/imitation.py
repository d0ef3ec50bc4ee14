"""The imitation step shared by DPD and classic policy distillation, and DPD's state weights.

One function measures how far a policy is from a target policy at each state: KL(target ‖ policy) over the
actions of a discrete policy, the mean squared difference of the action means of a continuous one (the
"weighted regression" of the policy-distillation literature; the DPD authors' code regresses means too). A
distillation step minimises Σ_i w_i · D_i with weights that sum to one, so uniform weights are exactly
behaviour cloning on those states (tests/test_rl.py checks it numerically).

DPD's weights (Lai et al., IJCAI 2020) favour the states where the peer is better: with ξ(s) = V_peer(s) −
V_self(s), ``soft`` gives clip(exp(β·ξ), w_min, w_max), ``hard`` the indicator 1[ξ > 0]. The authors' PPO code
computes exp(β·(V_self − V_peer)) — the opposite sign of their DDPG code and of the paper's idea; here the sign
is peer − self, and ``reversed`` flips it on purpose for the ablation. What "value" and "target" mean for each
kind of policy (PPO's V(s); a TD3/SAC critic's Q(s, π(s))) is ``kdlab.rl.heads``.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.policies import BasePolicy
from torch import Tensor

from kdlab.rl_config import DPDConfig

from .heads import head


def policy_targets(policy: BasePolicy, obs: Tensor) -> Tensor:
    """What a student imitates at ``obs``: action probabilities (discrete) or actions / action means (continuous)."""
    return head(policy).targets(policy, obs)


def divergence(policy: BasePolicy, obs: Tensor, target: Tensor) -> Tensor:
    """Per state: KL(target ‖ policy) for discrete actions, mean squared error of the actions for continuous."""
    return head(policy).divergence(policy, obs, target)


def values(policy: BasePolicy, obs: Tensor) -> Tensor:
    """V(s): PPO's value head, or Q(s, π(s)) from a TD3/SAC critic (``kdlab.rl.heads``)."""
    return head(policy).values(policy, obs)


def raw_weights(v_peer: Tensor, v_self: Tensor, cfg: DPDConfig) -> Tensor:
    """DPD's weight per state before normalisation (> 1 where the peer's value is higher, soft weighting)."""
    xi = v_peer - v_self
    if cfg.reversed:
        xi = -xi
    if cfg.weighting == "uniform":
        return torch.ones_like(xi)
    if cfg.weighting == "hard":
        return (xi > 0).to(xi.dtype)
    return torch.exp(cfg.beta * xi).clamp(cfg.w_min, cfg.w_max)


def normalise(weights: Tensor) -> Tensor:
    """Weights summing to one (all zero stays all zero: a hard batch where the peer is nowhere better)."""
    total = weights.sum()
    return weights / total if total > 0 else weights


def imitation_step(
    policy: BasePolicy,
    optimizer: torch.optim.Optimizer,
    obs: Tensor,
    target: Tensor,
    weights: Tensor,
    max_grad_norm: float | None,
) -> float:
    """One gradient step on Σ_i w_i · D_i (``weights`` already normalised); returns the loss before the step."""
    policy.set_training_mode(True)
    loss = (weights * divergence(policy, obs, target)).sum()
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    policy.set_training_mode(False)
    return float(loss.detach())


def dpd_step(
    learner: BasePolicy,
    peer: BasePolicy,
    optimizer: torch.optim.Optimizer,
    obs: Tensor,
    cfg: DPDConfig,
    max_grad_norm: float | None,
) -> dict[str, Any]:
    """``learner`` imitates ``peer`` on ``obs`` (states from the peer's memory), weighted by DPD's rule."""
    target = policy_targets(peer, obs)
    v_peer, v_self = values(peer, obs), values(learner, obs)
    weights = normalise(raw_weights(v_peer, v_self, cfg))
    stats: dict[str, Any] = {
        "dpd/peer_better": float((v_peer > v_self).float().mean()),
        "dpd/advantage": float((v_peer - v_self).mean()),
        "dpd/max_weight": float(weights.max()),
    }
    if float(weights.sum()) == 0.0:
        stats["dpd/loss"], stats["dpd/skipped"] = None, True
        return stats
    losses = [imitation_step(learner, optimizer, obs, target, weights, max_grad_norm) for _ in range(cfg.steps)]
    stats["dpd/loss"], stats["dpd/skipped"] = losses[0], False
    return stats
