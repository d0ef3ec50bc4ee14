"""Run ``kdlab distill`` as 2 processes with torchrun (gloo on CPU) for the tests that compare it with 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distill_with_two_processes(cfg: dict, out: Path) -> dict:
    """``cfg`` with ``out`` distilled by ``torchrun --nproc_per_node 2``; its summary (the run must succeed)."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text(json.dumps(dict(cfg, out=str(out))))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    done = subprocess.run(
        [*command, str(free_port()), "-m", "kdlab.cli", "distill", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())
