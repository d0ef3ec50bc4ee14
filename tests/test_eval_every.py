"""``train.eval_every``: validation and train_eval measured every N-th epoch and always after the last one."""

from __future__ import annotations

import json

import pytest

from kdlab.api import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_every_measures_every_nth_epoch_and_the_last(tmp_path):
    summary = train(
        {
            "out": str(tmp_path / "run"),
            "data": {"name": "digits"},
            "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
            "train": {"epochs": 5, "eval_every": 2, "batch_size": 64, "progress": False, "train_eval_size": 100},
        }
    )
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch_seconds" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5]  # every epoch still logs its training loss
    assert all("train/ce" in r for r in epochs)
    assert [r["epoch"] for r in epochs if "val/accuracy" in r] == [2, 4, 5]
    assert [r["epoch"] for r in epochs if "train_eval/accuracy" in r] == [2, 4, 5]
    assert summary["val"]["accuracy"] == epochs[-1]["val/accuracy"]  # the final weights, measured
