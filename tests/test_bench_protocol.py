"""benchmarks/protocol.py: every contender in its own process, warm-up then interleaved rounds, pinned threads,
ratios per repetition, and no result file from a loaded machine unless marked as not a result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import protocol
from protocol import LOADED_MARK, Contender, publish, run_protocol

TRIAL = """
import json, os, sys, time
sys.path.insert(0, {bench!r})
from protocol import pin_threads, trial_result
pin_threads()
with open({log!r}, "a") as f:
    f.write(sys.argv[1] + "\\n")
print("noise")
print(trial_result({{"value": float(sys.argv[2])}}))
"""


# a stand-in for torch beside the trial script (its directory comes first on the child's path): the protocol's
# bookkeeping is under test here, not torch, and a real import costs seconds per process
TORCH_STUB = """
import types
__version__ = "0.0.0+stub"
version = types.SimpleNamespace(git_version="0" * 40)
_threads = [0]
def set_num_threads(n):
    _threads[0] = n
def get_num_threads():
    return _threads[0]
"""


def _contenders(tmp_path: Path) -> tuple[list[Contender], Path]:
    log = tmp_path / "order.log"
    script = tmp_path / "trial.py"
    (tmp_path / "torch.py").write_text(TORCH_STUB)
    script.write_text(TRIAL.format(bench=str(Path(protocol.__file__).parent), log=str(log)))
    return [Contender(n, (str(script), n, v)) for n, v in (("A", "100"), ("B", "50"), ("C", "200"))], log


def test_interleaved_rounds_after_a_warm_up_with_ratios_per_repetition(tmp_path, monkeypatch):
    contenders, log = _contenders(tmp_path)
    monkeypatch.setattr(protocol, "load_1min", lambda: 0.0)
    result = run_protocol(contenders, metric="value", baseline="A", repetitions=5, threads=1, settle_s=0)
    assert log.read_text().split() == ["A", "B", "C"] * 6  # one warm-up round + 5 interleaved rounds
    assert set(result.warmup) == {"A", "B", "C"} and all(len(r) == 5 for r in result.trials.values())
    assert all(t["torch_threads"] == 1 for runs in result.trials.values() for t in runs)
    payload = result.as_dict(cores=2)
    assert payload["status"] == "result" and payload["refusals"] == []
    assert payload["summary"]["B"] == {"median": 50.0, "min": 50.0, "max": 50.0, "n": 5}
    assert payload["ratios"]["C / A"]["runs"] == [2.0] * 5 and payload["ratios"]["B / A"]["median"] == 0.5
    out = publish(payload, tmp_path / "results" / "x", lambda p: "table\n", allow_loaded=False, scratch=tmp_path)
    assert json.loads(out.with_suffix(".json").read_text())["status"] == "result"


def test_a_loaded_machine_is_refused_unless_marked(tmp_path, monkeypatch):
    contenders, _ = _contenders(tmp_path)
    monkeypatch.setattr(protocol, "load_1min", lambda: 3.0)
    result = run_protocol(contenders[:2], metric="value", baseline="A", repetitions=5, threads=1, settle_s=0)
    payload = result.as_dict(cores=2)
    assert payload["status"] == LOADED_MARK and "before the start" in payload["refusals"][0]
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        publish(payload, results / "x", lambda p: "table\n", allow_loaded=False, scratch=tmp_path / "scratch")
    assert exit_info.value.code == 2 and not results.exists()
    assert (tmp_path / "scratch" / "x-refused.json").is_file()  # the raw trials are kept outside results/
    out = publish(payload, results / "x", lambda p: "table\n", allow_loaded=True, scratch=tmp_path / "scratch")
    assert out.name == "x-LOADED" and out.with_suffix(".md").read_text().startswith(f"# {LOADED_MARK}")
    assert not (results / "x.json").exists()


def test_too_few_repetitions_or_mixed_torch_builds_are_not_a_result(tmp_path, monkeypatch):
    contenders, _ = _contenders(tmp_path)
    monkeypatch.setattr(protocol, "load_1min", lambda: 0.0)
    result = run_protocol(contenders[:2], metric="value", baseline="A", repetitions=1, threads=1, settle_s=0)
    result.torch_builds["B"] = "2.0.0 (other)"
    refusals = result.refusals(cores=2)
    assert any("repetitions" in r for r in refusals) and any("torch builds" in r for r in refusals)
