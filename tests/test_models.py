"""kdlab.models: registry, every zoo model's shapes and parameter counts, user models, FeatureTap."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch
from torch import nn

from kdlab import models
from kdlab.models import FeatureTap, count_parameters, create, registry

IMAGE_SHAPES = [((3, 32, 32), 100), ((1, 28, 28), 10), ((1, 8, 8), 10)]

# Parameter counts for CIFAR-100 (in_shape (3, 32, 32), 100 classes).
#   table: Tian et al., "Contrastive Representation Distillation" (ICLR 2020), Table 1/2 headers, in millions.
#   exact: counted (sum of p.numel()) from megvii-research/mdistiller, mdistiller/models/cifar/{resnet,wrn,
#          vgg,mobilenetv2}.py at commit a08d46f10d6102bd6e3f258ca5ac880b020ea259, with the constructors its
#          cifar_model_dict uses (vgg8 -> vgg8_bn, vgg13 -> vgg13_bn, MobileNetV2 -> mobile_half(100)).
CIFAR100_PARAMS = {
    "resnet20": (0.28, 278_324),
    "resnet56": (0.86, 861_620),
    "resnet8x4": (1.23, 1_233_540),
    "resnet32x4": (7.43, 7_433_860),
    "wrn_16_2": (0.70, 703_284),
    "wrn_40_2": (2.26, 2_255_156),
    "vgg8": (3.96, 3_965_028),
    "vgg13": (9.46, 9_462_180),
    "mobilenetv2": (0.81, 812_836),
    "mobile_half": (0.81, 812_836),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny batches: a thread pool only adds overhead, and on a busy 2-core machine it makes runs 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def user_factory(num_classes: int, in_shape: tuple[int, ...], hidden: int = 4) -> nn.Module:
    """A user model referenced as '<this module>:user_factory'."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


ZOO = [n for n in models.available() if n != "hf_text"]  # hf_text reads token ids: tests/test_text_classify.py


def _image_models() -> list[str]:
    return [n for n in ZOO if n != "mlp"]


def test_required_models_are_registered() -> None:
    required = {"mlp", "cnn", "resnet20", "resnet56", "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2"}
    required |= {"vgg8", "vgg13", "mobilenetv2"}
    assert required <= set(models.available())
    assert models.available() == sorted(models.available())


@pytest.mark.parametrize(("in_shape", "num_classes"), [*IMAGE_SHAPES, ((20,), 3)])
@pytest.mark.parametrize("name", ZOO)
def test_every_model_builds_and_returns_logits(name: str, in_shape: tuple[int, ...], num_classes: int) -> None:
    if len(in_shape) != 3 and name != "mlp":
        with pytest.raises(ValueError, match=r"needs an image in_shape"):
            create(name, num_classes, in_shape)
        return
    model = create(name, num_classes=num_classes, in_shape=in_shape).eval()
    x = torch.randn(2, *in_shape)
    with torch.no_grad(), FeatureTap(model, model.feature_layers) as tap:
        logits = model(x)
    assert logits.shape == (2, num_classes)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == num_classes
    # feature_layers all fire; the last one is the penultimate representation the classifier reads
    assert set(tap.features) == set(model.feature_layers)
    if model.feature_layers:
        assert tap.features[model.feature_layers[-1]].shape == (2, model.fc.in_features)
    assert all(f.shape[0] == 2 for f in tap.features.values())


@pytest.mark.parametrize("name", sorted(CIFAR100_PARAMS))
def test_cifar100_parameter_counts_match_the_literature(name: str) -> None:
    table_millions, exact = CIFAR100_PARAMS[name]
    count = count_parameters(create(name, 100, (3, 32, 32)))
    assert abs(count - table_millions * 1e6) <= 0.02 * table_millions * 1e6
    assert count == exact  # same architecture as the reference code, not just about the same size


def test_mlp_without_hidden_layers_is_logistic_regression() -> None:
    model = create("mlp", 10, (1, 8, 8), hidden=())
    assert count_parameters(model) == 10 * 64 + 10
    assert model.feature_layers == ()
    x = torch.randn(2, 1, 8, 8)
    expected = x.flatten(1) @ model.fc.weight.T + model.fc.bias
    torch.testing.assert_close(model(x), expected)


