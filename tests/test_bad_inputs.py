"""Bad inputs through the real entry point (``kdlab.cli.main``, in this process): the exit code, exactly one line
on stderr naming the problem, no traceback, and the run directory unchanged (bytes and mtimes) or absent.

One finished 1-epoch run is trained once per module and copied per test (``copy2`` keeps mtimes).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdlab.api import train
from kdlab.cli import main

BASE = {
    "data": {"name": "digits"},
    "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "train": {"epochs": 1, "progress": False, "train_eval_size": 50, "batch_size": 64, "optimizer": {"lr": 0.05}},
}


def write_config(path: Path, out: Path, **sections) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**BASE, **sections, "out": str(out)}))
    return path


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: (sha256, mtime in ns)."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


WARNINGS: list[str] = []  # the warning lines of the last cli() call


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, list[str]]:
    """Run ``kdlab ARGS`` in this process: (exit code, stdout, the non-empty stderr lines that are not warnings)."""
    monkeypatch.setattr(sys, "argv", ["kdlab", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("warning:")]
    WARNINGS[:] = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    code = done.value.code if isinstance(done.value.code, int) else (0 if done.value.code is None else 1)
    return code, captured.out, lines


def one_error(monkeypatch, capsys, fragment: str, *args: str) -> str:
    code, out, lines = cli(monkeypatch, capsys, *args)
    assert code == 2, (code, out[-500:], lines)
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    train(write_config(root / "cfg.yaml", root / "run"))
    return root / "run"


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run (mtimes kept) and a config naming it."""
    out = tmp_path / "run"
    shutil.copytree(finished, out, copy_function=shutil.copy2)
    return out, write_config(tmp_path / "cfg.yaml", out)


def unfinished(out: Path) -> Path:
    """The run as if killed after its last checkpoint; returns that checkpoint."""
    (out / "summary.json").unlink()
    return out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()


# ---- resume ----


def test_resume_on_a_finished_run_does_nothing(run, monkeypatch, capsys):
    out, cfg = run
    before = snapshot(out)
    code, stdout, lines = cli(monkeypatch, capsys, "train", str(cfg), "--resume")
    assert code == 0 and lines == [], lines
    assert "already finished" in stdout
    assert snapshot(out) == before  # model.safetensors byte-identical, same mtime; nothing else written


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.optimizer.lr=0.5", "train.optimizer.lr: 0.05 -> 0.5"),
        ("seed=3", "seed: 0 -> 3"),
        ("train.epochs=3", "pass --extend to train on"),
    ],
)
@pytest.mark.parametrize("finished_run", [True, False])
def test_resume_with_a_changed_config_is_refused(run, monkeypatch, capsys, override, fragment, finished_run):
    out, cfg = run
    if not finished_run:
        unfinished(out)
        fragment = "train.epochs: 1 -> 3" if override.startswith("train.epochs") else fragment
    before = snapshot(out)
    one_error(monkeypatch, capsys, fragment, "train", str(cfg), "--resume", "--set", override)
    assert snapshot(out) == before


def test_resume_ignores_harmless_keys(run, monkeypatch, capsys):
    out, cfg = run
    before = snapshot(out)
    args = ("--set", "train.progress=true", "--set", "name=renamed", "--set", "train.eval_batch_size=7")
    code, stdout, lines = cli(monkeypatch, capsys, "train", str(cfg), "--resume", *args)
    assert code == 0 and "already finished" in stdout and lines == []
    assert snapshot(out) == before


def test_extend_keeps_the_finished_model(run, monkeypatch, capsys):
    out, cfg = run
    model = (out / "model.safetensors").read_bytes()
    code, _, lines = cli(monkeypatch, capsys, "train", str(cfg), "--extend", "--set", "train.epochs=2")
    assert code == 0 and lines == [], lines
    assert (out / "finished-epoch-1" / "model.safetensors").read_bytes() == model
    assert json.loads((out / "finished-epoch-1" / "summary.json").read_text())["epochs"] == 1
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    assert (out / "model.safetensors").read_bytes() != model
    assert not (out / ".lock").exists()


# ---- corrupt files ----


def test_truncated_model_on_evaluate(run, monkeypatch, capsys):
    out, _ = run
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(out)
    one_error(monkeypatch, capsys, "not a readable safetensors file", "evaluate", str(out), "--no-latency")
    assert snapshot(out) == before


class Smuggled:
    """Pickled by reference to this module: torch.load(weights_only=True) must refuse to build it."""


def _truncate(state: Path) -> None:
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])


def _smuggle(state: Path) -> None:
    torch.save({"position": [0, 0, 0, 0], "payload": Smuggled()}, state)


@pytest.mark.parametrize(
    ("spoil", "fragment"), [(_truncate, "is unreadable (truncated or corrupt"), (_smuggle, "never unpickles")]
)
def test_bad_checkpoint_on_resume(run, monkeypatch, capsys, spoil, fragment):
    out, cfg = run
    spoil(unfinished(out) / "state.pt")
    before = snapshot(out)
    one_error(monkeypatch, capsys, fragment, "train", str(cfg), "--resume")
    assert snapshot(out) == before


