"""kdlab.models: a small model zoo with a timm-style registry, and feature taps for distillation.

``create(name, num_classes, in_shape, **hyper_parameters)`` builds ``mlp``, ``cnn``, the CIFAR zoo of the
CRD / mdistiller papers (``resnet20``, ``resnet56``, ``resnet8x4``, ``resnet32x4``, ``wrn_16_2``,
``wrn_40_2``, ``vgg8``, ``vgg13``, ``mobilenetv2``, ...) or any ``"package.module:callable"``.
Every zoo model maps ``(N, *in_shape)`` to logits ``(N, num_classes)``, names its classifier ``fc`` and
lists hookable intermediate features in ``feature_layers`` (the last one, ``pool`` or the last hidden
block, is the penultimate representation); ``FeatureTap`` records them with forward hooks.
"""

from . import hf_text  # noqa: F401  (registers hf_text; transformers is imported only when one is built)
from ._common import count_parameters
from .cnn import SmallCNN
from .mlp import MLP
from .mobilenetv2 import MobileNetV2
from .registry import available, create, register
from .resnet import CifarResNet
from .tap import FeatureTap, resolve_submodule
from .vgg import VGG
from .wrn import WideResNet

__all__ = [
    "MLP",
    "VGG",
    "CifarResNet",
    "FeatureTap",
    "MobileNetV2",
    "SmallCNN",
    "WideResNet",
    "available",
    "count_parameters",
    "create",
    "register",
    "resolve_submodule",
]