def test_mlp_hyper_parameters() -> None:
    model = create("mlp", 5, (7,), hidden=[16, 8, 4], dropout=0.1)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [16, 8, 4, 5]
    assert count_parameters(model) == (7 * 16 + 16) + (16 * 8 + 8) + (8 * 4 + 4) + (4 * 5 + 5)
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    assert create("mlp", 5, (7,), hidden=32).fc.in_features == 32
    assert model(torch.randn(2, 7)).shape == (2, 5)


@pytest.mark.parametrize("blocks", [1, 2, 3, 4])
def test_cnn_works_on_8x8_digits(blocks: int) -> None:
    model = create("cnn", 10, (1, 8, 8), width=8, blocks=blocks)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert model.fc.in_features == 8 * 2 ** (blocks - 1)


def test_cnn_fashion_mnist_teacher_shape() -> None:
    model = create("cnn", 10, (1, 28, 28), width=64, dropout=0.2)
    channels = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert channels == [64, 64, 128, 128]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["cnn", "resnet8", "wrn_16_1", "vgg8", "mobilenetv2"])
def test_conv_models_accept_flattened_or_channel_less_images(name: str) -> None:
    model = create(name, 10, (1, 8, 8)).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(model(x.flatten(1)), expected)
        torch.testing.assert_close(model(x[:, 0]), expected)


def test_generic_families_take_hyper_parameters() -> None:
    assert count_parameters(create("resnet", 100, (3, 32, 32), depth=56)) == CIFAR100_PARAMS["resnet56"][1]
    two = create("resnet", 10, (3, 32, 32), depth=10, widths=(8, 8, 16))
    assert sum(isinstance(m, models.resnet.BasicBlock) for m in two.modules()) == 4
    assert two.feature_layers == ("stem", "layer1", "layer2", "pool")
    assert count_parameters(create("wrn", 100, (3, 32, 32), depth=40, widen_factor=2)) == 2_255_156
    assert count_parameters(create("vgg", 100, (3, 32, 32), depth=13)) == 9_462_180
    assert create("wrn_16_2", 10, (3, 32, 32), dropout=0.3)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    wide = create("mobilenetv2", 10, (3, 32, 32), width_mult=1.0)
    assert count_parameters(wide) > count_parameters(create("mobile_half", 10, (3, 32, 32)))


def test_sizes_may_be_any_integer_type() -> None:
    model = create("cnn", torch.tensor(10), torch.Size([1, 8, 8]), width=4)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert create("mlp", 3, [2, 2]).body[0][0].in_features == 4


def test_names_are_case_insensitive() -> None:
    assert isinstance(create("MobileNetV2", 100, (3, 32, 32)), models.MobileNetV2)
    assert isinstance(create("ResNet20", 100, (3, 32, 32)), models.CifarResNet)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: create("resnet21", 10, (3, 32, 32)),
            r"unknown model 'resnet21'; available: cnn, hf_text, mlp, .*resnet20",
        ),
        (lambda: create("mlp", 10, (4,), hiddden=(3,)), r"bad arguments for model 'mlp'.*hidden, dropout"),
        (lambda: create("resnet20", 10, (3, 32, 32), depth=56), r"'resnet20'.*no hyper-parameters"),
        (lambda: create("mlp", 0, (4,)), r"num_classes must be a positive integer"),
        (lambda: create("mlp", 10.0, (4,)), r"num_classes"),
        (lambda: create("mlp", 10, ()), r"in_shape"),
        (lambda: create("mlp", 10, (3, -1)), r"in_shape"),
        (lambda: create("mlp", 10, "3,32,32"), r"in_shape"),
        (lambda: create("mlp", 10, (4,), hidden=(8, 0)), r"hidden"),
        (lambda: create("mlp", 10, (4,), dropout=1.0), r"dropout"),
        (lambda: create("resnet", 10, (3, 32, 32), depth=21), r"depth must be 6n \+ 2"),
        (lambda: create("resnet", 10, (3, 32, 32), depth=2), r"depth must be 6n \+ 2"),
        (lambda: create("wrn", 10, (3, 32, 32), depth=15), r"depth must be 6n \+ 4"),
        (lambda: create("vgg", 10, (3, 32, 32), depth=10), r"vgg depth must be one of"),
        (lambda: create("cnn", 10, (64,)), r"'cnn' needs an image in_shape"),
        (lambda: create("cnn", 10, (1, 8, 8), blocks=0), r"blocks"),
    ],
)
def test_bad_requests_raise_one_clear_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_register_a_new_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @models.register("Tiny")
    def tiny(num_classes: int, in_shape: tuple[int, ...], width: int = 3) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))

    assert "tiny" in models.available()
    assert create("tiny", 4, (2, 3), width=5)(torch.randn(2, 2, 3)).shape == (2, 4)
    assert models.register("tiny")(tiny) is tiny  # re-registering the same factory is harmless
    with pytest.raises(ValueError, match="already registered"):
        models.register("tiny")(user_factory)
    with pytest.raises(ValueError, match="no ':'"):
        models.register("a:b")


