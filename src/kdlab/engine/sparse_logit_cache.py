"""On-disk format of a language-model teacher cache: top-k logits per token in sharded safetensors.

A cache is a directory::

    index.json                          format, k, vocab_size, rows, fingerprint, shard names and row counts
    shard-00000-of-00003.safetensors    values (rows, k) float16, indices_lo (rows, k) int16,
                                        [indices_hi (rows, b, ceil(k/8)) uint8], log_rest (rows,) float32

With tail samples (``SparseTeacher.tail_samples``, s per token) a shard also holds ``tail_lo`` (rows, s) int16,
[``tail_hi``] packed like the indices, and ``tail_entropy`` (rows,) float32: 2s + 4 more bytes per token
below 65,536 classes (s = 16: 296 bytes per token at k = 64).

Class indices are split into their low 16 bits (int16, two's complement of the uint16) and b = bit length of
(vocab_size − 1) >> 16 high bit planes, each packed 8 per byte: at k = 64 and a 128k vocabulary that is
2 + 2 + 1/8 bytes per class plus 4 for ``log_rest``, 268 bytes per token (260 below 65,536 classes).
Each shard repeats the fingerprint in its metadata. The fingerprint is a dict of strings (for a causal LM:
data, tokenizer and teacher digests); a reader given the expected one refuses a cache made for anything
else. The directory is written beside the target and renamed into place: a crash leaves no half cache.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from kdlab.io import atomic_write_json
from kdlab.losses.sparse_teacher import SparseTeacher

from .logit_cache import CacheError

FORMAT = "kdlab-sparse-lm-1"
INDEX = "index.json"
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def high_bits(vocab_size: int) -> int:
    return max(vocab_size - 1, 0).bit_length() - 16 if vocab_size > 1 << 16 else 0


def encode_indices(indices: Tensor, vocab_size: int) -> dict[str, Tensor]:
    idx = indices.to(torch.int32)
    low = idx & 0xFFFF
    out = {"indices_lo": torch.where(low >= 1 << 15, low - (1 << 16), low).to(torch.int16)}
    nbits = high_bits(vocab_size)
    if nbits:
        rows, k = idx.shape
        pad = (-k) % 8
        planes = [((idx >> (16 + b)) & 1).to(torch.uint8) for b in range(nbits)]
        stacked = torch.nn.functional.pad(torch.stack(planes, 1), (0, pad))  # (rows, nbits, k + pad)
        out["indices_hi"] = (stacked.reshape(rows, nbits, -1, 8) * _BIT_WEIGHTS).sum(-1, dtype=torch.uint8)
    return out


def decode_indices(low: Tensor, high: Tensor | None, k: int) -> Tensor:
    idx = low.to(torch.int32) & 0xFFFF
    if high is not None:
        bits = (high.unsqueeze(-1) & _BIT_WEIGHTS).ne(0).reshape(*high.shape[:2], -1)[..., :k]  # (rows, nbits, k)
        for b in range(bits.shape[1]):
            idx |= bits[:, b].to(torch.int32) << (16 + b)
    return idx


def write_sparse_cache(
    directory: str | Path,
    parts: SparseTeacher | Iterable[SparseTeacher],
    *,
    vocab_size: int,
    fingerprint: dict[str, str],
    rows_per_shard: int = 1 << 20,
    overwrite: bool = False,
) -> Path:
    """Write token rows (one SparseTeacher or an iterable of them, in order) as a sharded cache directory."""
    target = Path(directory)
    if target.exists() and not overwrite:
        raise CacheError(f"{target} exists; pass overwrite=True to replace it")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in fingerprint.items()):
        raise ValueError("fingerprint must map names to strings")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards: list[tuple[str, int]] = []
    buffer: list[SparseTeacher] = []
    k = samples = None

    def flush(rows: list[SparseTeacher]) -> None:
        part = SparseTeacher.cat(rows)
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {
            "values": _shifted(part.values).to(torch.float16).cpu().contiguous(),
            "log_rest": part.log_rest.to(torch.float32).cpu().contiguous(),
            **{key: t.contiguous() for key, t in encode_indices(part.indices.cpu(), vocab_size).items()},
        }
        if part.has_tail_samples:
            packed = encode_indices(part.tail_samples.cpu(), vocab_size)
            tensors |= {key.replace("indices", "tail"): t.contiguous() for key, t in packed.items()}
            tensors["tail_entropy"] = part.tail_entropy.to(torch.float32).cpu().contiguous()
        save_file(tensors, str(tmp / name), metadata={"format": FORMAT, **_fp_meta(fingerprint)})
        shards.append((name, part.values.shape[0]))

    try:  # a failure midway (bad part, full disk) leaves nothing behind
        pending = 0
        for part in [parts] if isinstance(parts, SparseTeacher) else parts:
            part = part.flat()
            part.check_vocab(vocab_size)
            shape = (part.k, part.tail_samples.shape[-1] if part.has_tail_samples else 0)
            if k is None:
                k, samples = shape
            elif shape != (k, samples):
                raise ValueError(f"all parts must have the same k and tail samples, got {(k, samples)} and {shape}")
            start = 0
            while start < part.values.shape[0]:
                take = min(rows_per_shard - pending, part.values.shape[0] - start)
                buffer.append(part.rows(slice(start, start + take)))
                pending += take
                start += take
                if pending == rows_per_shard:
                    flush(buffer)
                    buffer, pending = [], 0
        if buffer:
            flush(buffer)
        if k is None:
            raise ValueError("no rows to write")
        names = []
        for i, (name, rows) in enumerate(shards):
            final = f"shard-{i:05d}-of-{len(shards):05d}.safetensors"
            (tmp / name).rename(tmp / final)
            names.append({"file": final, "rows": rows})
        index = {
            "format": FORMAT,
            "k": k,
            "tail_samples": samples,
            "vocab_size": vocab_size,
            "rows": sum(s["rows"] for s in names),
            "fingerprint": dict(fingerprint),
            "shards": names,
        }
        atomic_write_json(tmp / INDEX, index)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old)
    else:
        tmp.rename(target)
    return target


def warn_unused_tail_samples(loss: str, temperature: float, k: int) -> None:
    """One warning line when a cache's tail samples are read without them (``tail_samples_serve`` is False)."""
    warnings.warn(
        f"the logit cache's tail samples serve kd and ptloss at temperature 1; {loss} at T={temperature:g} uses "
        f"its top {k} and one rest bucket only",
        stacklevel=3,
    )


