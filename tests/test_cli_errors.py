"""User errors through the real command: one line on stderr, exit code 2, no traceback, no complete run."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.api import cache_logits, train


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdlab.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_one_line_error(done: subprocess.CompletedProcess, fragment: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout[-500:], done.stderr[-1500:])
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert fragment in lines[0], lines[0]


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return path


BASE = {
    "data": {"name": "digits"},
    "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "train": {"epochs": 1, "progress": False},
}


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"train": {"epohcs": 1}}, "unknown key 'train.epohcs'"),
        ({"train": {"epochs": "ten"}}, "train.epochs: Input should be a valid integer"),
        ({"data": {"name": "imagenet"}}, "imagenet"),
        ({"model": {"name": "resnet9000"}}, "resnet9000"),
    ],
)
def test_bad_config_values(tmp_path, patch, fragment):
    out = tmp_path / "run"
    done = run_cli("train", str(write(tmp_path, {**BASE, **patch, "out": str(out)})), cwd=tmp_path)
    assert_one_line_error(done, fragment)
    assert not (out / "summary.json").exists()


def test_missing_config_file_and_bad_override(tmp_path):
    assert_one_line_error(run_cli("train", str(tmp_path / "nope.yaml"), cwd=tmp_path), "config file not found")
    cfg = write(tmp_path, {**BASE, "out": str(tmp_path / "run")})
    assert_one_line_error(run_cli("train", str(cfg), "--set", "train.epochs=-3", cwd=tmp_path), "train.epochs")


def test_missing_and_corrupt_idx_dataset(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = {**BASE, "out": str(tmp_path / "run"), "data": {"name": "fashion_mnist", "path": str(empty)}}
    assert_one_line_error(run_cli("train", str(write(tmp_path, cfg)), cwd=tmp_path), str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, magic, dims in (
        ("train-images-idx3-ubyte", 2051, (5, 28, 28)),
        ("train-labels-idx1-ubyte", 2049, (5,)),
        ("t10k-images-idx3-ubyte", 2051, (5, 28, 28)),
        ("t10k-labels-idx1-ubyte", 2049, (5,)),
    ):
        header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
        (bad / name).write_bytes(header + b"\x00" * 10)  # truncated body
    cfg["data"]["path"] = str(bad)
    done = run_cli("train", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert_one_line_error(done, "idx")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_stale_logit_cache(tmp_path):
    teacher = tmp_path / "teacher"
    train({**BASE, "out": str(teacher)})
    cfg = {
        **BASE,
        "out": str(tmp_path / "student"),
        "teacher": {"run": str(teacher)},
        "method": {"name": "kd"},
        "cache": {"path": str(tmp_path / "logits.safetensors")},
    }
    cache_logits(cfg)
    stale = dict(cfg, seed=5)  # another validation split: the cached logits belong to other data
    done = run_cli("distill", str(write(tmp_path, stale)), cwd=tmp_path)
    assert_one_line_error(done, "stale logit cache")
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "data.split_seed: 0" in warned[0], done.stderr  # seed 5's split overlaps
    assert not (tmp_path / "student").exists()  # refused before the run directory was created
