"""On-disk format of a language-model teacher cache: top-k logits per token in sharded safetensors.

A cache is a directory::

    index.json                          format, k, tail_samples, vocab_size, rows, fingerprint, shards and rows
    shard-00000-of-00003.safetensors    values (rows, k) float16, indices (rows, ceil(k·b/8)) uint8,
                                        log_rest (rows,) float32

Class indices are bit-packed: b = bits of (vocab_size − 1) per index (11 at 2,048 classes, 15 at 32,000, 17 at
128,256), index i of a row in bits [i·b, (i + 1)·b) of that row's bytes, least significant bit first. At k = 64
that is 128 + 8b + 4 bytes per token (220 at 2,048 classes, 252 at 32,000).

With tail samples (``SparseTeacher.tail_samples``, s per token) a shard also holds ``tail`` (rows, ceil(s·b/8))
uint8, packed the same way, and ``tail_entropy`` (rows,) float32: ceil(s·b/8) + 4 more bytes per token.
``default_tail_samples`` is as many as keep a token under 300 bytes (DistillKit's compressed format is about
300): 54 at k = 64 and 2,048 classes (299 bytes), 22 at 32,000, 12 at 128,256.

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

FORMAT = "kdlab-sparse-lm-2"  # 1: 16-bit index halves plus high bit planes (before tail samples were packed)
INDEX = "index.json"
BYTES_PER_TOKEN = 300  # the default tail samples fill a token up to this (DistillKit's compressed format: ~300)
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_PACK_ROWS = 1 << 14  # rows packed or unpacked at a time: bounds the (rows, m, b) bit tensor


def index_bits(vocab_size: int) -> int:
    """Bits per stored class index: enough for vocab_size − 1 (at least 1)."""
    return max((vocab_size - 1).bit_length(), 1)


def packed_bytes(count: int, vocab_size: int) -> int:
    """Bytes per token of ``count`` packed class indices."""
    return -(-count * index_bits(vocab_size) // 8)


def token_bytes(k: int, tail_samples: int, vocab_size: int) -> int:
    """Tensor bytes per token: k float16 values, k packed indices, log_rest; s packed samples and their entropy."""
    top = 2 * k + packed_bytes(k, vocab_size) + 4
    return top + (packed_bytes(tail_samples, vocab_size) + 4 if tail_samples else 0)


def default_tail_samples(k: int, vocab_size: int, budget: int = BYTES_PER_TOKEN) -> int:
    """The most tail samples that keep a token's tensor data below ``budget`` bytes (one byte is left for the
    files' headers, a fraction of a byte per token): more draws, a less noisy KD/PTLoss gradient on the tail."""
    room = budget - 1 - token_bytes(k, 0, vocab_size) - 4  # 4: the tail entropy
    return max(room * 8 // index_bits(vocab_size), 0) if k < vocab_size else 0


def encode_indices(indices: Tensor, vocab_size: int) -> Tensor:
    """(rows, m) class indices in [0, vocab_size) -> (rows, ceil(m·b/8)) uint8, b = ``index_bits(vocab_size)``."""
    bits = index_bits(vocab_size)
    rows, m = indices.shape
    shifts = torch.arange(bits, dtype=torch.int32)
    out = torch.empty(rows, packed_bytes(m, vocab_size), dtype=torch.uint8)
    for start in range(0, rows, _PACK_ROWS):
        idx = indices[start : start + _PACK_ROWS].to(torch.int32)
        flat = ((idx.unsqueeze(-1) >> shifts) & 1).to(torch.uint8).flatten(1)  # (n, m·b), low bit first
        flat = torch.nn.functional.pad(flat, (0, out.shape[1] * 8 - flat.shape[1]))
        out[start : start + len(idx)] = (flat.reshape(len(idx), -1, 8) * _BIT_WEIGHTS).sum(-1, dtype=torch.uint8)
    return out


def decode_indices(packed: Tensor, vocab_size: int, m: int) -> Tensor:
    """Inverse of ``encode_indices``: (rows, ceil(m·b/8)) uint8 -> (rows, m) int32. Each index is read from the five
    bytes that start at its first bit (b ≤ 31 bits plus a shift of at most 7 fit in them)."""
    bits = index_bits(vocab_size)
    expected = packed_bytes(m, vocab_size)
    if packed.shape[-1] != expected:
        raise CacheError(f"packed indices have {packed.shape[-1]} bytes per row, expected {expected}")
    first = torch.arange(m) * bits
    byte, shift = first // 8, first % 8
    out = torch.empty(packed.shape[0], m, dtype=torch.int32)
    for start in range(0, packed.shape[0], _PACK_ROWS):
        chunk = torch.nn.functional.pad(packed[start : start + _PACK_ROWS], (0, 4)).long()
        word = sum(chunk[:, byte + j] << (8 * j) for j in range(5))
        out[start : start + len(chunk)] = ((word >> shift) & ((1 << bits) - 1)).int()
    return out


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
            "indices": encode_indices(part.indices.cpu(), vocab_size),
        }
        if part.has_tail_samples:
            tensors["tail"] = encode_indices(part.tail_samples.cpu(), vocab_size)
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
            raise CacheError(
                f"{self.directory}: cache format {index.get('format')!r}, this kdlab reads {FORMAT!r}; re-create it "
                "(`kdlab cache-logits CONFIG`)"
            )
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
        """Bytes of tensor data per token row, without the safetensors headers (``token_bytes``)."""
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

                def rows(name: str) -> Tensor:
                    return handle.get_slice(name)[lo:hi]

                values, log_rest = rows("values"), rows("log_rest")
                indices = decode_indices(rows("indices"), self.vocab_size, self.k)
                tail = ()
                if self.tail_samples:
                    samples = decode_indices(rows("tail"), self.vocab_size, self.tail_samples)
                    tail = (samples.long(), rows("tail_entropy"))
        except (SafetensorError, OSError) as err:
            raise CacheError(f"logit cache shard {path} is unreadable: {err}") from None
        return SparseTeacher(values, indices.long(), log_rest, *tail)


def _shifted(values: Tensor) -> Tensor:
    """Row maximum moved to 0 (softmax unchanged) so float16 keeps its precision on the largest logits."""
    v = values.float()
    return (v - v.amax(-1, keepdim=True)).clamp(min=torch.finfo(torch.float16).min)


def _fp_meta(fingerprint: dict[str, str]) -> dict[str, str]:
    return {f"fingerprint.{key}": value for key, value in fingerprint.items()}