def test_user_model_from_this_module() -> None:
    model = create(f"{__name__}:user_factory", 3, (1, 8, 8), hidden=6)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert count_parameters(model) == (64 * 6 + 6) + (6 * 3 + 3)


@pytest.fixture
def user_module(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway package 'kdlab_test_user_models.nets' on sys.path."""
    package = tmp_path / "kdlab_test_user_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Builders:
                @staticmethod
                def linear(num_classes, in_shape, bias=True):
                    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes, bias=bias))

            def linear(num_classes, in_shape, bias=True):
                return Builders.linear(num_classes, in_shape, bias)

            def not_a_model(num_classes, in_shape):
                return "oops"

            CONSTANT = 3
            """
        )
    )
    (tmp_path / "kdlab_test_broken_module.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)  # the user's own code: under the current directory (kdlab.models.trust)
    yield "kdlab_test_user_models.nets"
    for name in ("kdlab_test_user_models.nets", "kdlab_test_user_models", "kdlab_test_broken_module"):
        sys.modules.pop(name, None)


def test_user_model_from_a_module_on_sys_path(user_module: str) -> None:
    for spec in (f"{user_module}:linear", f"{user_module}:Builders.linear"):
        model = create(spec, 5, (3, 4, 4), bias=False)
        assert model(torch.randn(2, 3, 4, 4)).shape == (2, 5)
        assert model[1].bias is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("kdlab_test_no_such_module:build", r"cannot import module 'kdlab_test_no_such_module'"),
        ("kdlab_test_broken_module:build", r"cannot import module 'kdlab_test_broken_module'.*RuntimeError: boom"),
        ("kdlab_test_user_models.nets:missing", r"has no attribute 'missing'"),
        ("kdlab_test_user_models.nets:CONSTANT", r"not a callable"),
        ("kdlab_test_user_models.nets:not_a_model", r"returned str, not a torch.nn.Module"),
        ("kdlab_test_user_models.nets:linear", r"bad arguments for model .*bias"),
        (":linear", r"must look like 'package.module:callable'"),
        ("kdlab_test_user_models.nets:", r"must look like 'package.module:callable'"),
    ],
)
def test_user_model_errors(user_module: str, spec: str, message: str) -> None:
    kw = {"width": 3} if spec.endswith(":linear") and not spec.startswith(":") else {}
    with pytest.raises(ValueError, match=message):
        create(spec, 5, (3, 4, 4), **kw)


