"""Machine and version facts recorded next to every benchmark result."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys

import torch

import kdlab


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, object]:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "command": " ".join(["python", *sys.argv]),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "kdlab": kdlab.__version__,
    }
