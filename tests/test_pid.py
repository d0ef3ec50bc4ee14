"""The PID estimator (kdlab.eval.pid) on variables whose decomposition is known, against ``dit``'s BROJA where it
converges, at its optimum (KKT), and end to end on clustered features; nuisance teachers' noise and fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from kdlab.config import TeacherConfig
from kdlab.eval.pid import decompose, estimate, joint_distribution, min_synergy_distribution
from kdlab.models.tap import FeatureTap
from kdlab.teacher.nuisance import NoiseChannels

RNG = np.random.default_rng(0)
T, S = RNG.integers(0, 2, 20000), RNG.integers(0, 2, 20000)
TOL = 5e-3  # bits


def test_a_copy_is_all_redundant():
    pid = decompose(joint_distribution(T, T, T))
    assert pid.red == pytest.approx(1.0, abs=TOL)
    assert max(pid.unique_t, pid.unique_s, pid.synergy) < TOL


def test_xor_is_all_synergistic():
    pid = decompose(joint_distribution(T, S, T ^ S))
    assert pid.synergy == pytest.approx(1.0, abs=TOL)
    assert max(pid.red, pid.unique_t, pid.unique_s) < TOL


def test_an_independent_student_shares_nothing():
    pid = decompose(joint_distribution(T, S, T))  # S independent of T and Y
    assert pid.unique_t == pytest.approx(1.0, abs=TOL)
    assert max(pid.red, pid.unique_s, pid.synergy) < TOL


def test_and_gate_matches_the_published_broja_values():
    p = np.zeros((2, 2, 2))
    for t in (0, 1):
        for s in (0, 1):
            p[t, s, t & s] = 0.25
    pid = decompose(p)  # Bertschinger et al. 2014: Red = 0.311, Uni = 0, Syn = 0.5
    assert pid.red == pytest.approx(0.3113, abs=1e-3) and pid.synergy == pytest.approx(0.5, abs=1e-3)
    assert pid.unique_t < 1e-3 and pid.unique_s < 1e-3
    assert pid.red + pid.unique_t + pid.unique_s + pid.synergy == pytest.approx(pid.joint, abs=1e-9)


def _constraints(shape: tuple[int, int, int]) -> np.ndarray:
    rows = []
    for t in range(shape[0]):
        for y in range(shape[2]):
            m = np.zeros(shape)
            m[t, :, y] = 1
            rows.append(m.ravel())
    for s in range(shape[1]):
        for y in range(shape[2]):
            m = np.zeros(shape)
            m[:, s, y] = 1
            rows.append(m.ravel())
    return np.array(rows)


def test_the_solution_is_feasible_and_optimal():
    """Convex problem, interior solution: the gradient log Q(y|t,s) has no component along the feasible set. (On
    this distribution dit's PID_BROJA stops at a worse point: Red 0.0049 bits where the optimum has 0.0241.)"""
    shape = (3, 2, 4)
    p = np.random.default_rng(5).random(shape) ** 2
    p /= p.sum()
    q = min_synergy_distribution(p)
    np.testing.assert_allclose(q.sum(axis=1), p.sum(axis=1), atol=1e-12)
    np.testing.assert_allclose(q.sum(axis=0), p.sum(axis=0), atol=1e-12)
    null = scipy.linalg.null_space(_constraints(shape))
    gradient = np.log2(q / q.sum(axis=2, keepdims=True)).ravel()
    assert q.min() > 0 and np.abs(null.T @ gradient).max() < 1e-3
    start = np.log2(p / p.sum(axis=2, keepdims=True)).ravel()
    assert np.abs(null.T @ start).max() > 0.1  # P itself is not optimal: the check has teeth


def test_agrees_with_dit_broja_on_binary_variables():
    dit = pytest.importorskip("dit")
    from dit.pid import PID_BROJA

    p = np.random.default_rng(3).random((2, 2, 2)) ** 2
    p /= p.sum()
    d = dit.Distribution([f"{t}{s}{y}" for t, s, y in np.ndindex(2, 2, 2)], p.ravel().tolist())
    d.set_rv_names("TSY")
    theirs = PID_BROJA(d, ["T", "S"], "Y")
    ours = decompose(p)
    assert ours.red == pytest.approx(theirs.get_pi((("S",), ("T",))), abs=1e-3)
    assert ours.unique_t == pytest.approx(theirs.get_pi((("T",),)), abs=1e-3)
    assert ours.unique_s == pytest.approx(theirs.get_pi((("S",),)), abs=1e-3)
    assert ours.synergy == pytest.approx(theirs.get_pi((("S", "T"),)), abs=1e-3)


def test_estimate_on_clustered_features_with_bootstrap_intervals():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 1200)
    centres = rng.normal(size=(4, 12)) * 4
    teacher = centres[y] + rng.normal(size=(1200, 12))  # knows y
    student = centres[y] @ rng.normal(size=(12, 6)) + rng.normal(size=(1200, 6))  # knows y too: redundant
    noise = rng.normal(size=(1200, 6))  # knows nothing
    shared = estimate(teacher, student, y, clusters=4, bootstrap=5)
    alone = estimate(teacher, noise, y, clusters=4, bootstrap=5)
    assert shared.point.red > 1.8 and alone.point.red < 0.05  # H(Y) = 2 bits
    assert alone.point.unique_t > 1.8
    assert shared.low["red"] <= shared.point.red <= shared.high["red"]


def test_noise_channels_change_what_is_tapped_not_what_the_teacher_computes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 3)
    clean = model(x)
    with FeatureTap(model, ["1"], detach=True, transform=NoiseChannels(0.5, 2.0)) as tap:
        out = model(x)
    hidden = torch.relu(model[0](x))
    torch.testing.assert_close(out, clean)  # logits clean
    torch.testing.assert_close(tap.features["1"][:, :4], hidden[:, :4])  # first half kept
    assert not torch.allclose(tap.features["1"][:, 4:], hidden[:, 4:])  # last half noise, std ~2
    assert 1.0 < float(tap.features["1"][:, 4:].std()) < 3.5


def test_nuisance_is_a_config_option_with_a_short_form():
    short = TeacherConfig.model_validate({"run": "r", "nuisance": "untrained"})
    assert short.nuisance is not None and short.nuisance.kind == "untrained"
    noisy = TeacherConfig.model_validate({"run": "r", "nuisance": {"kind": "noise_channels", "fraction": 0.25}})
    assert noisy.nuisance is not None and (noisy.nuisance.fraction, noisy.nuisance.std) == (0.25, 1.0)
    with pytest.raises(ValueError):
        TeacherConfig.model_validate({"run": "r", "nuisance": {"kind": "noise_channels", "fraction": 0}})
