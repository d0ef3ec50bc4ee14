"""Text data for causal language models: local text/JSONL files, a tokenizer, fixed-length token blocks.

Every split is a list of files (paths or globs, each glob sorted); ``.jsonl`` files give one document per
line (its ``"text"`` field), other files are one document each. The documents' tokens are concatenated in
order and cut into non-overlapping blocks of ``block_size`` tokens (the incomplete last block is dropped);
inside a block, position i predicts token i + 1, so a block has ``block_size − 1`` targets.

Tokenizers: ``"bytes"`` (built in, 256 ids = the UTF-8 bytes, nothing to download), or a Hugging Face
``tokenizers`` file (``tokenizer.json``, or a directory holding one), e.g. a byte-level BPE trained
locally with ``train_bpe``. The ``tokenizers`` package comes with the ``hf`` extra.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import DataError

TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes as token ids: vocabulary 256, works offline, no training."""

    kind = "bytes"
    vocab_size = 256
    digest = "bytes-utf8"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def save(self, directory: Path) -> None:
        """Nothing to save: the run's config names the tokenizer."""


class FileTokenizer:
    """A ``tokenizers`` tokenizer read from a tokenizer.json file."""

    kind = "file"

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover - the hf extra installs it
            raise DataError("a tokenizer file needs the tokenizers package: pip install 'kdlab[hf]'") from None
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises its own Exception type
            raise DataError(f"tokenizer {path} is unreadable: {str(err).splitlines()[0]}") from None
        self.path = path
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        self.digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tok.encode_batch(texts, add_special_tokens=False)]

    def save(self, directory: Path) -> None:
        """A copy in the run directory, so that it is a complete Hugging Face model directory."""
        from kdlab.io import atomic_write_bytes

        atomic_write_bytes(directory / TOKENIZER_FILE, self.path.read_bytes())


Tokenizer = ByteTokenizer | FileTokenizer


def load_tokenizer(spec: str) -> Tokenizer:
    """``"bytes"``, a tokenizer.json file, or a directory holding one."""
    if spec == "bytes":
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"data.tokenizer: {spec} is neither 'bytes' nor a tokenizer.json file (or its directory)")
    return FileTokenizer(path)


def train_bpe(files: list[str | Path], vocab_size: int, out: str | Path) -> Path:
    """Train a byte-level BPE with ``tokenizers`` on ``files`` and write it as a tokenizer.json (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from kdlab.io import atomic_write_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(read_documents([Path(f) for f in files]), trainer=trainer)
    return atomic_write_text(Path(out), tok.to_str())


STDLIB_PREFIX = "stdlib:"


def resolve_files(key: str, spec: str | list[str]) -> list[Path]:
    """Paths and globs (each glob's matches sorted) in the given order; no match is an error naming the key.

    ``stdlib:PATTERN`` is relative to Python's standard-library directory: real text on every machine.
    """
    found: list[Path] = []
    for item in [spec] if isinstance(spec, str) else spec:
        if item.startswith(STDLIB_PREFIX):
            import sysconfig

            item = str(Path(sysconfig.get_paths()["stdlib"]) / item[len(STDLIB_PREFIX) :])
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            raise DataError(f"data.{key}: no file matches {item!r}")
        found.extend(files)
    return found


def read_documents(files: list[Path]) -> list[str]:
    docs: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror}") from None
        if path.suffix != ".jsonl":
            docs.append(text)
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{number}: expected a JSON object with a string 'text' field") from None
            if not isinstance(doc, str):
                raise DataError(f"{path}:{number}: 'text' must be a string")
            docs.append(doc)
    return docs


def token_blocks(ids: list[list[int]], block_size: int) -> Tensor:
    """Concatenated token ids cut into (blocks, block_size) int64 rows; the short tail is dropped."""
    flat = torch.tensor([t for doc in ids for t in doc], dtype=torch.int64)
    blocks = flat.numel() // block_size
    return flat[: blocks * block_size].reshape(blocks, block_size)


@dataclass
class TextSplits:
    """Token blocks per split; ``fingerprints`` (one per split) identify exactly these rows."""

    train: Tensor
    val: Tensor
    test: Tensor
    vocab_size: int
    tokenizer: Tokenizer
    fingerprints: dict[str, str]

    def split(self, name: str) -> Tensor:
        return getattr(self, name)


def load_text(
    train: str | list[str],
    val: str | list[str],
    test: str | list[str] | None,
    tokenizer: str,
    block_size: int,
) -> TextSplits:
    """Read, tokenize and block the three splits (``test`` defaults to ``val``)."""
    tok = load_tokenizer(tokenizer)
    blocks: dict[str, Tensor] = {}
    prints: dict[str, str] = {}
    for name, spec in (("train", train), ("val", val), ("test", test if test is not None else val)):
        rows = token_blocks(tok.encode_batch(read_documents(resolve_files(name, spec))), block_size)
        if rows.shape[0] == 0:
            raise DataError(f"data.{name}: fewer than block_size={block_size} tokens")
        blocks[name] = rows
        digest = hashlib.sha256(f"{tok.digest}:{block_size}:".encode())
        digest.update(rows.numpy().tobytes())
        prints[name] = digest.hexdigest()
    return TextSplits(**blocks, vocab_size=tok.vocab_size, tokenizer=tok, fingerprints=prints)