class SparseLogitCache:
    """Reader of a sparse cache directory: ``len(cache)`` token rows, ``cache.read(start, stop)``.

    ``use_tail_samples=False`` reads a cache that holds tail samples without them (the rest-bucket loss, e.g.
    for a temperature other than 1); ``tail_samples`` is then 0 and ``stored_tail_samples`` what is on disk.
    """

    def __init__(
        self, directory: str | Path, expected_fingerprint: dict[str, str] | None = None, use_tail_samples: bool = True
    ) -> None:
        self.directory = Path(directory)
        try:
            index = json.loads((self.directory / INDEX).read_text())
        except (OSError, ValueError) as err:
            raise CacheError(f"{self.directory} is not a readable sparse logit cache ({INDEX}: {err})") from None
        if index.get("format") != FORMAT:
            raise CacheError(f"{self.directory}: unknown cache format {index.get('format')!r} (expected {FORMAT})")
        self.k: int = int(index["k"])
        self.stored_tail_samples: int = int(index.get("tail_samples") or 0)  # per token; 0 = none
        self.tail_samples: int = self.stored_tail_samples if use_tail_samples else 0  # what ``read`` returns
        self.vocab_size: int = int(index["vocab_size"])
        self.fingerprint: dict[str, str] = dict(index["fingerprint"])
        self.shards: list[tuple[Path, int]] = [(self.directory / s["file"], int(s["rows"])) for s in index["shards"]]
        if expected_fingerprint is not None:
            for key, expected in expected_fingerprint.items():
                found = self.fingerprint.get(key)
                if found != expected:
                    raise CacheError(
                        f"stale logit cache {self.directory}: made for other {key} "
                        f"({(found or '?')[:12]} != {expected[:12]}); re-create it"
                    )

    def __len__(self) -> int:
        return sum(rows for _, rows in self.shards)

    @property
    def bytes_per_token(self) -> float:
        """Bytes on disk per token row, all shards and the index included."""
        files = [path for path, _ in self.shards] + [self.directory / INDEX]
        return sum(path.stat().st_size for path in files) / max(len(self), 1)

    @property
    def payload_bytes_per_token(self) -> float:
        """Bytes of tensor data per token row, without the safetensors headers: 2k + 2k + b·ceil(k/8) + 4, plus
        2s + b·ceil(s/8) + 4 with s tail samples."""
        total = 0
        for path, _ in self.shards:
            with open(path, "rb") as handle:
                header = int.from_bytes(handle.read(8), "little")  # safetensors: u64 header length, then JSON
            total += path.stat().st_size - 8 - header
        return total / max(len(self), 1)

    def read(self, start: int = 0, stop: int | None = None) -> SparseTeacher:
        """Rows [start, stop) as a SparseTeacher (float16 values, int64 indices, float32 log_rest)."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"rows [{start}, {stop}) are outside the cache's {len(self)} rows")
        parts, offset = [], 0
        for path, rows in self.shards:
            lo, hi = max(start - offset, 0), min(stop - offset, rows)
            if lo < hi:
                parts.append(self._read_shard(path, lo, hi))
            offset += rows
        if not parts:
            s = self.tail_samples
            tail = (torch.zeros(0, s, dtype=torch.long), torch.zeros(0)) if s else ()
            empty = torch.zeros(0, self.k)
            return SparseTeacher(empty.half(), empty.long(), torch.zeros(0), *tail)
        return SparseTeacher.cat(parts)

    def _read_shard(self, path: Path, lo: int, hi: int) -> SparseTeacher:
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != FORMAT or _fp_meta(self.fingerprint) != {
                    key: value for key, value in meta.items() if key.startswith("fingerprint.")
                }:
                    raise CacheError(f"shard {path} does not belong to the cache in {self.directory}")
                stored = set(handle.keys())

                def rows(name: str) -> Tensor:
                    return handle.get_slice(name)[lo:hi]

                def high_planes(name: str) -> Tensor | None:  # stored only above 65,536 classes
                    return rows(name) if name in stored else None

                values, low, log_rest = rows("values"), rows("indices_lo"), rows("log_rest")
                high = high_planes("indices_hi")
                tail = ()
                if self.tail_samples:
                    samples = decode_indices(rows("tail_lo"), high_planes("tail_hi"), self.tail_samples)
                    tail = (samples.long(), rows("tail_entropy"))
        except (SafetensorError, OSError) as err:
            raise CacheError(f"logit cache shard {path} is unreadable: {err}") from None
        return SparseTeacher(values, decode_indices(low, high, self.k).long(), log_rest, *tail)


def _shifted(values: Tensor) -> Tensor:
    """Row maximum moved to 0 (softmax unchanged) so float16 keeps its precision on the largest logits."""
    v = values.float()
    return (v - v.amax(-1, keepdim=True)).clamp(min=torch.finfo(torch.float16).min)


def _fp_meta(fingerprint: dict[str, str]) -> dict[str, str]:
    return {f"fingerprint.{key}": value for key, value in fingerprint.items()}
