"""Teacher-logit cache: the teacher runs once over every split; distillation then reads its logits.

A cache is one safetensors file with, per split, either dense float16 logits or the top-k log-probabilities
(float32), their class indices and the log of the probability mass outside the top k. Its metadata holds
fingerprints of the data (content + split) and of the teacher's weights; a cache whose fingerprints do not
match the run is refused. Random augmentation changes the teacher's inputs every epoch, so a cache is
only used when augmentation is off.

Top-k caches are expanded for training into dense log-probabilities that keep the top-k probabilities
exactly and spread the remaining mass uniformly over the other classes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from kdlab.errors import CacheError

FORMAT_VERSION = "1"
FEATURE = "feature:"  # key prefix of a cached teacher feature: "<split>.feature:<submodule name>"


def encode(logits: Tensor, topk: int | None) -> dict[str, Tensor]:
    if topk is None or topk >= logits.shape[-1]:
        return {"logits": logits.half()}
    log_p = torch.log_softmax(logits.float(), dim=-1)
    values, indices = log_p.topk(topk, dim=-1)
    kept = values.exp().sum(-1).clamp(max=1.0)
    return {"topk_logp": values, "topk_index": indices.int(), "log_rest": torch.log1p(-kept).clamp(min=-1e4)}


def decode(tensors: dict[str, Tensor], num_classes: int) -> Tensor:
    """Dense float32 logits (log-probabilities for a top-k cache)."""
    if "logits" in tensors:
        return tensors["logits"].float()
    values, indices, log_rest = tensors["topk_logp"], tensors["topk_index"].long(), tensors["log_rest"]
    k = values.shape[-1]
    fill = (log_rest - math.log(max(num_classes - k, 1))).unsqueeze(-1)
    dense = fill.expand(-1, num_classes).clone()
    return dense.scatter_(-1, indices, values)


def write_cache(
    path: Path,
    splits: dict[str, Tensor],
    data_fp: str,
    teacher_fp: str,
    topk: int | None,
    features: dict[str, dict[str, Tensor]] | None = None,
) -> None:
    """Logits per split (dense float16 or top-k) and, optionally, named teacher features per split (float16)."""
    tensors = {
        f"{split}.{key}": value.contiguous().cpu()
        for split, logits in splits.items()
        for key, value in encode(logits, topk).items()
    }
    for split, named in (features or {}).items():
        for name, value in named.items():
            tensors[f"{split}.{FEATURE}{name}"] = value.half().contiguous().cpu()
    meta = {
        "format": FORMAT_VERSION,
        "data_fingerprint": data_fp,
        "teacher_fingerprint": teacher_fp,
        "topk": str(topk or 0),
        "num_classes": str(next(iter(splits.values())).shape[-1]),
        "features": ",".join(sorted({n for named in (features or {}).values() for n in named})),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def read_cache(path: Path, data_fp: str, teacher_fp: str, topk: int | None = None) -> dict[str, Tensor]:
    """Dense logits per split; ``CacheError`` if the file is unreadable, made for other data or teacher, or holds
    another k than ``topk`` (None: dense) asks for."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise CacheError(f"logit cache {path} is unreadable: {err}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CacheError(f"logit cache {path} has an unknown format; re-run `kdlab cache-logits`")
    for what, expected in (("data", data_fp), ("teacher", teacher_fp)):
        if meta.get(f"{what}_fingerprint") != expected:
            raise CacheError(
                f"stale logit cache {path}: made for other {what} "
                f"({meta.get(f'{what}_fingerprint', '?')[:12]} != {expected[:12]}); "
                "re-run `kdlab cache-logits CONFIG` or set cache.use=never"
            )
    num_classes = int(meta["num_classes"])
    stored, wanted = int(meta.get("topk", "0")), topk or 0
    if wanted >= num_classes:
        wanted = 0  # top-k of every class is the dense cache
    if stored != wanted:
        held, asked = (f"top-{k} logits" if k else "dense logits" for k in (stored, wanted))
        raise CacheError(
            f"logit cache {path} holds {held}, the config asks for {asked} (cache.topk); "
            "re-run `kdlab cache-logits CONFIG` or set cache.use=never"
        )
    out = {}
    for split in ("train", "val", "test"):
        parts = {
            key.split(".", 1)[1]: value
            for key, value in tensors.items()
            if key.startswith(f"{split}.") and not key.split(".", 1)[1].startswith(FEATURE)
        }
        if parts:
            out[split] = decode(parts, num_classes)
    return out


def read_cached_features(path: Path, names: tuple[str, ...]) -> dict[str, dict[str, Tensor]]:
    """The named teacher features per split (float32) of a cache ``read_cache`` accepted; ``CacheError`` naming
    what is missing when the cache was made without them (``cache.features``)."""
    with safe_open(str(path), framework="pt") as handle:
        held = [n for n in (handle.metadata() or {}).get("features", "").split(",") if n]
        missing = [n for n in names if n not in held]
        if missing:
            raise CacheError(
                f"logit cache {path} holds no teacher features {missing} (it holds {held or 'none'}); "
                "add them to cache.features and re-run `kdlab cache-logits CONFIG`"
            )
        return {
            split: {n: handle.get_tensor(f"{split}.{FEATURE}{n}").float() for n in names}
            for split in ("train", "val", "test")
        }


def cached_feature_names(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return [n for n in (handle.metadata() or {}).get("features", "").split(",") if n]
