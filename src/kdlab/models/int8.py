"""Post-training int8 quantization of a model's ``nn.Linear`` layers with torchao — the one place that calls
torchao's ``quantize_``.

It lives under ``models`` (not ``compress``) because two packages need it: ``kdlab.compress`` (a student made
small) and the engine's fast teacher (``teacher.quantize: int8_dynamic``), and the engine may not import
``compress``. The schemes, their numerics and why torchao: ``kdlab.compress.quantize``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Literal

from torch import Tensor, nn

from kdlab.quiet import quiet_torchao

Scheme = Literal["int8_dynamic", "int8_weight_only"]
SCHEMES: tuple[str, ...] = ("int8_dynamic", "int8_weight_only")


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def base_config(scheme: str):
    """torchao's post-training config for ``scheme`` (also what ``convert_qat`` applies)."""
    check_scheme(scheme)
    with quiet_torchao():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, MappingType
    if scheme == "int8_weight_only":
        return Int8WeightOnlyConfig()
    return Int8DynamicActivationInt8WeightConfig(act_mapping_type=MappingType.ASYMMETRIC, set_inductor_config=False)


def quantize_linears(model: nn.Module, config) -> None:
    """Apply a torchao config to every ``nn.Linear`` of ``model`` (in place)."""
    with quiet_torchao():
        from torchao.quantization import quantize_

        quantize_(model, config, filter_fn=lambda module, _fqn: isinstance(module, nn.Linear))


def ptq_int8(
    model: nn.Module, calibration: Iterable[Tensor] | None = None, scheme: Scheme = "int8_dynamic"
) -> nn.Module:
    """Post-training int8 quantization of every ``nn.Linear``: a new module in eval mode; ``model`` is untouched.

    ``calibration`` is accepted for schemes that need activation statistics; both offered schemes need none
    (dynamic activation scales are computed per input at run time), so it is not consumed.
    """
    check_scheme(scheme)
    del calibration
    quantized = copy.deepcopy(model).cpu().eval()
    quantize_linears(quantized, base_config(scheme))
    return quantized
