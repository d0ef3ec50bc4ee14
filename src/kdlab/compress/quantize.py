"""int8 quantization with torchao: post-training (``ptq_int8``), quantization-aware training (``prepare_qat`` →
train with any kdlab method → ``convert_qat``), and a safe on-disk format (``save_quantized``/``load_quantized``).

Why torchao: ``torch.ao.quantization``'s PT2E flow is removed in torch 2.13 and its eager flow deprecated; torchao
(0.18) is PyTorch's maintained quantization library and its int8 paths run on CPU (int8 weight-only, and int8
dynamic activation + int8 weight through ``aten._int_mm``). Its int4 paths need CUDA kernels and are not offered.
Only ``nn.Linear`` layers are quantized (torchao's int8 configs act on Linear); convolutions stay float.

Schemes:

- ``int8_dynamic``: int8 weights per output channel (symmetric) and int8 activations quantized per input row at run
  time (asymmetric: post-ReLU activations are non-negative, so the zero point keeps all 256 levels); an int8 × int8
  matrix product. Needs no calibration data.
- ``int8_weight_only``: int8 weights per output channel, float activations. Needs no calibration data.

QAT inserts torchao's fake quantizers with exactly these numerics (per-channel symmetric weights, per-token
asymmetric activations), so the converted int8 model computes what the student was trained through.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from kdlab.eval.footprint import is_tensor_subclass as is_quantized
from kdlab.io import atomic_write_bytes
from kdlab.models.int8 import SCHEMES, Scheme, base_config, check_scheme, ptq_int8, quantize_linears
from kdlab.models.weights import register_format
from kdlab.quiet import quiet_torchao

METADATA_KEY = "kdlab_quantization"  # safetensors metadata: the scheme a flattened int8 state was made with
_SEP = ":"  # "<parameter name>:<inner tensor name>", e.g. "fc.weight:qdata"
# the post-training path (ptq_int8, the schemes) is shared with the engine's fast teacher: kdlab.models.int8
__all__ = [
    "SCHEMES",
    "Scheme",
    "convert_qat",
    "describe",
    "load_quantized",
    "prepare_qat",
    "ptq_int8",
    "save_quantized",
]


def prepare_qat(model: nn.Module, scheme: Scheme = "int8_dynamic") -> nn.Module:
    """A fake-quantized copy of ``model`` (Linear → torchao ``FakeQuantizedLinear``), trainable like any model.

    Same parameter names as ``model``, so optimizers, checkpoints and ``ReapplyMasks`` work unchanged.
    """
    check_scheme(scheme)
    with quiet_torchao():
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
    weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    activation = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    if scheme == "int8_weight_only":
        activation = None
    prepared = copy.deepcopy(model)
    quantize_linears(prepared, QATConfig(activation_config=activation, weight_config=weight, step="prepare"))
    prepared.kdlab_qat_scheme = scheme  # read back by convert_qat
    return prepared


def convert_qat(model: nn.Module, scheme: Scheme | None = None) -> nn.Module:
    """The real int8 model of a ``prepare_qat`` model (a new module in eval mode; ``model`` is untouched)."""
    scheme = scheme or getattr(model, "kdlab_qat_scheme", None)
    if scheme is None:
        raise ValueError("convert_qat needs a model from prepare_qat (or an explicit scheme)")
    check_scheme(scheme)
    with quiet_torchao():
        from torchao.quantization.qat import QATConfig
    converted = copy.deepcopy(model).cpu().eval()
    quantize_linears(converted, QATConfig(base_config(scheme), step="convert"))
    if hasattr(converted, "kdlab_qat_scheme"):
        del converted.kdlab_qat_scheme
    return converted


def inner_tensors(tensor: Tensor) -> dict[str, Tensor]:
    """The plain tensors a torchao tensor is made of (``qdata`` int8, ``scale`` float32, ...); itself if plain."""
    if not is_quantized(tensor):
        return {"": tensor}
    names, _ctx = tensor.__tensor_flatten__()
    return {name: getattr(tensor, name) for name in names}


def _named_tensors(model: nn.Module) -> dict[str, Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def flat_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state as plain tensors: int8 weights become ``name:qdata`` (int8) + ``name:scale`` (float32)."""
    flat: dict[str, Tensor] = {}
    for name, tensor in _named_tensors(model).items():
        for inner, value in inner_tensors(tensor).items():
            flat[f"{name}{_SEP}{inner}" if inner else name] = value.detach().contiguous().cpu()
    return flat


def save_quantized(model: nn.Module, path: str | Path, scheme: str) -> Path:
    """Write the int8 model's plain tensors as safetensors (atomic); the file is the real int8 size on disk."""
    check_scheme(scheme)
    from safetensors.torch import save

    return atomic_write_bytes(path, save(flat_state(model), metadata={METADATA_KEY: scheme}))


def saved_scheme(path: str | Path) -> str | None:
    """The scheme recorded in a safetensors file by ``save_quantized``; None for a float model's file."""
    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get(METADATA_KEY)


@torch.no_grad()
def load_quantized(float_model: nn.Module, path: str | Path) -> nn.Module:
    """Rebuild the int8 model saved by ``save_quantized`` from a float model of the same architecture.

    The skeleton is ``ptq_int8(float_model)`` (same tensor subclasses and shapes); every inner tensor is then
    overwritten with the stored one, so the result is bit-identical to the saved model. Plain safetensors, no
    pickle: nothing in the file can execute code.
    """
    scheme = saved_scheme(path)
    if scheme is None:
        raise ValueError(f"{path} holds no int8 model (no {METADATA_KEY!r} metadata)")
    model = ptq_int8(float_model, scheme=scheme)
    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
        expected = set(flat_state(model))
        if stored != expected:
            missing, unexpected = sorted(expected - stored), sorted(stored - expected)
            raise ValueError(f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for name, tensor in _named_tensors(model).items():
            for inner, target in inner_tensors(tensor).items():
                value = handle.get_tensor(f"{name}{_SEP}{inner}" if inner else name)
                if value.shape != target.shape or value.dtype != target.dtype:
                    raise ValueError(
                        f"{path}: {name} {inner} is {tuple(value.shape)} {value.dtype}, "
                        f"the model needs {tuple(target.shape)} {target.dtype}"
                    )
                target.copy_(value)
    return model


def describe(model: nn.Module) -> dict[str, Any]:
    """How many Linear layers carry int8 weights (and of which torchao type): a quick check of a converted model."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return {"linear_layers": len(linears), "int8_linear_layers": sum(is_quantized(m.weight) for m in linears)}


register_format(METADATA_KEY, load_quantized, "kdlab.compress")
