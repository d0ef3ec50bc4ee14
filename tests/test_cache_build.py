"""``cache.batch_size``: the teacher's batch while ``kdlab cache-logits`` builds the cache. The cache must not
depend on it: the logits of a row are the same whichever rows share its batch, up to the float rounding of
batch-size-dependent matrix kernels (oneDNN/MKL block a matrix product by its row count), which the cache's
float16 storage hides almost always — so equal to one float16 step, and identical top-1."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from kdlab.api import cache_logits, train
from kdlab.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    train(
        {
            "out": str(out),
            "data": {"name": "digits"},
            "model": {"name": "mlp", "kwargs": {"hidden": [64]}},
            "train": {"epochs": 2, "batch_size": 64, "progress": False, "train_eval_size": 0},
        }
    )
    return out


def _cache(tmp_path, teacher_run, name: str, batch: int | None) -> dict[str, torch.Tensor]:
    cache = {"path": str(tmp_path / f"{name}.safetensors")}
    if batch is not None:
        cache["batch_size"] = batch
    path = cache_logits({"data": {"name": "digits"}, "teacher": {"run": str(teacher_run)}, "cache": cache})
    return load_file(str(path))


def test_a_cache_built_at_a_larger_batch_equals_the_default_one(tmp_path, teacher_run):
    default = _cache(tmp_path, teacher_run, "default", None)  # train.eval_batch_size: 256
    small, large = _cache(tmp_path, teacher_run, "small", 7), _cache(tmp_path, teacher_run, "large", 4096)
    assert default.keys() == small.keys() == large.keys() == {"train.logits", "val.logits", "test.logits"}
    for key, reference in default.items():
        for other in (small[key], large[key]):
            assert other.dtype == torch.float16 and other.shape == reference.shape
            torch.testing.assert_close(other.float(), reference.float(), rtol=2**-10, atol=2**-14)
            assert torch.equal(other.float().argmax(-1), reference.float().argmax(-1))


def test_cache_batch_size_is_validated():
    with pytest.raises(ConfigError, match=r"cache\.batch_size"):
        load_config({"cache": {"batch_size": 0}})
