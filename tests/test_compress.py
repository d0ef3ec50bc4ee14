"""Pruning (kdlab.compress) and ``kdlab compress``: exact sparsity, shrunk MLPs, fewer MACs, faster, recoverable."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kdlab import models
from kdlab.api import evaluate, fit_model, train
from kdlab.cli import main
from kdlab.compress import (
    ReapplyMasks,
    cnn_channels,
    forward_macs,
    global_magnitude_prune,
    linear_macs,
    sparsity_report,
    step_targets,
    structured_prune,
    structured_prune_cnn,
    structured_prune_mlp,
)
from kdlab.compress.recover import compress
from kdlab.config import ConfigError


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])


@pytest.mark.parametrize("sparsity", [0.37, 0.9])
def test_global_magnitude_pruning_is_exact_and_keeps_the_largest(sparsity):
    model = models.create("mlp", 5, (12,), hidden=[20, 7])
    before = _weights(model).clone()
    n = before.numel()  # 12*20 + 20*7 + 7*5 = 415
    assert n == 415
    global_magnitude_prune(model, sparsity)
    after = _weights(model)
    zeros = after == 0
    assert int(zeros.sum()) == round(sparsity * 415)
    assert before[~zeros].abs().min() >= before[zeros].abs().max()  # global: smallest magnitudes went, any layer
    assert torch.equal(after[~zeros], before[~zeros])  # survivors untouched
    assert all(not k.endswith(("_orig", "_mask")) for k in model.state_dict())  # permanent: plain tensors
    report = sparsity_report(model)
    assert report["sparsity"] == round(sparsity * 415) / 415
    assert report["nonzero_parameters"] == 415 - round(sparsity * 415) + 20 + 7 + 5  # biases untouched


def test_iterative_pruning_schedules_and_nesting():
    assert step_targets(0.75, 2) == pytest.approx([0.5, 0.75])  # geometric: keep 1/2, then 1/2 of that
    assert step_targets(0.75, 3, "linear") == pytest.approx([0.25, 0.5, 0.75])
    assert step_targets(0.5, 1) == [0.5]
    model = models.create("mlp", 3, (10,), hidden=[10])  # 130 weights
    global_magnitude_prune(model, 0.5)
    first = _weights(model) == 0
    global_magnitude_prune(model, 0.8)
    second = _weights(model) == 0
    assert int(first.sum()) == 65 and int(second.sum()) == 104
    assert bool((second | ~first).all())  # what was pruned stays pruned


def test_reapply_masks_keeps_sparsity_through_training():
    model = models.create("mlp", 3, (10,), hidden=[10])
    global_magnitude_prune(model, 0.6)
    keep = ReapplyMasks(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(8, 10)), torch.randint(0, 3, (8,))).backward()
        opt.step()
        keep()
    assert int((_weights(model) == 0).sum()) == 78  # 0.6 * 130


def test_structured_mlp_pruning_removes_dead_units_exactly():
    model = models.create("mlp", 3, (6,), hidden=[8, 6])
    with torch.no_grad():
        first, second = model.body[0][0], model.body[1][0]
        for unit in (1, 4, 6, 7):  # dead: zero incoming weights and bias -> ReLU output 0
            first.weight[unit] = 0
            first.bias[unit] = 0
        for unit in (0, 2, 5):
            second.weight[unit] = 0
            second.bias[unit] = 0
    small, widths = structured_prune_mlp(model, 0.5)
    assert widths == [4, 3]
    x = torch.randn(32, 6)
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)
    # parameters by hand: 6*8+8 + 8*6+6 + 6*3+3 = 131  ->  6*4+4 + 4*3+3 + 3*3+3 = 55
    assert models.count_parameters(model) == 131 and models.count_parameters(small) == 55
    assert linear_macs(model) == 6 * 8 + 8 * 6 + 6 * 3 == 114
    assert linear_macs(small) == 6 * 4 + 4 * 3 + 3 * 3 == 45
    rebuilt = models.create("mlp", 3, (6,), hidden=widths)  # what config.yaml describes loads the weights
    rebuilt.load_state_dict(small.state_dict())
    # iterative: widths are fractions of the original (base) widths
    _, widths = structured_prune_mlp(small, 0.75, base_widths=[8, 6])
    assert widths == [2, 2]


def _time_ratio(small: torch.nn.Module, big: torch.nn.Module, x: torch.Tensor, repeats: int = 9) -> float:
    """Wall time of ``small`` relative to ``big`` on ``x``: the two are timed alternately (a busy spell on a shared
    host hits both) and each keeps its fastest run (the least disturbed one), so the ratio does not depend on the
    machine's speed or load, only on the work each model does."""
    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.inference_mode():
        for model in (small, big, small, big):
            model(x)  # warm-up
        for _ in range(repeats):
            for which, model in enumerate((small, big)):
                start = time.perf_counter()
                model(x)
                times[which].append(time.perf_counter() - start)
    return min(times[0]) / min(times[1])


