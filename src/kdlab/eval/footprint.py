"""What a model costs to keep and to run, measured on this machine: bytes on disk, parameters, non-zeros, and CPU
latency at batch 1 and 256 (median of repeated timed runs after warm-up, ``torch.inference_mode``).

Parameter counts alone hide what compression buys: an int8 weight is a quarter of a float32 one on disk, and a
90 %-sparse dense tensor is as slow and as large as a dense one. Latency depends on the thread count and on what
else runs on the host, so it is reported with both (``threads``, ``repeats``) and as a median.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def is_tensor_subclass(tensor: Tensor) -> bool:
    """A wrapper tensor such as torchao's int8 weights (int8 data + scales behind a float-looking tensor)."""
    return type(tensor) not in (torch.Tensor, nn.Parameter) and hasattr(tensor, "__tensor_flatten__")


def _storage_bytes(tensor: Tensor) -> int:
    """Bytes a tensor really holds: for a quantized (torchao) tensor the sum of its int8 data and scales."""
    if is_tensor_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(_storage_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def _nonzero(tensor: Tensor) -> int:
    dense = tensor.dequantize() if is_tensor_subclass(tensor) and hasattr(tensor, "dequantize") else tensor
    return int(torch.count_nonzero(dense.detach()))


def counts(model: nn.Module) -> dict[str, int]:
    """Parameters (logical elements), non-zero parameters, and the bytes the parameters and buffers occupy."""
    params = list(model.parameters())
    return {
        "parameters": sum(p.numel() for p in params),
        "nonzero_parameters": sum(_nonzero(p) for p in params),
        "parameter_bytes": sum(_storage_bytes(p) for p in params),
        "buffer_bytes": sum(_storage_bytes(b) for b in model.buffers()),
    }


def tile(example: Tensor, batch: int) -> Tensor:
    """``batch`` rows made by repeating the example's rows (latency needs shapes, not distinct data)."""
    rows = example.shape[0]
    reps = -(-batch // rows)
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:batch].contiguous()


@torch.inference_mode()
def median_latency_ms(
    model: Callable[[Any], Any], x: Any, repeats: int = 20, warmup: int = 3, budget_s: float = 2.0
) -> tuple[float, int]:
    """Median wall time in ms of ``model(x)`` (any callable: a module, an onnxruntime session's run) over
    ``repeats`` runs after ``warmup`` runs. Stops early (after at least 3 timed runs, and after the first warm-up
    run if it took over a quarter of ``budget_s``) once ``budget_s`` is spent, so a large model does not stall
    ``kdlab evaluate``. Returns the median and the number of timed runs."""
    for _ in range(warmup):
        start = time.perf_counter()
        model(x)
        if time.perf_counter() - start > budget_s / 4:  # a slow model: one warm-up run is enough
            break
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (len(times) < 3 or spent < budget_s):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times) * 1e3, len(times)


def footprint(
    model: nn.Module,
    example_input: Tensor,
    files: Iterable[str | os.PathLike[str]] = (),
    *,
    latency: bool = True,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 20,
) -> dict[str, Any]:
    """Size on disk of ``files`` (bytes), parameter/non-zero counts and bytes, and CPU latency per batch size.

    ``example_input``: one or more input rows; the batches are its rows repeated. The model runs on CPU in eval
    mode (its training mode and device are restored afterwards).
    """
    sizes = {str(Path(f)): Path(f).stat().st_size for f in files}
    result: dict[str, Any] = {"file_bytes": sum(sizes.values()), "files": sizes, **counts(model)}
    if latency:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        if device.type != "cpu":  # (a torchao int8 model is CPU-only here: it is never moved)
            model.cpu()
        model.eval()
        timings: dict[str, float] = {}
        runs: dict[str, int] = {}
        for batch in batch_sizes:
            ms, n = median_latency_ms(model, tile(example_input.cpu(), batch), repeats=repeats)
            timings[f"batch_{batch}"] = ms
            runs[f"batch_{batch}"] = n
        if device.type != "cpu":
            model.to(device)
        model.train(was_training)
        result["latency_ms"] = timings
        result["latency_runs"] = runs
        result["threads"] = torch.get_num_threads()
    return result
