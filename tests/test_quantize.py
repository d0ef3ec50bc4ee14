"""int8 quantization (kdlab.compress.quantize), ONNX export and ``kdlab compress``/``kdlab export`` with quantize.

PTQ and QAT + KD on digits MLPs: the int8 model agrees with its float / fake-quant counterpart, the file is the
real int8 size (computed by hand from the shapes), exports run in onnxruntime and agree with torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import test_compress
import torch
from safetensors.torch import save_file
from test_compress import TRAIN, assert_one_line_error

from kdlab import models
from kdlab.api import evaluate
from kdlab.cli import main
from kdlab.compress.export import export_onnx, onnx_predict
from kdlab.compress.quantize import (
    convert_qat,
    flat_state,
    load_quantized,
    prepare_qat,
    ptq_int8,
    save_quantized,
    saved_scheme,
)
from kdlab.compress.recover import compress
from kdlab.data import load_dataset
from kdlab.losses import kd_loss

pytestmark = pytest.mark.usefixtures("one_thread")
source_run = test_compress.source_run  # the same trained digits MLP (64 hidden units) as the pruning tests


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", val_fraction=0.1, seed=0)


def _fit(model: torch.nn.Module, data, epochs: int, teacher: torch.nn.Module | None = None, lr: float = 0.05):
    """A minimal loop (CE, or KD from ``teacher``): the engine's own path is tested end to end below."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.y_train), generator=gen).split(64):
            x, y = data.x_train[idx], data.y_train[idx]
            logits = model(x)
            if teacher is None:
                loss = torch.nn.functional.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = 0.1 * torch.nn.functional.cross_entropy(logits, y) + 0.9 * kd_loss(logits, t_logits, 4.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def float_mlp(digits):
    torch.manual_seed(0)
    return _fit(models.create("mlp", 10, (1, 8, 8), hidden=[64]), digits, epochs=5)


def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).double().mean())


@pytest.mark.parametrize("scheme", ["int8_dynamic", "int8_weight_only"])
def test_ptq_int8_agrees_with_the_float_model(float_mlp, digits, scheme):
    before = {k: v.clone() for k, v in float_mlp.state_dict().items()}
    quantized = ptq_int8(float_mlp, calibration=[digits.x_train[:64]], scheme=scheme)
    assert all(torch.equal(before[k], v) for k, v in float_mlp.state_dict().items())  # the float model untouched
    flat = flat_state(quantized)
    assert flat["body.0.0.weight:qdata"].dtype == torch.int8 and flat["fc.weight:qdata"].shape == (10, 64)
    assert flat["body.0.0.weight:scale"].shape == (64, 1)  # one scale per output channel
    x = digits.x_test
    float_logits, int8_logits = _predict(float_mlp, x), _predict(quantized, x)
    assert _agreement(int8_logits, float_logits) >= 0.98
    assert float((float_logits - int8_logits).abs().max()) < 0.5  # close logits, not only the same argmax
    # per-channel symmetric int8: dequantized weights within half a quantization step of the float ones
    w = float_mlp.fc.weight.detach()
    step = w.abs().amax(1, keepdim=True) / 127.5
    dequant = flat["fc.weight:qdata"].float() * flat["fc.weight:scale"]
    assert bool(((dequant - w).abs() <= step / 2 + 1e-6).all())


def test_qat_converted_int8_agrees_with_its_fake_quant_model(float_mlp, digits):
    """The acceptance test: QAT + KD from the float teacher on a tiny model, then conversion."""
    student = prepare_qat(models.create("mlp", 10, (1, 8, 8), hidden=[32]))
    assert type(student.fc).__name__ == "FakeQuantizedLinear"
    assert [n for n, _ in student.named_parameters()] == ["body.0.0.weight", "body.0.0.bias", "fc.weight", "fc.bias"]
    _fit(student, digits, epochs=4, teacher=float_mlp)
    converted = convert_qat(student)
    assert type(converted.fc.weight).__name__ == "Int8Tensor"
    x, y = digits.x_test, digits.y_test
    fake, real = _predict(student, x), _predict(converted, x)
    assert _agreement(real, fake) >= 0.98
    assert float((real - fake).abs().max()) < 0.05  # the fake quantizers simulate the int8 kernels closely
    assert float((real.argmax(-1) == y).double().mean()) >= 0.9