def test_structured_pruning_makes_a_wide_mlp_faster():
    torch.manual_seed(0)
    model = models.create("mlp", 10, (2048,), hidden=[2048, 2048]).eval()
    small, widths = structured_prune_mlp(model, 0.75)
    assert widths == [512, 512]
    assert linear_macs(small) == 2048 * 512 + 512 * 512 + 512 * 10  # vs 2048*2048*2 + 20480: 6.4x fewer
    x = torch.randn(64, 2048)
    ratio = _time_ratio(small, model, x)  # 6.4x fewer MACs; measured 0.28-0.31 on a busy 2-core host
    assert ratio <= 0.8, ratio


def _dead_channel_cnn() -> torch.nn.Module:
    """cnn 4-4-8-8 on 12x12 whose filters 1, 2 (first block) and 0, 3, 5, 6 (second) are dead: zero weights and a
    zero BatchNorm shift and mean, so (in eval mode) they output exactly 0 after the ReLU."""
    model = models.create("cnn", 10, (1, 12, 12), width=4, blocks=2)
    with torch.no_grad():
        for p in model.parameters():  # nonzero BN shifts/means everywhere, so live channels are not trivial
            p.add_(0.1 * torch.randn_like(p))
        for conv, bn, dead in (
            (model.layer1[0], model.layer1[1], [1, 2]),
            (model.layer1[3], model.layer1[4], [1, 2]),
            (model.layer2[0], model.layer2[1], [0, 3, 5, 6]),
            (model.layer2[3], model.layer2[4], [0, 3, 5, 6]),
        ):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            conv.weight[dead] = 0
            bn.bias[dead] = 0
            bn.running_mean[dead] = 0
    return model.eval()


def test_structured_cnn_pruning_removes_dead_channels_exactly():
    model = _dead_channel_cnn()
    small, channels = structured_prune_cnn(model, 0.5)
    assert channels == [2, 2, 4, 4] == cnn_channels(small)
    x = torch.randn(16, 1, 12, 12)
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)
    # MACs by hand (one 12x12 image; max pool halves to 6x6): conv = out * in * 9 * pixels, fc = in * 10
    full = 4 * 1 * 9 * 144 + 4 * 4 * 9 * 144 + 8 * 4 * 9 * 36 + 8 * 8 * 9 * 36 + 8 * 10
    pruned = 2 * 1 * 9 * 144 + 2 * 2 * 9 * 144 + 4 * 2 * 9 * 36 + 4 * 4 * 9 * 36 + 4 * 10
    assert (full, pruned) == (57_104, 15_592)
    assert forward_macs(model, (1, 12, 12)) == full and forward_macs(small, (1, 12, 12)) == pruned
    # parameters: conv weights + BN (scale, shift) per channel + fc
    conv_weights = 2 * 9 + 2 * 2 * 9 + 4 * 2 * 9 + 4 * 4 * 9
    assert models.count_parameters(small) == conv_weights + 2 * (2 + 2 + 4 + 4) + 4 * 10 + 10
    rebuilt = models.create("cnn", 10, (1, 12, 12), blocks=2, channels=channels)  # what config.yaml describes
    rebuilt.load_state_dict(small.state_dict())
    assert torch.equal(rebuilt.layer2[4].running_var, model.layer2[4].running_var[[1, 2, 4, 7]])
    # iterative: channel counts are fractions of the original (base) ones; the dispatcher names the keyword
    smaller, shape = structured_prune(small, 0.75, base=[4, 4, 8, 8])
    assert shape == {"channels": [1, 1, 2, 2]} and cnn_channels(smaller) == [1, 1, 2, 2]


