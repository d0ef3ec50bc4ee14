"""FitNets and VID on method contract v2: losses against hand computations, method-owned modules that train, are
saved beside the student and resume bit for bit, and layer names checked with one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdlab.api import distill, train
from kdlab.config import OptimizerConfig, SchedulerConfig, TrainConfig
from kdlab.engine import Splits, StepInfo, fit
from kdlab.errors import ConfigError
from kdlab.methods import Outputs, SetupContext, StepState, build

STATE = StepState(0, 0, 1, 0.0)


def _context(shapes: dict[str, dict[str, tuple[int, ...]]]) -> SetupContext:
    def never(*_):
        raise AssertionError("not used")

    return SetupContext(
        num_classes=3,
        device="cpu",
        out_dir=None,
        teacher_logits=never,
        labels=never,
        feature_shapes=lambda side, names: {n: shapes[side][n] for n in names},
        write_report=never,
    )


def _outputs(features: dict[str, torch.Tensor], logits: torch.Tensor) -> Outputs:
    return Outputs(logits=logits, features=features)


def test_fitnets_hint_is_the_mse_of_the_regressed_student_feature_at_the_smaller_size():
    method = build("fitnets", {"student_layer": "a", "teacher_layer": "b", "feature_weight": 3.0, "beta": 0.5}, 3)
    method.setup(_context({"student": {"a": (4, 6, 6)}, "teacher": {"b": (5, 3, 3)}}))
    (regressor,) = method.modules()["regressors"]
    s, t = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 5, 3, 3, dtype=torch.float64)
    regressor.double()
    s_logits, t_logits, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 2])
    terms = method.compute({"y": y}, _outputs({"a": s}, s_logits), _outputs({"b": t}, t_logits), STATE)
    # by hand: a 1x1 convolution is a matrix on the channels, then 2x2 average pooling to 3x3
    projected = torch.einsum("oc,nchw->nohw", regressor.weight[:, :, 0, 0], s)
    pooled = projected.reshape(2, 5, 3, 2, 3, 2).mean(dim=(3, 5))
    torch.testing.assert_close(terms["hint"], 3.0 * ((pooled - t) ** 2).mean())
    p_t, log_p_s = torch.softmax(t_logits / 4, -1), torch.log_softmax(s_logits / 4, -1)
    kd = 16 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    torch.testing.assert_close(terms["kd"], 0.5 * kd)
    torch.testing.assert_close(terms["ce"], torch.nn.functional.cross_entropy(s_logits, y))


def test_fitnets_stage_one_trains_on_the_hint_alone():
    method = build("fitnets", {"student_layer": "a", "teacher_layer": "b", "hint_epochs": 2}, 3)
    method.setup(_context({"student": {"a": (4,)}, "teacher": {"b": (6,)}}))
    s, t = _outputs({"a": torch.randn(5, 4)}, torch.randn(5, 3)), _outputs({"b": torch.randn(5, 6)}, torch.randn(5, 3))
    y = torch.zeros(5, dtype=torch.long)
    assert set(method.compute({"y": y}, s, t, StepState(1, 0, 4, 1.5))) == {"hint"}
    assert set(method.compute({"y": y}, s, t, StepState(2, 0, 4, 2.0))) == {"hint", "ce"}


def test_vid_is_the_gaussian_negative_log_likelihood_with_learned_channel_variances():
    method = build("vid", {"student_layer": "a", "teacher_layer": "b", "feature_weight": 2.0, "alpha": 0.0}, 3)
    method.setup(_context({"student": {"a": (3, 4, 4)}, "teacher": {"b": (2, 4, 4)}}))
    (head,) = method.modules()["heads"]
    head.double()
    with torch.no_grad():
        head.raw_variance.copy_(torch.tensor([0.3, -1.2], dtype=torch.float64))
    s, t = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    terms = method.compute({}, _outputs({"a": s}, torch.zeros(3, 3)), _outputs({"b": t}, torch.zeros(3, 3)), STATE)
    assert set(terms) == {"vid"}
    mean = head.mean(s)
    variance = torch.log1p(torch.exp(torch.tensor([0.3, -1.2], dtype=torch.float64))) + 1e-5
    var = variance.view(1, 2, 1, 1)
    reference = (0.5 * ((t - mean) ** 2 / var + torch.log(var))).mean()
    torch.testing.assert_close(terms["vid"], 2.0 * reference)


def test_vid_variance_starts_at_init_variance():
    method = build("vid", {"student_layer": "a", "teacher_layer": "b", "init_variance": 3.0}, 3)
    method.setup(_context({"student": {"a": (4,)}, "teacher": {"b": (6,)}}))
    (head,) = method.modules()["heads"]
    torch.testing.assert_close(head.variance(2), torch.full((1, 6), 3.0))
    assert not math.isclose(float(head.variance(2)[0, 0].detach()), 5.0)


class TwoStage(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, width), nn.ReLU())
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _splits() -> Splits:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return Splits(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], num_classes=3)


@pytest.mark.parametrize("name", ["fitnets", "vid"])
def test_engine_fit_on_own_modules_trains_the_method_modules_and_saves_them_beside_the_student(tmp_path, name):
    torch.manual_seed(0)
    student, teacher = TwoStage(4), TwoStage(12)
    layers = {"student_layer": "body", "teacher_layer": "body", "beta": 0.5, "feature_weight": 1.0}
    method = build(name, layers, 3)
    cfg = TrainConfig(epochs=2, batch_size=16, progress=False, cpu=True, train_eval_size=0)
    feature_terms: list[float] = []
    term = "hint" if name == "fitnets" else "vid"

    def spy(info: StepInfo) -> None:  # the method's terms reach callbacks like any other
        feature_terms.append(info.terms[term])

    fit(student, _splits(), method, cfg, OptimizerConfig(lr=0.1), SchedulerConfig(name="constant"),
        out_dir=str(tmp_path), teacher=teacher, callbacks=[spy])  # fmt: skip
    module_name = "regressors" if name == "fitnets" else "heads"
    saved = load_file(str(tmp_path / "method" / f"{module_name}.safetensors"))
    current = {k: v for k, v in method.modules()[module_name].state_dict().items()}
    assert saved.keys() == current.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], current[key])
    student_keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert student_keys == set(student.state_dict())  # the student alone, no method module inside
    assert (
        len(feature_terms) == 8 and feature_terms[-1] < feature_terms[0]
    )  # the feature term fell: the module is in the optimizer


@pytest.mark.parametrize("name", ["fitnets", "vid"])
def test_method_modules_receive_gradients(name):
    method = build(name, {"student_layer": "a", "teacher_layer": "b"}, 3)
    method.setup(_context({"student": {"a": (4, 3, 3)}, "teacher": {"b": (6, 3, 3)}}))
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    student = Outputs(logits=torch.randn(2, 3, requires_grad=True), features={"a": s})
    teacher = Outputs(logits=torch.randn(2, 3), features={"b": torch.randn(2, 6, 3, 3)})
    terms = method.compute({"y": torch.tensor([0, 1])}, student, teacher, STATE)
    sum(terms.values()).backward()
    for module in method.modules().values():
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert s.grad is not None and s.grad.abs().sum() > 0


# ---- through the config and the command line ----

CNN_TEACHER = {"name": "cnn", "kwargs": {"width": 8, "blocks": 2}}
CNN_STUDENT = {"name": "cnn", "kwargs": {"width": 4, "blocks": 2}}
TRAIN = {"progress": False, "batch_size": 64, "optimizer": {"lr": 0.05}, "train_eval_size": 0}


@pytest.fixture(scope="module")
def cnn_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("feature") / "teacher"
    train({"name": "t", "out": str(out), "model": CNN_TEACHER, "train": {**TRAIN, "epochs": 2}})
    return out


def _student(out: Path, teacher: Path, method: dict, **train_keys) -> dict:
    return {
        "name": "s",
        "out": str(out),
        "model": CNN_STUDENT,
        "teacher": {"run": str(teacher)},
        "method": method,
        "train": {**TRAIN, "epochs": 2, **train_keys},
    }


@pytest.mark.parametrize("name", ["fitnets", "vid"])
def test_interrupted_feature_distillation_resumes_to_identical_student_and_method_weights(tmp_path, cnn_teacher, name):
    method = {"name": name, "student_layer": "layer1", "teacher_layer": "layer2", "beta": 0.5}
    straight = distill(_student(tmp_path / "straight", cnn_teacher, method, checkpoint_every_steps=5))
    steps = straight["optimizer_steps"]

    def crash(info: StepInfo) -> None:
        if info.global_step == steps // 2 + 3:
            raise RuntimeError("simulated crash")

    cfg = _student(tmp_path / "crashed", cnn_teacher, method, checkpoint_every_steps=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill(cfg, callbacks=[crash])
    resumed = distill(cfg, resume=True)
    assert resumed["optimizer_steps"] == steps
    module = "regressors" if name == "fitnets" else "heads"
    for file in ("model.safetensors", f"method/{module}.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / file)), load_file(str(tmp_path / "crashed" / file))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (file, key)
    assert resumed["test_accuracy"] == straight["test_accuracy"]


def test_a_wrong_layer_name_is_one_line_listing_the_real_ones(tmp_path, cnn_teacher):
    cfg = _student(tmp_path / "s", cnn_teacher, {"name": "fitnets", "student_layer": "layer9", "teacher_layer": "x"})
    with pytest.raises(ConfigError) as err:
        distill(cfg)
    message = str(err.value)
    assert "\n" not in message and "'layer9'" in message and "layer1" in message
    assert not (tmp_path / "s" / "summary.json").exists()


def test_unpaired_layers_are_a_config_error():
    with pytest.raises(ConfigError, match="pair up"):
        build("vid", {"student_layer": ["a", "b"], "teacher_layer": "c"}, 3)


def test_feature_methods_read_teacher_features_from_the_cache(tmp_path, cnn_teacher):
    """kdlab cache-logits with cache.features stores the teacher's layer outputs (float16); a FitNets run then
    distils from the cache without running the teacher, and trains the student the live run trains, up to that
    rounding. A cache without the features is not used (auto) or refused naming them (require)."""
    from kdlab.api import cache_logits
    from kdlab.errors import CacheError
    from kdlab.teacher.logit_cache import read_cached_features

    method = {"name": "fitnets", "student_layer": "layer1", "teacher_layer": "layer2", "beta": 0.5}
    cache = {"path": str(tmp_path / "cache.safetensors"), "features": ["layer2"]}
    live = distill(_student(tmp_path / "live", cnn_teacher, method))
    path = cache_logits({**_student(tmp_path / "unused", cnn_teacher, method), "cache": cache})
    features = read_cached_features(path, ("layer2",))
    assert features["train"]["layer2"].shape[1:] == (16, 2, 2) and set(features) == {"train", "val", "test"}
    cached = distill({**_student(tmp_path / "cached", cnn_teacher, method), "cache": cache})
    assert cached["teacher"] == f"cached logits {path}" and live["teacher"].startswith("cnn from")
    a, b = (
        load_file(str(tmp_path / "live" / "model.safetensors")),
        load_file(str(tmp_path / "cached" / "model.safetensors")),
    )
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert 0 < worst < 5e-2  # float16 features and logits: close to the live run, not bit-identical
    without = {"path": str(tmp_path / "plain.safetensors")}
    cache_logits({**_student(tmp_path / "unused", cnn_teacher, method), "cache": without})
    auto = distill({**_student(tmp_path / "auto", cnn_teacher, method), "cache": without})
    assert auto["teacher"].startswith("cnn from")  # the cache lacks layer2: the live teacher
    with pytest.raises(CacheError, match=r"holds no teacher features \['layer2'\] \(it holds none\)"):
        distill({**_student(tmp_path / "req", cnn_teacher, method), "cache": {**without, "use": "require"}})
