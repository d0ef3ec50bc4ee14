"""Choosing PTLoss's epsilon through the proxy teacher: candidates, scores, the method and the command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kdlab.losses import proxy_teacher
from kdlab.methods.selection import proxy_scores, sample_epsilons, select_ptloss_epsilon


def test_candidates_are_in_range_reproducible_and_start_with_kd():
    eps = sample_epsilons(32, order=4, seed=3)
    assert eps.shape == (32, 4) and torch.equal(eps[0], torch.zeros(4))
    inv_m = 1 / torch.arange(1, 5, dtype=torch.float64)
    assert (eps.abs() <= inv_m).all() and (eps[1:].abs() > 0).all()
    assert torch.equal(eps, sample_epsilons(32, order=4, seed=3))
    assert sample_epsilons(5, order=2, num_classes=7).shape == (5, 7, 2)
    assert (sample_epsilons(50, order=3, scale=0.5).abs() <= 0.5 * inv_m[:3]).all()
    with pytest.raises(ValueError, match="scale"):
        sample_epsilons(4, scale=1.5)


def test_scores_by_hand():
    q = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    scores = proxy_scores(q, y)
    l2 = ((0.3**2 + 0.2**2 + 0.1**2) + (0.5**2 + 0.25**2 + 0.75**2)) / 2
    assert scores["l2"] == pytest.approx(l2)
    assert scores["tv"] == pytest.approx((0.3 + 0.75) / 2)
    assert scores["nll"] == pytest.approx(-(torch.log(torch.tensor(0.7)) + torch.log(torch.tensor(0.25))).item() / 2)
    assert scores["accuracy"] == 0.5


def test_selection_moves_an_overconfident_teacher_towards_the_truth():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(3000, 8, generator=gen, dtype=torch.float64)
    truth = torch.softmax(true_logits, -1)
    labels = torch.multinomial(truth, 1, generator=gen).squeeze(1)
    teacher_logits = 3.0 * true_logits  # over-confident
    selection = select_ptloss_epsilon(teacher_logits[:1500], labels[:1500], candidates=24, order=3)
    assert selection.index != 0 and selection.epsilon[0] < 0  # flatten an over-confident teacher
    held_out = torch.softmax(teacher_logits[1500:], -1)
    proxy = proxy_teacher(held_out, selection.epsilon)
    kl = lambda p: (truth[1500:] * (truth[1500:].log() - p.log())).sum(-1).mean()  # noqa: E731
    assert kl(proxy) < 0.8 * kl(held_out)  # measured 0.47 vs 0.67
    table = selection.to_dict()
    assert len(table["candidates"]) == 24 and table["chosen_index"] == selection.index
    assert selection.ranked()[0] == selection.index


def test_selection_keeps_kd_for_a_calibrated_teacher():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4000, 5, generator=gen, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
    selection = select_ptloss_epsilon(logits, labels, candidates=16, order=2)
    best = selection.scores[selection.index]["l2"]
    assert selection.scores[0]["l2"] - best < 0.002  # eps = 0 is (near) optimal when the teacher is the truth


def test_bad_selection_arguments():
    with pytest.raises(ValueError, match="metric"):
        select_ptloss_epsilon(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), metric="kl")
    with pytest.raises(ValueError, match="labels"):
        select_ptloss_epsilon(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


def test_distill_with_auto_epsilon_and_the_select_command(tmp_path):
    from kdlab.api import distill, train

    teacher = tmp_path / "teacher"
    base = {"data": {"name": "digits"}, "train": {"epochs": 2, "progress": False}}
    train({**base, "out": str(teacher), "model": {"name": "mlp", "kwargs": {"hidden": [32]}}})
    cfg = {
        **base,
        "out": str(tmp_path / "student"),
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
        "teacher": {"run": str(teacher)},
        "method": {"name": "ptloss", "epsilon": "auto", "candidates": 8, "order": 3, "temperature": 2.0},
    }
    summary = distill(cfg)
    record = json.loads((tmp_path / "student" / "ptloss_selection.json").read_text())
    assert len(record["candidates"]) == 8 and (tmp_path / "student" / "ptloss_selection.png").stat().st_size > 0
    assert f"eps={[round(x, 4) for x in record['epsilon']]}" in summary["method"]
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "kdlab.cli", "select-ptloss", str(config), "--output", str(tmp_path / "sel")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chosen: candidate" in done.stdout
    assert json.loads((tmp_path / "sel" / "ptloss_selection.json").read_text())["epsilon"] == record["epsilon"]


def _proxy_m1(pi: torch.Tensor, eps: float) -> torch.Tensor:
    """The M = 1 proxy teacher by its closed form q_k = π_k / (λ - ε π_k), λ > max_k ε π_k solving Σ q = 1
    (bisection, all rows at once, float64), written here independently of kdlab.losses.proxy_teacher."""

    def total(lam: torch.Tensor) -> torch.Tensor:
        return (pi / (lam - eps * pi)).sum(-1, keepdim=True)

    lo = (eps * pi).amax(-1, keepdim=True)  # Σ q → ∞ as λ → lo from above
    hi = lo.clamp(min=0.0) + 1.0  # Σ q ≤ Σ π / 1 = 1 here: λ = 1 + max(lo, 0) is above the root
    assert bool((total(hi) <= 1.0 + 1e-12).all())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        above = total(mid) > 1.0
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return pi / (0.5 * (lo + hi) - eps * pi)


def _scores_by_hand(logits: torch.Tensor, labels: torch.Tensor, temperature: float, eps: float) -> dict[str, float]:
    z = logits.double() / temperature
    pi = torch.exp(z - z.max(-1, keepdim=True).values)
    pi = pi / pi.sum(-1, keepdim=True)  # the tempered teacher
    q = _proxy_m1(pi, eps)
    onehot = torch.nn.functional.one_hot(labels, logits.shape[-1]).double()
    q_y = (q * onehot).sum(-1)
    return {"l2": float(((q - onehot) ** 2).sum(-1).mean()), "tv": float((1 - q_y).mean())}


@pytest.fixture(scope="module")
def overconfident():
    """A teacher twice as sharp as the truth its labels were drawn from: at T = 1 the proxy should flatten it
    (ε < 0); at T = 4 it is twice too flat and the proxy should sharpen it (ε > 0)."""
    gen = torch.Generator().manual_seed(4)
    truth = torch.randn(400, 5, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(truth, -1), 1, generator=gen).squeeze(1)
    return 2.0 * truth, labels


def test_selection_at_a_temperature_scores_the_tempered_teachers_proxies(overconfident):
    """Every candidate's L2 and TV score at T = 4 equals the score of the M = 1 proxy of softmax(logits / 4),
    computed here; T changes the choice (ε < 0 at T = 1, ε > 0 at T = 4), so ignoring T cannot pass."""
    logits, labels = overconfident
    eps = torch.tensor([[0.0], [0.6], [-0.6], [0.95], [-0.95], [0.3], [-0.3]], dtype=torch.float64)
    chosen = {}
    for temperature in (1.0, 4.0):
        selection = select_ptloss_epsilon(logits, labels, temperature=temperature, epsilons=eps)
        assert selection.temperature == temperature
        expected = [_scores_by_hand(logits, labels, temperature, float(e)) for e in eps[:, 0]]
        for i, want in enumerate(expected):
            assert selection.scores[i]["l2"] == pytest.approx(want["l2"], rel=1e-9), (temperature, i)
            assert selection.scores[i]["tv"] == pytest.approx(want["tv"], rel=1e-9), (temperature, i)
        assert selection.index == min(range(len(eps)), key=lambda i: expected[i]["l2"])
        chosen[temperature] = float(selection.epsilon[0])
    assert chosen[1.0] < 0 < chosen[4.0], chosen


def test_the_ptloss_method_selects_at_its_own_temperature(overconfident):
    """``epsilon: auto`` through the method: the candidates' scores are those of the proxies of the teacher at the
    method's temperature (3), not at T = 1."""
    from kdlab.methods import build

    logits, labels = overconfident
    params = {"epsilon": "auto", "temperature": 3.0, "candidates": 6, "order": 1, "selection_seed": 2}
    method = build("ptloss", params, 5)
    selection = method.select(logits.float(), labels)
    assert selection.temperature == 3.0 and len(selection.scores) == 6
    for i, candidate in enumerate(selection.candidates):
        want = _scores_by_hand(logits.float(), labels, 3.0, float(candidate[0]))
        assert selection.scores[i]["l2"] == pytest.approx(want["l2"], rel=1e-9), i
        at_one = _scores_by_hand(logits.float(), labels, 1.0, float(candidate[0]))
        assert abs(at_one["l2"] - want["l2"]) > 1e-3  # the temperature matters at these values
    assert torch.equal(method.epsilon, selection.epsilon.float())