# ---------------------------------------------------------------------------------------------- FeatureTap


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_feature_tap_shapes_and_hook_removal() -> None:
    model = create("resnet20", 100, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with FeatureTap(model, ["stem", "layer1", "layer2", "layer3", "pool", "fc"]) as tap:
        assert _hooks(model) == 6
        logits = model(x)
    feats = tap.features
    assert feats["stem"].shape == feats["layer1"].shape == (2, 16, 32, 32)
    assert feats["layer2"].shape == (2, 32, 16, 16)
    assert feats["layer3"].shape == (2, 64, 8, 8)
    assert feats["pool"].shape == (2, 64)
    assert feats["fc"] is logits
    assert _hooks(model) == 0 and not tap.active
    model(x)  # no hooks left: nothing is recorded any more
    assert tap.features["fc"] is logits


def test_feature_tap_without_with_and_repeated_forwards() -> None:
    model = create("mlp", 3, (5,), hidden=(4, 2))
    tap = FeatureTap(model, "body.1")
    first = model(torch.randn(2, 5))
    assert tap.features["body.1"].shape == (2, 2)
    model(torch.randn(6, 5))
    assert tap.features["body.1"].shape == (6, 2)  # overwritten by the latest forward
    tap.clear()
    assert tap.features == {}
    tap.remove()
    tap.remove()  # idempotent
    assert _hooks(model) == 0 and first.shape == (2, 3)
    assert "removed" in repr(tap)


def test_feature_tap_keeps_the_graph_unless_detached() -> None:
    model = create("resnet8", 10, (3, 16, 16))
    with FeatureTap(model, ["layer2"]) as tap:
        model(torch.randn(2, 3, 16, 16))
    tap.features["layer2"].pow(2).mean().backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0
    assert model.layer3[0].conv1.weight.grad is None  # after the tapped layer: untouched by the feature loss
    assert model.fc.weight.grad is None

    with FeatureTap(model, ["layer2"], detach=True) as frozen:
        model(torch.randn(2, 3, 16, 16))
    assert not frozen.features["layer2"].requires_grad


def test_tapped_features_are_not_overwritten_by_later_layers() -> None:
    # every ReLU in the zoo is out-of-place, so a pre-activation tap keeps its negative values
    model = create("resnet8", 10, (3, 16, 16))
    with FeatureTap(model, ["layer1.0.preact", "layer1"]) as tap:
        model(torch.randn(2, 3, 16, 16))
    preact, post = tap.features["layer1.0.preact"], tap.features["layer1"]
    assert (preact < 0).any()
    torch.testing.assert_close(post, preact.relu())


class _Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the real model lives at ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def test_feature_tap_on_a_ddp_style_wrapper() -> None:
    inner = create("cnn", 10, (1, 8, 8), width=4)
    wrapped = _Wrapper(inner)
    with FeatureTap(wrapped, ["layer2", "module.pool"]) as tap:
        wrapped(torch.randn(2, 1, 8, 8))
    assert tap.features["layer2"].shape == (2, 8, 2, 2)
    assert tap.features["module.pool"].shape == (2, 8)
    with FeatureTap(inner, ["module.layer1"]) as tap:  # a name copied from the wrapped model
        inner(torch.randn(2, 1, 8, 8))
    assert tap.features["module.layer1"].shape == (2, 4, 4, 4)
    assert _hooks(wrapped) == 0


@pytest.mark.parametrize(("name", "suggestion"), [("layr2", "layer2"), ("module.layer9", "layer1"), ("fc1", "fc")])
def test_feature_tap_unknown_names(name: str, suggestion: str) -> None:
    model = _Wrapper(create("resnet8", 10, (3, 32, 32)))
    with pytest.raises(ValueError, match=rf"no submodule '{name}'.*did you mean: .*{suggestion}"):
        FeatureTap(model, ["layer1", name])
    assert _hooks(model) == 0  # nothing half-installed
    with pytest.raises(ValueError, match="at least one"):
        FeatureTap(model, [])


def test_count_parameters_trainable_only_and_shared_weights() -> None:
    model = create("mlp", 3, (4,), hidden=(5,))
    total = 4 * 5 + 5 + 5 * 3 + 3
    assert count_parameters(model) == total
    model.fc.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - (5 * 3 + 3)
    assert count_parameters(model) == total
    shared = nn.Linear(3, 3)
    assert count_parameters(nn.Sequential(shared, shared)) == 12