def test_structured_pruning_makes_a_cnn_faster(one_thread):
    torch.manual_seed(0)
    model = models.create("cnn", 10, (1, 28, 28), width=32, blocks=2).eval()
    small, channels = structured_prune_cnn(model, 0.75)
    assert channels == [8, 8, 16, 16]
    macs, small_macs = forward_macs(model, (1, 28, 28)), forward_macs(small, (1, 28, 28))
    assert macs == 32 * 9 * 784 + 32 * 32 * 9 * 784 + 64 * 32 * 9 * 196 + 64 * 64 * 9 * 196 + 640 == 18_289_792
    assert small_macs == 8 * 9 * 784 + 8 * 8 * 9 * 784 + 16 * 8 * 9 * 196 + 16 * 16 * 9 * 196 + 160 == 1_185_568
    x = torch.randn(32, 1, 28, 28)
    ratio = _time_ratio(small, model, x)  # 15x fewer MACs; measured 0.20
    assert ratio <= 0.8, ratio


def test_fit_model_rejects_a_model_its_config_does_not_describe(tmp_path):
    model = {"name": "mlp", "kwargs": {"hidden": [8]}}
    cfg = {"out": str(tmp_path / "run"), "data": {"name": "digits"}, "model": model}
    with pytest.raises(ConfigError, match=r"body\.0\.0\.bias is \(4,\) in the model, \(8,\) in the config"):
        fit_model(cfg, models.create("mlp", 10, (64,), hidden=[4]))
    assert not (tmp_path / "run").exists()


