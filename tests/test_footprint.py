"""kdlab.eval.footprint: hand-counted parameters / non-zeros / bytes, file sizes, and a latency we know in advance."""

from __future__ import annotations

import time

import torch
from torch import nn

from kdlab import models
from kdlab.compress.quantize import ptq_int8
from kdlab.eval.footprint import counts, footprint, median_latency_ms


def _mlp_with_known_zeros() -> nn.Module:
    model = models.create("mlp", 3, (5,), hidden=[4])  # 5*4 + 4 + 4*3 + 3 = 39 parameters
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
        model.body[0][0].weight[:2] = 0  # 2 rows of 5 inputs: 10 zeros
        model.fc.bias[1] = 0  # 1 zero
    return model


def test_counts_by_hand_for_float_and_int8():
    model = _mlp_with_known_zeros()
    assert counts(model) == {
        "parameters": 39,
        "nonzero_parameters": 39 - 10 - 1,
        "parameter_bytes": 39 * 4,
        "buffer_bytes": 0,
    }
    bn = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))  # running mean/var (float32) + num_batches (int64)
    assert counts(bn)["buffer_bytes"] == 4 * 4 * 2 + 8 and counts(bn)["parameters"] == 24 + 8
    quantized = ptq_int8(model)
    c = counts(quantized)
    assert c["parameters"] == 39  # logical elements, as before quantization
    assert c["nonzero_parameters"] == 28  # the zero weights stay exactly zero in int8 (symmetric: zero point 0)
    # int8 weights 20 + 12 B, per-channel float32 scale + int8 zero point (4 + 3 channels) * 5 B, float biases 7 * 4 B
    assert c["parameter_bytes"] == 20 + 12 + 7 * 5 + 7 * 4 == 95


def test_footprint_sizes_files_and_latency_shapes(tmp_path):
    seen: list[tuple[int, ...]] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(5, 2)

        def forward(self, x):
            seen.append(tuple(x.shape))
            return self.linear(x)

    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "b.bin").write_bytes(b"x" * 234)
    model = Recorder().train()
    fp = footprint(model, torch.randn(3, 5), files=[tmp_path / "a.bin", tmp_path / "b.bin"], repeats=4)
    assert fp["file_bytes"] == 1234 and fp["files"][str(tmp_path / "a.bin")] == 1000
    assert fp["parameters"] == 12 and fp["threads"] == torch.get_num_threads()
    assert set(fp["latency_ms"]) == {"batch_1", "batch_256"} and fp["latency_runs"] == {"batch_1": 4, "batch_256": 4}
    assert seen.count((1, 5)) == 3 + 4 and seen.count((256, 5)) == 3 + 4  # warm-up 3, then the timed runs
    assert model.training  # restored
    assert "latency_ms" not in footprint(model, torch.randn(1, 5), latency=False)


class _Sleeper(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_median_latency_measures_a_known_delay_and_respects_the_budget():
    ms, runs = median_latency_ms(_Sleeper(0.004), torch.zeros(1), repeats=5, warmup=1)
    assert runs == 5 and 4.0 <= ms < 40.0  # sleep never returns early; a busy host may add, not remove
    ms, runs = median_latency_ms(_Sleeper(0.004), torch.zeros(1), repeats=1000, warmup=0, budget_s=0.001)
    assert runs == 3 and ms >= 4.0  # at least three timed runs, then the budget stops it