# ---- the directory itself ----


def test_out_names_a_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    cfg = write_config(tmp_path / "c.yaml", target)
    before = snapshot(tmp_path)
    one_error(monkeypatch, capsys, "is a file, not a directory", "train", str(cfg))
    assert snapshot(tmp_path) == before


def test_unwritable_directory(tmp_path, monkeypatch, capsys):
    """A read-only directory (simulated: the tests may run as root, for whom chmod does not bite)."""
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", read_only)
    one_error(
        monkeypatch, capsys, "Permission denied", "train", str(write_config(tmp_path / "c.yaml", tmp_path / "ro"))
    )
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.parametrize("where", ["kdlab.engine.checkpoint.save_file", "os.fsync"])
def test_full_disk(tmp_path, monkeypatch, capsys, where):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(where, full)
    out = tmp_path / "run"
    one_error(monkeypatch, capsys, "No space left on device", "train", str(write_config(tmp_path / "c.yaml", out)))
    assert not (out / "summary.json").exists() and not (out / ".lock").exists()
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []  # no half-written file


def test_a_locked_directory_is_refused(finished, tmp_path, monkeypatch, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    lock = out / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # a live process
    before = snapshot(out)
    cfg = write_config(tmp_path / "c.yaml", out, teacher={"run": str(finished)}, method={"name": "kd"})
    one_error(monkeypatch, capsys, f"in use by kdlab process {os.getpid()}", "distill", str(cfg))
    assert snapshot(out) == before


def test_a_stale_lock_is_taken_over_and_stale_temp_files_removed(run, monkeypatch, capsys):
    out, cfg = run
    unfinished(out)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / "checkpoints" / ".tmp-x.tmp").mkdir()
    (out / ".model.safetensors.123.tmp").write_text("half")
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    code, _, lines = cli(monkeypatch, capsys, "train", str(cfg), "--resume")
    assert code == 0 and lines == [], lines
    assert any(f"left by process {dead.pid}, which has ended" in w for w in WARNINGS), WARNINGS
    left = [p.name for p in out.rglob("*")]
    assert ".lock" not in left and not [n for n in left if n.endswith(".tmp")], left


def test_one_file_mode_for_everything_a_run_writes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        code, _, lines = cli(monkeypatch, capsys, "train", str(write_config(tmp_path / "c.yaml", out)))
    finally:
        os.umask(old)
    assert code == 0 and lines == [], lines
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert any(name.endswith(".safetensors") for name in modes) and "summary.json" in modes
    expected = {name: 0o750 if (out / name).is_dir() else 0o640 for name in modes}
    assert modes == expected  # weights, checkpoints and results alike: the mode a normal file gets


# ---- trust: package.module:callable models ----

OWN_MODULE = """
from torch import nn

def build(num_classes, in_shape):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
"""


@pytest.mark.parametrize("spec", ["torch.hub:load", "builtins:eval", "os:system", "subprocess:run"])
def test_code_from_outside_the_project_is_refused(tmp_path, monkeypatch, capsys, spec):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KDLAB_TRUST_REMOTE_CODE", raising=False)
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", out, model={"name": spec})
    one_error(monkeypatch, capsys, "--trust-remote-code", "train", str(cfg))
    assert not out.exists()


def test_a_failed_import_names_the_paths_and_leaves_no_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "configs" / "c.yaml", out, model={"name": "my_nets.zoo:build"})
    line = one_error(monkeypatch, capsys, "cannot import module 'my_nets.zoo'", "train", str(cfg))
    assert str(tmp_path / "configs") in line and str(tmp_path) in line
    assert not out.exists()


def test_own_module_beside_the_config_needs_no_pythonpath(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "my_nets").mkdir(parents=True)
    (project / "my_nets" / "__init__.py").write_text("")
    (project / "my_nets" / "zoo.py").write_text(OWN_MODULE)
    monkeypatch.chdir(tmp_path)  # elsewhere: only the config's directory can find it
    out = tmp_path / "run"
    cfg = write_config(project / "c.yaml", out, model={"name": "my_nets.zoo:build"})
    code, _, lines = cli(monkeypatch, capsys, "train", str(cfg))
    sys.modules.pop("my_nets.zoo", None), sys.modules.pop("my_nets", None)
    assert code == 0 and lines == [] and (out / "summary.json").is_file(), lines