def assert_one_line_error(monkeypatch, capsys, args: list[str], fragment: str) -> None:
    """Through the real entry point (in process: a subprocess costs ~10 s of imports on a busy host)."""
    monkeypatch.setattr(sys, "argv", ["kdlab", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], err


TRAIN = {"batch_size": 64, "progress": False, "train_eval_size": 0, "optimizer": {"lr": 0.05}}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compress") / "source"
    cfg = {
        "name": "src",
        "out": str(out),
        "data": {"name": "digits"},
        "model": {"name": "mlp", "kwargs": {"hidden": [64]}},
    }
    train({**cfg, "train": {**TRAIN, "epochs": 4}})
    return out


def test_compress_structured_with_kd_from_the_unpruned_model(source_run, tmp_path):
    out = tmp_path / "pruned"
    cfg = {
        "name": "pruned",
        "out": str(out),
        "data": {"name": "digits"},
        "compress": {"source": str(source_run), "prune": {"kind": "structured", "sparsity": 0.5, "steps": 2}},
        "method": {"name": "kd", "temperature": 4.0, "alpha": 0.1, "beta": 0.9},
        "train": {**TRAIN, "epochs": 1},
    }
    summary = compress(cfg)
    info = summary["compress"]
    assert [s["hidden"] for s in info["steps"]] == [[45], [32]]  # 64 * (1 - (1 - sqrt(0.5))) = 45.25 -> 45
    assert info["before"]["parameters"] == 64 * 64 + 64 + 64 * 10 + 10 == 4810
    assert summary["parameters"] == 64 * 32 + 32 + 32 * 10 + 10 == 2410
    assert summary["teacher"].startswith("mlp from")  # the unpruned source by default
    assert summary["test_accuracy"] >= 0.9, summary["test_accuracy"]
    evaluated = evaluate(out, splits=("test",))  # config.yaml describes the smaller model
    assert evaluated["parameters"] == 2410
    assert evaluated["test"]["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert json.loads((out / "summary.json").read_text())["compress"]["after"]["linear_macs"] == 64 * 32 + 32 * 10


def test_compress_structured_cnn_channels(tmp_path):
    source = tmp_path / "cnn"
    base = {"data": {"name": "digits"}, "train": {**TRAIN, "epochs": 3}}
    train({**base, "out": str(source), "model": {"name": "cnn", "kwargs": {"width": 8}}})
    out = tmp_path / "pruned"
    prune = {"kind": "structured", "sparsity": 0.5}
    summary = compress({**base, "out": str(out), "compress": {"source": str(source), "prune": prune}})
    info = summary["compress"]
    assert info["steps"][-1]["channels"] == [4, 4, 8, 8]
    # digits are 8x8 (4x4 after the first pool): MACs by hand (each conv has half its inputs and outputs)
    assert info["before"]["macs"] == 8 * 9 * 64 + 8 * 8 * 9 * 64 + 16 * 8 * 9 * 16 + 16 * 16 * 9 * 16 + 160 == 96_928
    assert info["after"]["macs"] == 4 * 9 * 64 + 4 * 4 * 9 * 64 + 8 * 4 * 9 * 16 + 8 * 8 * 9 * 16 + 80 == 25_424
    assert "channels:\n    - 4\n    - 4\n    - 8\n    - 8" in (out / "config.yaml").read_text()
    assert summary["test_accuracy"] >= 0.85, summary["test_accuracy"]
    evaluated = evaluate(out, splits=("test",))  # config.yaml describes the smaller cnn
    assert evaluated["parameters"] == info["after"]["parameters"] == summary["parameters"]
    assert evaluated["test"]["accuracy"] == pytest.approx(summary["test_accuracy"])


def test_compress_unstructured_fine_tune_keeps_exact_sparsity(source_run, tmp_path):
    cfg = {
        "name": "sparse",
        "out": str(tmp_path / "sparse"),
        "data": {"name": "digits"},
        "compress": {"source": str(source_run), "prune": {"kind": "unstructured", "sparsity": 0.8}},
        "train": {**TRAIN, "epochs": 2},
    }
    summary = compress(cfg)
    assert "method:\n  name: ce" in (tmp_path / "sparse" / "config.yaml").read_text()  # plain fine-tune
    assert summary["sparsity"] == round(0.8 * 4736) / 4736  # 64*64 + 64*10 prunable weights, masks kept in training
    assert summary["parameters"] == 4810
    assert summary["nonzero_parameters"] == 4810 - round(0.8 * 4736)
    assert summary["test_accuracy"] >= 0.9, summary["test_accuracy"]


def test_compress_errors_are_one_line(source_run, tmp_path, monkeypatch, capsys):
    base = {"data": {"name": "digits"}, "train": {**TRAIN, "epochs": 1}, "out": str(tmp_path / "run")}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({**base, "compress": {"source": str(tmp_path / "nope")}}))
    assert_one_line_error(monkeypatch, capsys, ["compress", str(path)], "is not a finished kdlab run directory")
    resnet = tmp_path / "resnet"
    resnet.mkdir()
    (resnet / "config.yaml").write_text(json.dumps({"data": {"name": "digits"}, "model": {"name": "resnet8"}}))
    save_file(models.create("resnet8", 10, (1, 8, 8)).state_dict(), str(resnet / "model.safetensors"))
    with pytest.raises(ConfigError, match="supports kdlab's mlp and cnn only"):  # ConfigError -> one line via the CLI
        compress({**base, "compress": {"source": str(resnet), "prune": {"kind": "structured"}}})
    with pytest.raises(ConfigError, match="needs a 'compress' section"):
        compress(base)
    with pytest.raises(ConfigError, match=r"compress\.prune\.sparsity"):
        compress({**base, "compress": {"source": str(source_run), "prune": {"sparsity": 1.0}}})
    assert not (tmp_path / "run").exists()
