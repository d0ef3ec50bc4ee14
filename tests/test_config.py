"""Run configuration: strict keys, overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlab.config import ConfigError, load_config
from kdlab.methods import build

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides_are_typed():
    cfg = load_config({}, ["train.epochs=3", "method.name=ptloss", "method.epsilon=[0.1, -0.2]", "data.name=mnist"])
    assert cfg.train.epochs == 3 and cfg.data.name == "mnist"
    assert cfg.method.name == "ptloss" and cfg.method.params() == {"epsilon": [0.1, -0.2]}
    assert cfg.train.optimizer.name == "sgd"


@pytest.mark.parametrize(
    ("raw", "overrides", "message"),
    [
        ({"train": {"epohcs": 3}}, [], "unknown key 'train.epohcs'"),
        ({"train": {"epochs": "ten"}}, [], "train.epochs: Input should be a valid integer"),
        ({"train": {"epochs": 0}}, [], "train.epochs"),
        ({}, ["train.optimizer.name=adam"], "train.optimizer.name"),
        ({}, ["nonsense"], "--set expects key.sub=value"),
        ({"teacher": {"run": "x", "weights": "y"}}, [], "either teacher.run"),
        ({"data": {"augment": {"crop_padding": -1}}}, [], "data.augment.crop_padding"),
    ],
)
def test_bad_configs_are_one_clear_line(raw, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
        load_config(raw, overrides)
    assert "\n" not in str(info.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_method_parameters_are_validated_by_the_method():
    with pytest.raises(ConfigError, match=r"unknown key 'method\.temprature'"):
        build("kd", {"temprature": 2.0}, 10)
    with pytest.raises(ConfigError, match="unknown method 'kdd'"):
        build("kdd", {}, 10)
    with pytest.raises(ConfigError, match=r"method\.gamma"):
        build("focal", {"gamma": -1}, 10)
    assert build("dkd", {"beta": 2.0}, 10).params.beta == 2.0


def test_shipped_configs_validate():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        if path.name.endswith("-chain.yaml"):  # a `kdlab chain` file: every stage must validate
            from kdlab.workflow.chain import stage_configs

            assert len(stage_configs(path)) >= 2
            continue
        cfg = load_config(path)
        build(cfg.method.name, cfg.method.params(), 10)


def test_the_run_config_is_a_union_discriminated_by_task():
    """Each task validates only its own sections: a causal-LM key in an image config (and the reverse) is an
    unknown key, and an unknown task names the ones that exist."""
    from kdlab.config import CausalLMConfig, ClassifyConfig

    assert isinstance(load_config({}), ClassifyConfig)
    assert isinstance(load_config({"task": "causal_lm", "data": {"train": "t.txt"}}), CausalLMConfig)
    cases = [
        (
            {"task": "bogus"},
            "config: task: unknown task 'bogus'; available: classify, causal_lm, text_classify, rl, cooperative",
        ),
        ({"data": {"tokenizer": "bytes"}}, "config: unknown key 'data.tokenizer'"),
        ({"task": "causal_lm", "data": {"path": "x.csv"}}, "config: unknown key 'data.path'"),
        ({"task": "causal_lm", "compress": {"source": "r"}}, "config: unknown key 'compress'"),
        ({"cache": {"tail_samples": 4}}, "config: cache.tail_samples is for task: causal_lm only"),
    ]
    for raw, message in cases:
        with pytest.raises(ConfigError) as err:
            load_config(raw)
        assert str(err.value) == message