def _safetensors_data_bytes(path: Path) -> int:
    """File size minus the 8-byte length and the JSON header: the bytes of the tensors themselves."""
    with open(path, "rb") as handle:
        (header,) = struct.unpack("<Q", handle.read(8))
    return path.stat().st_size - 8 - header


def test_int8_file_is_the_real_int8_size_and_reloads_exactly(float_mlp, digits, tmp_path):
    quantized = ptq_int8(float_mlp)
    int8_path = save_quantized(quantized, tmp_path / "int8.safetensors", "int8_dynamic")
    float_path = tmp_path / "float.safetensors"
    save_file(float_mlp.state_dict(), str(float_path))
    # by hand, mlp 64 -> 64 -> 10: weights 64*64 + 64*10 = 4736, biases 74, output channels 74
    assert _safetensors_data_bytes(float_path) == (4736 + 74) * 4 == 19240
    # int8 weights 4736 B + float32 scale and int8 zero point per channel 74 * (4 + 1) + float32 biases 74 * 4
    assert _safetensors_data_bytes(int8_path) == 4736 + 74 * 5 + 74 * 4 == 5402
    assert pytest.approx(3.5617, abs=1e-4) == 19240 / 5402  # the Linear weights alone: exactly 4x
    assert float_path.stat().st_size / int8_path.stat().st_size > 3.0  # headers included
    assert saved_scheme(int8_path) == "int8_dynamic" and saved_scheme(float_path) is None
    reloaded = load_quantized(models.create("mlp", 10, (1, 8, 8), hidden=[64]), int8_path)
    assert torch.equal(_predict(reloaded, digits.x_test), _predict(quantized, digits.x_test))  # bit-identical
    with pytest.raises(ValueError, match="does not match the model"):
        load_quantized(models.create("mlp", 10, (1, 8, 8), hidden=[64, 8]), int8_path)


def test_onnx_exports_run_in_onnxruntime_and_agree(float_mlp, digits, tmp_path):
    x = digits.x_test
    path = export_onnx(float_mlp, x[:1], tmp_path / "float.onnx")
    got = torch.from_numpy(onnx_predict(path, x, batch_size=37))  # batches of 37 and 27 rows: dynamic batch
    torch.testing.assert_close(got, _predict(float_mlp, x), rtol=0, atol=1e-4)
    quantized = ptq_int8(float_mlp)
    path = export_onnx(quantized, x[:1], tmp_path / "int8.onnx")
    got = torch.from_numpy(onnx_predict(path, x[:1]))  # batch 1
    assert got.shape == (1, 10)
    got = torch.from_numpy(onnx_predict(path, x))
    assert _agreement(got, _predict(quantized, x)) >= 0.99
    assert float((got - _predict(quantized, x)).abs().max()) < 1e-3  # MatMulInteger: the same int8 product
    import onnx

    graph = onnx.load(str(path)).graph
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) == 2
    int8_weights = sorted(init.dims[0] * init.dims[1] for init in graph.initializer if init.data_type == 3)
    assert int8_weights == [640, 4096]  # the int8 weights themselves, not float copies


def _compress_config(out: Path, source: Path, sections: dict, **extra) -> dict:
    """A digits ``kdlab compress`` config: ``sections`` = prune/quantize; ``extra`` = method, train, ..."""
    train_cfg = {**TRAIN, "epochs": 1, **extra.pop("train", {})}
    base = {"name": out.name, "out": str(out), "data": {"name": "digits"}, "train": train_cfg}
    return {**base, "compress": {"source": str(source), **sections}, **extra}


