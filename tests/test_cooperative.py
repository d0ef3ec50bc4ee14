"""Cooperative distillation: deficiency sets on a constructed case, gradient and particle-swarm counterfactuals
that cross a known decision boundary within the tolerance, the feature-space map and the disjoint skewed shares,
determinism of a whole run under a seed, and one-line errors (a learner without predict_proba, code outside
sklearn)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.api import cooperative
from kdlab.config import load_config
from kdlab.config_cooperative import CounterfactualConfig
from kdlab.errors import ConfigError
from kdlab.tasks.cooperative.counterfactual import counterfactuals, targets
from kdlab.tasks.cooperative.learners import Learner
from kdlab.tasks.cooperative.pool import deficiency_sets, map_features, share_rows


def test_deficiency_sets_are_what_one_gets_right_and_the_other_wrong():
    correct = np.array(
        [
            [1, 1, 0, 0, 1, 0],  # learner 0
            [0, 1, 1, 0, 1, 1],  # learner 1
            [1, 0, 0, 1, 1, 0],  # learner 2
        ],
        dtype=bool,
    )
    sets = deficiency_sets(correct)
    assert sorted(sets) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    expected = {(0, 1): [0], (0, 2): [1], (1, 0): [2, 5], (1, 2): [1, 2, 5], (2, 0): [3], (2, 1): [0, 3]}
    assert {k: v.tolist() for k, v in sets.items()} == expected
    errors = [set(np.flatnonzero(~c)) for c in correct]  # R(i→j) = S_j minus S_i
    assert all(set(v.tolist()) == errors[j] - errors[i] for (i, j), v in sets.items())


class Logistic(Learner):
    """p(class 1) = sigmoid(4 (x0 - x1)): the boundary is the line x0 = x1."""

    def __init__(self, differentiable: bool) -> None:
        super().__init__("logistic", np.arange(2), 2, seed=0)
        self.differentiable = differentiable
        self.kind = "torch" if differentiable else "blackbox"

    def probs_tensor(self, x: torch.Tensor) -> torch.Tensor:
        p1 = torch.sigmoid(4 * (x[:, 0] - x[:, 1]))
        return torch.stack([1 - p1, p1], dim=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.probs_tensor(torch.as_tensor(x, dtype=torch.float64)).numpy()


@pytest.mark.parametrize("differentiable", [True, False], ids=["gradient", "swarm"])
def test_a_counterfactual_crosses_the_boundary_to_the_teachers_class_within_tolerance(differentiable):
    teacher = Logistic(differentiable)
    x0 = np.array([[0.0, 0.2], [0.5, 0.6], [1.0, 1.1]])  # class 0 side, p1 = sigmoid(-0.8 / -0.4 / -0.4)
    classes = np.ones(3, dtype=int)
    cfg = CounterfactualConfig(alpha=0.5, tolerance=0.01, l1=1e-3)
    cfg = cfg.model_copy(update={"gradient": cfg.gradient.model_copy(update={"steps": 500})})
    low, high, scale = np.full(2, -2.0), np.full(2, 3.0), np.ones(2)
    found = counterfactuals(teacher, x0, classes, cfg, low, high, scale, seed=0)
    assert found.rows.tolist() == [0, 1, 2] and found.unmoved == found.failed == 0
    target = targets(teacher.predict_proba(x0), classes, 0.5)
    assert np.all(target[:, 1] > 0.5)  # alpha = 0.5 of the way to onehot(1) lies across the boundary
    probs = teacher.predict_proba(found.x)
    assert np.all(found.x[:, 0] > found.x[:, 1])  # now on class 1's side
    assert np.abs(probs - target).max() <= 0.01 + 1e-9 and found.reached_tolerance == 3
    # a small edit: the boundary is |x0 - x1| / sqrt(2) away; the edit stays within a few times that
    assert np.abs(found.x - x0).sum(1).max() < 1.0


@pytest.mark.parametrize("differentiable", [True, False], ids=["gradient", "swarm"])
def test_an_instance_the_teacher_is_already_sure_of_is_discarded_as_unmoved(differentiable):
    teacher = Logistic(differentiable)
    x0 = np.array([[3.0, -2.0]])  # p1 = sigmoid(20): y' = o already, nothing to do
    found = counterfactuals(teacher, x0, np.ones(1, dtype=int), CounterfactualConfig(), np.full(2, -2.0),
                            np.full(2, 3.0), np.ones(2), seed=0)  # fmt: skip
    assert found.unmoved == 1 and len(found.rows) == 0 and found.tried == 1


def test_the_swarm_stays_inside_the_box():
    teacher = Logistic(differentiable=False)
    x0 = np.array([[0.0, 0.3]])
    cfg = CounterfactualConfig(alpha=1.0, tolerance=1e-6)  # unreachable: the swarm pushes to the box's corner
    found = counterfactuals(teacher, x0, np.ones(1, dtype=int), cfg, np.array([-0.1, 0.0]), np.array([0.5, 0.4]),
                            np.ones(2), seed=1)  # fmt: skip
    assert len(found.rows) == 1
    assert np.all(found.x >= [-0.1, 0.0]) and np.all(found.x <= [0.5, 0.4])
    assert found.x[0, 0] > found.x[0, 1]


def test_the_feature_map_copies_shared_columns_and_fills_the_rest():
    x_teacher = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # teacher columns 5, 0, 2 of the pooled space
    original = np.array([[10.0, 11.0, 12.0], [13.0, 14.0, 15.0]])  # the student's columns 0, 7, 5 of the pool
    mapped = map_features(x_teacher, np.array([5, 0, 2]), np.array([0, 7, 5]), original)
    np.testing.assert_array_equal(mapped, [[2.0, 11.0, 1.0], [5.0, 14.0, 4.0]])
    zero = map_features(x_teacher, np.array([5, 0, 2]), np.array([0, 7, 5]), np.zeros(3))
    np.testing.assert_array_equal(zero, [[2.0, 0.0, 1.0], [5.0, 0.0, 4.0]])
    mean = map_features(x_teacher, np.array([5, 0, 2]), np.array([9, 8]), np.array([0.5, -1.0]))
    np.testing.assert_array_equal(mean, [[0.5, -1.0], [0.5, -1.0]])  # nothing shared: all filled


def test_shares_are_disjoint_complete_and_skewed_as_asked():
    y = np.repeat(np.arange(3), 100)
    parts = share_rows(y, [{0: 9.0, 1: 1.0}, {0: 1.0, 1: 9.0}, {2: 1.0, 0: 0.0, 1: 0.0}], 3, seed=0)
    every = np.concatenate(parts)
    assert len(every) == 300 and len(np.unique(every)) == 300
    counts = [np.bincount(y[p], minlength=3).tolist() for p in parts]
    assert counts == [[90, 10, 34], [10, 90, 33], [0, 0, 33]]  # class 2: equal weights, the odd row to the first
    assert share_rows(y, [{}, {}], 3, seed=4)[0].tolist() == share_rows(y, [{}, {}], 3, seed=4)[0].tolist()


SKEW = [{c: (4.0 if c in group else 0.2) for c in range(10)} for group in ([0, 1, 2], [3, 4, 5], [6, 7, 8, 9])]


def _config(tmp_path: Path, out: str, **more) -> dict:
    return {
        "task": "cooperative",
        "out": str(tmp_path / out),
        "seed": 3,
        "rounds": 1,
        "train": {"epochs": 12, "batch_size": 64, "progress": False, "threads": 1},
        "counterfactual": {"max_per_pair": 25, "swarm": {"particles": 12, "iterations": 15}},
        "learners": [
            {
                "name": "tree",
                "estimator": "sklearn.tree.DecisionTreeClassifier",
                "kwargs": {"min_samples_leaf": 3},
                "class_weights": SKEW[0],
                "features": list(range(0, 48)),
            },
            {
                "name": "knn",
                "estimator": "sklearn.neighbors.KNeighborsClassifier",
                "class_weights": SKEW[1],
                "features": list(range(16, 64)),
            },
            {"name": "mlp", "model": {"name": "mlp", "kwargs": {"hidden": [32]}}, "class_weights": SKEW[2]},
        ],
        **more,
    }


def test_a_run_is_deterministic_under_a_seed_and_writes_its_run_directory(tmp_path, one_thread):
    first = cooperative(_config(tmp_path, "a"))
    second = cooperative(_config(tmp_path, "b"))
    assert first["learners"] == second["learners"]
    strip = lambda pairs: [{k: v for k, v in p.items() if k != "seconds"} for p in pairs]  # noqa: E731
    assert strip(first["pairs"]) == strip(second["pairs"])
    run = Path(first["out"])
    assert json.loads((run / "summary.json").read_text())["learners"] == first["learners"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    pairs = [r for r in records if r["event"] == "pair"]
    assert len(pairs) == 6 and all(r["accepted"] + r["unmoved"] + r["failed"] == r["tried"] for r in pairs)
    assert sum(r["accepted"] for r in pairs) > 0
    stages = {(r["learner"], r["stage"]) for r in records if r["event"] == "learner"}
    assert stages == {(n, s) for n in ("tree", "knn", "mlp")
                      for s in ("alone", "round_1", "kd_best_peer", "own_plus_pool", "pooled")}  # fmt: skip
    for name, rows in first["learners"].items():  # skewed learners gain from their peers' instances
        assert rows["round_1"] > rows["alone"], (name, rows)
        assert rows["pooled"] > rows["alone"], (name, rows)
    third = cooperative(_config(tmp_path, "c", seed=4))
    assert third["learners"] != first["learners"]


def test_a_learner_without_predict_proba_is_one_clear_line(tmp_path):
    cfg = _config(tmp_path, "svm")
    cfg["learners"][0] = {"name": "svm", "estimator": "sklearn.svm.LinearSVC"}
    with pytest.raises(ConfigError, match=r"learner 'svm': sklearn.svm.LinearSVC has no predict_proba"):
        cooperative(cfg)
    assert not (tmp_path / "svm").exists()
    path = tmp_path / "svm.yaml"
    path.write_text(json.dumps(cfg))
    done = subprocess.run([sys.executable, "-m", "kdlab.cli", "cooperate", str(path)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "has no predict_proba" in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_an_estimator_outside_sklearn_needs_trust(tmp_path):
    cfg = _config(tmp_path, "os")
    cfg["learners"][0] = {"name": "odd", "estimator": "collections.OrderedDict"}
    with pytest.raises(ConfigError, match="runs code from outside your project"):
        cooperative(cfg)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"teacher": {"run": "x"}}, "has no 'teacher' section"),
        ({"learners": [{"name": "a", "estimator": "sklearn.tree.DecisionTreeClassifier"}]}, "at least 2"),
        ({"rounds": 0}, "rounds"),
        ({"counterfactual": {"alpha": 1.5}}, "counterfactual.alpha"),
        ({"learners": [{"name": "a"}, {"name": "b", "model": {}}]}, "exactly one of 'estimator'"),
    ],
)
def test_bad_configs_are_one_line(tmp_path, change, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config({**_config(tmp_path, "x"), **change})


def test_a_users_module_and_a_learner_with_its_own_file(tmp_path, monkeypatch, one_thread):
    """A user's nn.Module (``package.module:callable`` beside the run, the trust policy's own code) learns with a
    kNN that brings its own .npz in its own 32 columns; the kNN's rows are placed in the pooled space by the
    pooled training mean, so the pooled baseline can use them."""
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n\n"
        "def build(num_classes, in_shape):\n"
        "    return nn.Sequential(nn.Linear(in_shape[0], 32), nn.ReLU(), nn.Linear(32, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    own = rng.choice(len(y), 150, replace=False)
    np.savez(tmp_path / "knn.npz", x=x[own][:, 32:], y=y[own])
    cfg = _config(tmp_path, "own", baselines=["pooled"])
    cfg["learners"] = [
        {"name": "mine", "model": {"name": "mynet:build"}, "features": list(range(32)), "class_weights": SKEW[0]},
        {"name": "knn", "estimator": "sklearn.neighbors.KNeighborsClassifier", "path": "knn.npz",
         "features": list(range(32, 64))},
    ]  # fmt: skip
    summary = cooperative(cfg)
    assert set(summary["learners"]) == {"mine", "knn"}
    assert set(summary["learners"]["knn"]) == {"alone", "round_1", "pooled"}
    assert len(summary["pairs"]) == 2 and (tmp_path / "own" / "fits" / "mine-alone" / "summary.json").is_file()
    assert summary["learners"]["mine"]["alone"] > 0.8  # the only learner sharing the pool: all of its rows
    assert summary["learners"]["knn"]["pooled"] > summary["learners"]["knn"]["alone"]
