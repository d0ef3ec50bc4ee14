"""Learners of any kind behind one small interface: fit on rows (optionally with a teacher's probabilities),
give class probabilities, and — for torch learners — a differentiable probability function.

Cooperative distillation exchanges only predictions and counterfactual instances, so a scikit-learn tree, a
nearest-neighbours model and a torch network can teach each other. A scikit-learn estimator is named by its
import path (``sklearn.neighbors.KNeighborsClassifier``); anything outside ``sklearn.*`` is someone's code and
runs only under the trust policy of ``kdlab.models.trust``. Torch learners train through the engine's one loop
(``kdlab.engine.fit``), each fit in its own run directory under the cooperative run's ``fits/``.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlab.config import TrainConfig
from kdlab.config_cooperative import LearnerConfig
from kdlab.errors import ConfigError
from kdlab.models.registry import create
from kdlab.models.trust import import_user_module


class Learner:
    """One participant. ``columns``: its columns of the pooled feature space, in its own order."""

    kind: str = ""
    differentiable: bool = False

    def __init__(self, name: str, columns: np.ndarray, num_classes: int, seed: int) -> None:
        self.name, self.columns, self.num_classes, self.seed = name, columns, num_classes, seed

    def fit(self, x: np.ndarray, y: np.ndarray, teacher_probs: np.ndarray | None, stage: str) -> None:
        raise NotImplementedError

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def probs_tensor(self, x: Tensor) -> Tensor:
        raise ConfigError(f"learner {self.name!r} ({self.kind}) is not differentiable")


def _estimator_class(spec: str, learner: str) -> type:
    module_name, _, attr = spec.rpartition(".")
    if not module_name:
        raise ConfigError(f"learner {learner!r}: estimator {spec!r} must be an import path such as "
                          "sklearn.tree.DecisionTreeClassifier")  # fmt: skip
    try:
        if module_name.split(".")[0] == "sklearn":
            module = importlib.import_module(module_name)
        else:  # someone's code: the trust policy decides (own project, or --trust-remote-code)
            module = import_user_module(module_name, spec)
    except ImportError as err:
        raise ConfigError(f"learner {learner!r}: cannot import {module_name!r}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"learner {learner!r}: {err}") from None
    cls = getattr(module, attr, None)
    if not inspect.isclass(cls):
        raise ConfigError(f"learner {learner!r}: {module_name!r} has no class {attr!r}")
    return cls


class SklearnLearner(Learner):
    """A scikit-learn estimator, rebuilt from its class and arguments for every fit (a fresh model each round,
    as the authors retrain from scratch). A teacher's probabilities become pseudo-labels (argmax): trees and
    neighbours take hard labels."""

    kind = "sklearn"

    def __init__(self, cfg: LearnerConfig, columns: np.ndarray, num_classes: int, seed: int) -> None:
        super().__init__(cfg.name, columns, num_classes, seed)
        assert cfg.estimator is not None
        self.spec, self.cls, self.kwargs = cfg.estimator, _estimator_class(cfg.estimator, cfg.name), dict(cfg.kwargs)
        probe = self._new()
        if not hasattr(probe, "predict_proba"):
            raise ConfigError(
                f"learner {cfg.name!r}: {cfg.estimator} has no predict_proba (cooperative distillation needs class "
                "probabilities); choose an estimator that has one, e.g. sklearn.svm.SVC with probability: true"
            )
        self.kind = self._kind_of(cfg.estimator)
        self.model: Any = None

    @staticmethod
    def _kind_of(spec: str) -> str:
        leaf = spec.rsplit(".", 1)[-1].lower()
        return "tree" if "tree" in leaf or "forest" in leaf else "knn" if "neighbor" in leaf else "sklearn"

    def _new(self) -> Any:
        try:
            model = self.cls(**self.kwargs)
        except TypeError as err:
            raise ConfigError(f"learner {self.name!r}: {self.spec}: {err}") from None
        if "random_state" in getattr(model, "get_params", dict)() and "random_state" not in self.kwargs:
            model.set_params(random_state=self.seed)
        return model

    def fit(self, x: np.ndarray, y: np.ndarray, teacher_probs: np.ndarray | None, stage: str) -> None:
        labels = y if teacher_probs is None else teacher_probs.argmax(1)
        self.model = self._new().fit(x, labels)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, C) over every class of the task: a class missing from this learner's rows has probability 0."""
        out = np.zeros((len(x), self.num_classes))
        out[:, np.asarray(self.model.classes_, dtype=int)] = self.model.predict_proba(x)
        return out