def test_installed_code_runs_only_when_trusted(tmp_path, monkeypatch, capsys):
    """A module on sys.path outside the config's directory and the cwd (like an installed package)."""
    elsewhere = tmp_path / "site"
    elsewhere.mkdir()
    (elsewhere / "far_nets.py").write_text(OWN_MODULE)
    monkeypatch.syspath_prepend(str(elsewhere))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("KDLAB_TRUST_REMOTE_CODE", raising=False)
    out = tmp_path / "work" / "run"
    cfg = write_config(tmp_path / "work" / "c.yaml", out, model={"name": "far_nets:build"})
    one_error(monkeypatch, capsys, "runs code from outside your project (far_nets at", "train", str(cfg))
    assert not out.exists()
    code, _, lines = cli(monkeypatch, capsys, "train", str(cfg), "--trust-remote-code")
    assert code == 0 and lines == [], lines
    # the saved config re-imports it on evaluate: the same check
    one_error(monkeypatch, capsys, "--trust-remote-code", "evaluate", str(out), "--no-latency")
    monkeypatch.setenv("KDLAB_TRUST_REMOTE_CODE", "1")
    code, _, lines = cli(monkeypatch, capsys, "evaluate", str(out), "--no-latency")
    sys.modules.pop("far_nets", None)
    assert code == 0 and lines == [], lines


# ---- Ctrl-C (a real signal: a subprocess) ----


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", out)
    args = [sys.executable, "-m", "kdlab.cli", "train", str(cfg), "--set", "train.epochs=200"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, (process.returncode, stderr[-2000:])
    assert "Traceback" not in stdout + stderr
    assert [line for line in stderr.splitlines() if line.strip()] == ["error: interrupted"]
    left = [p.name for p in out.rglob("*")]
    assert ".lock" not in left and "summary.json" not in left and not [n for n in left if n.endswith(".tmp")]


# ---- own data, own teacher ----


def _npz(path: Path, y_train: list[int]) -> Path:
    import numpy as np

    x = np.random.default_rng(0).normal(size=(len(y_train), 4)).astype(np.float32)
    np.savez(path, x_train=x, y_train=np.array(y_train), x_test=x[:12], y_test=np.array(y_train[:12]))
    return path


def _csv(path: Path, labels: list[str]) -> Path:
    path.write_text("a,b,label\n" + "".join(f"{i % 7},{i % 3},{label}\n" for i, label in enumerate(labels)))
    return path


@pytest.mark.parametrize(
    ("data", "overrides", "fragment"),
    [
        ({"name": "digits"}, ["--set", "method.alpha=.nan"], "method.alpha: must be a finite number"),
        ({"name": "digits"}, ["--set", "train.optimizer.lr=.inf"], "train.optimizer.lr: must be a finite number"),
        ("npz-1..K", [], "are they 1..K?"),
        ("csv-one-class", [], "single class"),
        ("csv-missing-class", [], "has no training rows"),
        ({"name": "digits", "val_fraction": 1.5}, [], "data.val_fraction"),
    ],
)
def test_bad_data_and_values_leave_no_directory(tmp_path, monkeypatch, capsys, data, overrides, fragment):
    if data == "npz-1..K":
        data = {"name": "npz", "path": str(_npz(tmp_path / "d.npz", [1, 2, 3] * 20))}
    elif data == "csv-one-class":
        data = {"name": "csv", "path": str(_csv(tmp_path / "d.csv", ["a"] * 40))}
    elif data == "csv-missing-class":  # "c" only in the validation file: no training row
        val = _csv(tmp_path / "v.csv", ["a", "b", "c"] * 4)
        data = {"name": "csv", "path": str(_csv(tmp_path / "d.csv", ["a", "b"] * 20)), "val_path": str(val)}
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", out, data=data)
    one_error(monkeypatch, capsys, fragment, "train", str(cfg), *overrides)
    assert not out.exists()


def test_a_teacher_with_another_label_count_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "seven.py").write_text(
        "from torch import nn\n\n\ndef build(num_classes, in_shape):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))  # 7 outputs, whatever num_classes\n"
    )
    from safetensors.torch import save_file

    save_file({"1.weight": torch.zeros(7, 64), "1.bias": torch.zeros(7)}, str(tmp_path / "seven.safetensors"))
    monkeypatch.chdir(tmp_path)
    teacher = {"model": {"name": "seven:build"}, "weights": "seven.safetensors"}
    cfg = write_config(
        tmp_path / "cfg.yaml", tmp_path / "run", data={"name": "digits"}, teacher=teacher, method={"name": "kd"}
    )
    one_error(monkeypatch, capsys, "outputs (2, 7) for 2 inputs, the data has 10 classes", "distill", str(cfg))
    assert not (tmp_path / "run").exists()


def test_a_teacher_at_chance_stops_the_run_when_asked(finished, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file, save_file

    spoiled = {k: torch.zeros_like(v) for k, v in load_file(str(finished / "model.safetensors")).items()}
    save_file(spoiled, str(tmp_path / "zero.safetensors"))  # every logit 0: argmax is class 0, chance level
    teacher = {"model": BASE["model"], "weights": str(tmp_path / "zero.safetensors"), "check": "error"}
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "run", teacher=teacher, method={"name": "kd"})
    one_error(monkeypatch, capsys, "is its input preprocessed as it was trained?", "distill", str(cfg))
    assert not (tmp_path / "run").exists()
