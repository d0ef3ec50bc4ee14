"""ONNX export of float, pruned and int8 models (torch's dynamo exporter) and inference with onnxruntime.

The int8 models of ``kdlab.compress.quantize`` (torchao) export through the same exporter: their graph is plain
aten ops (per-row min/max, round, clamp, casts) plus ``aten._int_mm``, the int8 × int8 → int32 matrix product,
which has no ONNX translation of its own; we map it to ONNX's ``MatMulInteger`` (same operation, run by
onnxruntime's integer GEMM). The exported file therefore holds the int8 weights and scales themselves — no second
quantization (such as onnxruntime's ``quantize_dynamic`` on the float graph) whose rounding would differ from the
model we evaluated.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlab.eval.footprint import is_tensor_subclass, median_latency_ms
from kdlab.io import atomic_write_bytes

MIN_AGREEMENT = 0.99  # kdlab export: argmax agreement with torch below this is an error
_QUIET = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torchao", "torch.utils._pytree")


def _int_mm_to_onnx(a, b):
    """``aten._int_mm(int8 A, int8 B) -> int32`` is exactly ONNX ``MatMulInteger`` without zero points."""
    from onnxscript import opset18 as op

    return op.MatMulInteger(a, b)


@contextlib.contextmanager
def _quiet():
    """The exporter reports its progress on stdout and warns about torchvision ops we never use."""
    loggers = [logging.getLogger(name) for name in _QUIET]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pytree deprecations inside torch.export
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def export_onnx(model: nn.Module, example_input: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as one self-contained ONNX file (weights inside, atomic write) with a variable batch size.

    ``example_input``: a batch (any size ≥ 1) with the model's input shape; the first dimension becomes dynamic.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = model.cpu()
    model.eval()
    example = example_input.cpu()
    if example.shape[0] < 2:  # a batch of 1 would be specialised by torch.export despite the dynamic dimension
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    batch = torch.export.Dim("batch", min=1)
    with _quiet():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=["input"],
            output_names=["logits"],
            custom_translation_table={torch.ops.aten._int_mm.default: _int_mm_to_onnx},
        )
    proto = program.model_proto
    for node in proto.graph.node:  # the exporter's per-node stack traces would outweigh an int8 model's weights
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]  # intermediate shape annotations: onnxruntime infers them
    return atomic_write_bytes(path, proto.SerializeToString())


def onnx_session(path: str | os.PathLike[str], threads: int | None = None):
    """An onnxruntime CPU session for ``path`` (ValueError with the file name if it does not load);
    ``threads``: intra-op threads (default: onnxruntime's choice)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ValueError(f"{path} does not load in onnxruntime: {str(err).splitlines()[0]}") from None


def onnx_predict(path: str | os.PathLike[str], x: Tensor | np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's outputs (e.g. logits) for ``x`` from onnxruntime, in batches of ``batch_size`` rows."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    array = array.astype(np.float32, copy=False)
    pieces = [session.run(None, {name: array[i : i + batch_size]})[0] for i in range(0, len(array), batch_size)]
    return np.concatenate(pieces)


def export_run(
    run_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    float_model: bool = False,
    latency: bool = True,
) -> dict[str, Any]:
    """``kdlab export``: the run's model (float, pruned or int8) as ONNX, checked on the run's test split.

    The graph takes the source's raw values (a CSV's numbers, 0..255 pixels): the run's preprocessing
    (``preprocess.json``: scale, mean, std) is its first operation, so no user has to repeat it.
    ``float_model``: for a quantized run, its float weights before conversion (``model-float.safetensors``)
    instead of the int8 model. Writes ``output`` (default ``RUN_DIR/model.onnx``, ``model-float.onnx``) and
    compares onnxruntime's logits with torch's on every test input; below ``MIN_AGREEMENT`` argmax agreement the
    file is removed and a ``ValueError`` says so. ``latency``: also onnxruntime's median CPU latency at batch 1
    and 256 (``onnx_latency_ms``). ``contains`` says what the file holds (the student alone); a ReAugKD run's
    knowledge base is copied beside it (``<stem>-kb.safetensors``).
    """
    from kdlab.config import load_config
    from kdlab.data.preprocess import RawInputModel
    from kdlab.errors import ConfigError
    from kdlab.tasks.classify import load_data, run_preprocess
    from kdlab.tasks.classify_eval import load_run_model

    run = Path(run_dir)
    name = "model-float" if float_model and (run / "model-float.safetensors").is_file() else "model"
    weights = run / f"{name}.safetensors"
    if not (run / "config.yaml").is_file() or not weights.is_file():
        raise ConfigError(f"{run} is not a finished kdlab run directory (config.yaml and model.safetensors needed)")
    cfg = load_config(run / "config.yaml")
    data = load_data(cfg, run_preprocess(run))
    preprocess = data.preprocess
    model = RawInputModel(load_run_model(cfg, data, weights), preprocess, tuple(data.in_shape)).eval()
    raw_test = preprocess.invert(data.x_test) / preprocess.scale  # the raw values behind the test inputs
    path = Path(output) if output is not None else run / f"{name}.onnx"
    export_onnx(model, raw_test[:2], path)
    with torch.inference_mode():
        expected = torch.cat([model(raw_test[i : i + 1024]) for i in range(0, len(raw_test), 1024)]).numpy()
    got = onnx_predict(path, raw_test)
    report = {
        "path": str(path),
        "input": "raw values; the run's preprocessing is inside the graph",
        "file_bytes": path.stat().st_size,
        "kind": "int8" if any(is_tensor_subclass(p) for p in model.parameters()) else "float",
        "rows": len(got),
        "agreement": float((got.argmax(1) == expected.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(got - expected).max()),
        "onnx_test_accuracy": float((got.argmax(1) == data.y_test.numpy()).mean()),
    }
    report["contains"] = "the student alone (raw values in, logits out)"
    kb = run / "kb" / "knowledge_base.safetensors"  # ReAugKD's knowledge base: retrieval is not in the graph
    if kb.is_file():
        beside = path.with_name(f"{path.stem}-kb.safetensors")
        shutil.copyfile(kb, beside)
        report["knowledge_base"] = str(beside)
        report["contains"] += (
            f"; the run's retrieval knowledge base is beside it ({beside.name}: teacher embeddings, soft labels and "
            "the teacher projection, safetensors) — retrieval-augmented predictions need the student's embedding "
            "(not an ONNX output) and kdlab.api.predict_proba"
        )
    if latency:  # the same protocol as kdlab evaluate's footprint, with as many threads as torch uses
        session = onnx_session(path, threads=torch.get_num_threads())
        run_onnx = partial(session.run, None)
        example = raw_test[:1].numpy()
        report["onnx_latency_ms"] = {
            f"batch_{b}": median_latency_ms(lambda x: run_onnx({"input": x}), np.repeat(example, b, 0))[0]
            for b in (1, 256)
        }
        report["threads"] = torch.get_num_threads()
    if report["agreement"] < MIN_AGREEMENT:
        path.unlink()
        raise ValueError(
            f"the ONNX export of {run} agrees with the torch model on only {report['agreement']:.2%} of the test "
            f"inputs (< {MIN_AGREEMENT:.0%}); not kept"
        )
    return report
