"""TensorBoard and MLflow (local sqlite store) receive the run's metrics through Accelerate's trackers."""

from __future__ import annotations

import pytest

from kdlab.api import train


def test_tensorboard_and_mlflow_get_the_epoch_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    train(
        {
            "name": "tracked",
            "out": str(out),
            "data": {"name": "digits"},
            "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
            "train": {"epochs": 2, "progress": False},
            "tracking": {"tensorboard": True, "mlflow": True},
        }
    )
    events = list(out.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("val/accuracy")] == [11, 22]  # 1,293 rows / 128: 10 + 1 partial
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "val/accuracy")
    assert [m.step for m in history] == [11, 22] and 0 < history[-1].value <= 1