def test_compress_qat_with_kd_end_to_end(source_run, tmp_path):
    out = tmp_path / "qat-kd"
    kd = {"name": "kd", "temperature": 4.0, "alpha": 0.1, "beta": 0.9}
    sections = {"quantize": {"mode": "qat", "scheme": "int8_dynamic"}}
    cfg = _compress_config(out, source_run, sections, method=kd, train={"epochs": 2, "optimizer": {"lr": 0.01}})
    summary = compress(cfg)
    q = summary["compress"]["quantize"]
    assert summary["quantized"] == "int8_dynamic" and summary["teacher"].startswith("mlp from")  # float source
    assert summary["test_accuracy"] >= 0.92, summary["test_accuracy"]  # the int8 model's accuracy
    assert q["agreement_with_float"] >= 0.98 and q["int8_linear_layers"] == q["linear_layers"] == 2
    assert q["int8_file_bytes"] == (out / "model.safetensors").stat().st_size
    assert q["float_file_bytes"] / q["int8_file_bytes"] > 3.0
    assert "quantize:\n    mode: qat" in (out / "config.yaml").read_text()
    evaluated = evaluate(out, splits=("test",), latency=False)  # rebuilds the int8 model from the run directory
    assert evaluated["test"]["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert evaluated["footprint"]["file_bytes"] == q["int8_file_bytes"]
    assert evaluated["footprint"]["parameter_bytes"] == 5402 and evaluated["parameters"] == 4810
    assert json.loads((out / "summary.json").read_text())["evaluation"]["footprint"]["parameters"] == 4810


def test_compress_prune_then_ptq_and_export_cli(source_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pruned-ptq"
    sections = {"prune": {"kind": "structured", "sparsity": 0.5}, "quantize": {"scheme": "int8_weight_only"}}
    summary = compress(_compress_config(out, source_run, sections))  # quantize.mode: ptq by default
    q = summary["compress"]["quantize"]
    assert summary["compress"]["steps"][0]["hidden"] == [32] and summary["parameters"] == 2410  # pruned first
    assert q["agreement_with_float"] >= 0.98
    assert _safetensors_data_bytes(out / "model.safetensors") == 64 * 32 + 32 * 10 + 42 * 5 + 42 * 4  # = 2746
    monkeypatch.setattr("sys.argv", ["kdlab", "export", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and "argmax agreement 1.0000" in printed.replace("\n", " ")
    assert "onnxruntime CPU latency (median" in printed
    assert (out / "model.onnx").is_file()
    # an export that disagrees with torch (here: onnxruntime's rows shuffled) is an error and is not kept
    shuffled = lambda path, x: onnx_predict(path, x)[torch.randperm(len(x)).numpy()]  # noqa: E731
    monkeypatch.setattr("kdlab.compress.export.onnx_predict", shuffled)
    target = tmp_path / "bad.onnx"
    assert_one_line_error(monkeypatch, capsys, ["export", str(out), "-o", str(target)], "agrees with the torch model")
    assert not target.exists()


def test_compress_prune_then_qat_keeps_the_pruned_zeros(source_run, tmp_path):
    sections = {"prune": {"kind": "unstructured", "sparsity": 0.5}, "quantize": {"mode": "qat"}}
    summary = compress(_compress_config(tmp_path / "sparse-qat", source_run, sections))  # method ce: QAT fine-tune
    zeros = round(0.5 * 4736)  # of the 64*64 + 64*10 Linear weights
    assert summary["compress"]["steps"][0]["sparsity"] == zeros / 4736  # the pruning record survives QAT
    assert summary["nonzero_parameters"] == 4810 - zeros and summary["quantized"] == "int8_dynamic"
    evaluated = evaluate(tmp_path / "sparse-qat", splits=("test",), latency=False)
    # masks re-applied through QAT, and int8 keeps a zero weight zero (symmetric: zero point 0)
    assert evaluated["footprint"]["nonzero_parameters"] <= 4810 - zeros
    assert evaluated["test"]["accuracy"] >= 0.9


def test_quantize_errors_are_one_line(source_run, tmp_path, monkeypatch, capsys):
    path = tmp_path / "cfg.yaml"
    bad = {"out": str(tmp_path / "run"), "compress": {"source": str(source_run), "quantize": {"scheme": "int4"}}}
    path.write_text(json.dumps(bad))
    assert_one_line_error(monkeypatch, capsys, ["compress", str(path)], "compress.quantize.scheme")
    assert_one_line_error(monkeypatch, capsys, ["export", str(tmp_path / "nope")], "is not a finished kdlab run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        ptq_int8(torch.nn.Linear(4, 2), scheme="int4")