class Standardized(nn.Module):
    """A network that takes raw features: its own training statistics inside, so counterfactuals (and the
    gradients that make them) live in the same raw space as every other learner's."""

    def __init__(self, net: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


class TorchLearner(Learner):
    """A kdlab zoo model or the user's ``package.module:callable``, trained by ``kdlab.engine.fit`` with the run's
    ``train`` section: cross-entropy on labels, or Hinton KD (method ``kd``) on a teacher's probabilities."""

    kind = "mlp"
    differentiable = True

    def __init__(
        self, cfg: LearnerConfig, columns: np.ndarray, num_classes: int, seed: int, train: TrainConfig, out: Path
    ) -> None:
        super().__init__(cfg.name, columns, num_classes, seed)
        assert cfg.model is not None
        self.model_cfg, self.train_cfg, self.out = cfg.model, train.model_copy(update={"progress": False}), out
        self.kind = "mlp" if cfg.model.name == "mlp" else "torch"
        self.net: Standardized | None = None
        self.val: tuple[np.ndarray, np.ndarray] | None = None
        self._build(np.zeros((2, len(columns)), dtype=np.float32))  # a bad model name or argument fails now

    def _build(self, x: np.ndarray) -> Standardized:
        try:
            net = create(self.model_cfg.name, self.num_classes, (len(self.columns),), **self.model_cfg.kwargs)
        except ValueError as err:
            raise ConfigError(f"learner {self.name!r}: {err}") from None
        mean = torch.as_tensor(x.mean(0), dtype=torch.float32)
        std = torch.as_tensor(x.std(0), dtype=torch.float32).clamp_min(1e-6)
        return Standardized(net, mean, std)

    def fit(self, x: np.ndarray, y: np.ndarray, teacher_probs: np.ndarray | None, stage: str) -> None:
        from kdlab.engine import fit
        from kdlab.engine.supervised import Splits

        torch.manual_seed(self.seed)  # a fresh network per fit, the same initial weights for every stage
        net = self._build(x)
        val_x, val_y = self.val if self.val is not None else (x, y)
        as_x = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        as_y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
        data = Splits(as_x(x), as_y(y), as_x(val_x), as_y(val_y), as_x(val_x), as_y(val_y), self.num_classes)
        cached = None
        if teacher_probs is not None:
            cached = {"train": torch.as_tensor(np.log(np.clip(teacher_probs, 1e-8, 1.0)), dtype=torch.float32)}
        method = "ce" if teacher_probs is None else "kd"
        fit(net, data, method, self.train_cfg, out_dir=self.out / f"{self.name}-{stage}", seed=self.seed,
            cached_logits=cached)  # fmt: skip
        self.net = net.cpu().eval()

    def probs_tensor(self, x: Tensor) -> Tensor:
        assert self.net is not None
        return torch.softmax(self.net(x.float()), dim=-1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.probs_tensor(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def build_learner(
    cfg: LearnerConfig, columns: np.ndarray, num_classes: int, seed: int, train: TrainConfig, out: Path
) -> Learner:
    if cfg.estimator is not None:
        return SklearnLearner(cfg, columns, num_classes, seed)
    return TorchLearner(cfg, columns, num_classes, seed, train, out)
