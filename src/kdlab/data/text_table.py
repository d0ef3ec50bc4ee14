"""Text classification data from local files: tables of texts (or text pairs) and labels → packed token tensors.

Sources: a CSV/TSV, JSON/JSONL or Parquet file (read with pandas), or a directory written by the ``datasets``
library's ``save_to_disk`` — a ``DatasetDict`` with its train/validation/test splits (GLUE and SuperGLUE as
``datasets`` exports them) or a single ``Dataset``. Text columns are named in the config or found (``sentence``,
``text``, ...; pairs ``sentence1/sentence2``, ``question/sentence``, ``premise/hypothesis``, ...); labels are ints
or strings (strings sorted into class indices). A split without labels (GLUE's test split, -1) is set aside: the
validation split becomes the test split and a validation split is carved from training rows by seed.

Each model tokenises with its own tokenizer, once (optionally cached on disk by content). The tensors the
engine indexes hold every tokenizer's ids side by side: ``x[:, start:stop]`` are one tokenizer's (``segments``),
each token ``id << 2 | token_type`` and ``-1`` for padding; the model trims, per batch, the padding no row of the
batch needs (dynamic padding; ``kdlab.models.hf_text``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from kdlab.io import atomic_write_bytes

from .errors import DataError

TYPE_BITS = 2  # the token type (0/1 for a text pair) in the low bits of a packed id
SINGLE_COLUMNS = ("sentence", "text", "review", "content", "document", "snippet")
PAIR_COLUMNS = (
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "passage"),
    ("text_a", "text_b"),
)
VAL_NAMES = ("validation", "val", "dev", "valid")
_FINGERPRINT_VERSION = b"kdlab.text_table/v1"


@dataclass
class TextTable:
    """One split's rows: one or two lists of texts and the raw labels."""

    texts: list[list[str]]  # [first texts] or [first texts, second texts]
    labels: list[Any]

    def take(self, rows: Sequence[int]) -> TextTable:
        return TextTable([[column[i] for i in rows] for column in self.texts], [self.labels[i] for i in rows])

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class TextSplits:
    """Packed token tensors per split (int64), labels, and where each tokenizer's columns are (``segments``)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    class_names: tuple[str, ...]
    fingerprint: str
    segments: dict[str, tuple[int, int]]
    name: str = "text"
    columns: tuple[str, ...] = ()
    tables: dict[str, TextTable] = field(default_factory=dict, repr=False)
    notes: tuple[str, ...] = ()  # what was carved or set aside (summary.json)
    standardized: bool = False

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.x_train.shape[1],)

    @property
    def lengths(self) -> Tensor:
        """Tokens per training row (all tokenizers together): what ``train.group_by_length`` sorts by."""
        return (self.x_train >= 0).sum(1)


def _frame_columns(frame) -> dict[str, list]:
    return {str(c): frame[c].tolist() for c in frame.columns}


def read_source(path: str | Path) -> dict[str, dict[str, list]]:
    """``{split: {column: values}}`` of a file (one split, "train") or a ``save_to_disk`` directory."""
    source = Path(path)
    if not source.exists():
        raise DataError(f"data.path: {source} does not exist")
    if source.is_dir():
        try:
            import datasets
        except ImportError:
            raise DataError("a save_to_disk directory needs the datasets package: pip install 'kdlab[hf]'") from None
        try:
            loaded = datasets.load_from_disk(str(source))
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"{source} is not a datasets save_to_disk directory: {err}") from None
        if isinstance(loaded, datasets.DatasetDict):
            return {name: _dataset_columns(split) for name, split in loaded.items()}
        return {"train": _dataset_columns(loaded)}
    return {"train": read_file(source)}


def _dataset_columns(dataset) -> dict[str, list]:
    columns = {name: dataset[name] for name in dataset.column_names}
    for name, feature in dataset.features.items():  # ClassLabel ints → their names, so labels read as strings
        names = getattr(feature, "names", None)
        if names and name in columns:
            columns[name] = [names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in columns[name]]
    return columns


def read_file(path: Path) -> dict[str, list]:
    import pandas as pd

    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith((".csv", ".csv.gz", ".csv.bz2")):
            frame = pd.read_csv(path, keep_default_na=False)
        elif suffixes.endswith((".tsv", ".tsv.gz")):
            frame = pd.read_csv(path, sep="\t", keep_default_na=False, quoting=3)
        elif suffixes.endswith(".jsonl"):
            frame = pd.read_json(path, lines=True)
        elif suffixes.endswith(".json"):
            text = path.read_text()
            frame = pd.read_json(path, lines=not text.lstrip().startswith("["))
        elif suffixes.endswith(".parquet"):
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: text data must be .csv, .tsv, .json, .jsonl or .parquet (or a datasets dir)")
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is unreadable: {str(err).splitlines()[0]}") from None
    if not len(frame):
        raise DataError(f"{path} has no rows")
    return _frame_columns(frame)


def text_columns(columns: dict[str, list], wanted: Sequence[str] | None, where: str) -> list[str]:
    """The one or two text columns: as configured, or the first known single/pair name present."""
    if wanted:
        missing = [c for c in wanted if c not in columns]
        if missing or len(wanted) > 2:
            raise DataError(f"{where}: text columns {list(wanted)}: {missing or 'at most two'}; has {list(columns)}")
        return list(wanted)
    for pair in PAIR_COLUMNS:
        if all(c in columns for c in pair):
            return list(pair)
    for name in SINGLE_COLUMNS:
        if name in columns:
            return [name]
    raise DataError(f"{where}: no text column found in {list(columns)}; set data.text_columns")


def to_table(columns: dict[str, list], texts: list[str], label: str, where: str) -> TextTable:
    if label not in columns:
        raise DataError(f"{where}: no label column {label!r} (has {list(columns)}); set data.label_column")
    rows = [[("" if v is None else str(v)) for v in columns[c]] for c in texts]
    return TextTable(rows, list(columns[label]))


def _unlabelled(labels: list[Any]) -> bool:
    return all(v is None or (isinstance(v, int | np.integer) and v < 0) for v in labels)


def label_classes(tables: Sequence[TextTable]) -> tuple[list[Any], tuple[str, ...]]:
    """The sorted label values over all splits and their names (ints: 0..max; strings: sorted)."""
    values = {v for t in tables for v in t.labels}
    if any(v is None for v in values):
        raise DataError("labels: some rows have no label")
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise DataError(f"labels: negative class index {min(values)}")
        order: list[Any] = list(range(int(max(values)) + 1))
        return order, tuple(str(v) for v in order)
    if any(isinstance(v, float) and not float(v).is_integer() for v in values):
        raise DataError("labels must be class indices or names, got fractional numbers")
    order = sorted(values, key=str)
    return order, tuple(str(v) for v in order)


def carve(table: TextTable, fraction: float, seed: int) -> tuple[TextTable, TextTable]:
    """(rest, carved): a seeded ``fraction`` of the rows set aside."""
    n = len(table)
    k = round(n * fraction)
    if fraction > 0 and (k < 1 or k >= n):
        raise DataError(f"cannot carve {fraction:.0%} of {n} rows")
    perm = np.random.default_rng(seed).permutation(n)
    return table.take(sorted(perm[k:].tolist())), table.take(sorted(perm[:k].tolist()))


def fingerprint(tables: dict[str, TextTable], max_length: int) -> str:
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    digest.update(f"max_length={max_length}".encode())
    for split in ("train", "val", "test"):
        digest.update(split.encode())
        digest.update(json.dumps([tables[split].texts, [str(v) for v in tables[split].labels]]).encode())
    return digest.hexdigest()


def encode(tokenizer: Any, table: TextTable, max_length: int) -> list[list[int]]:
    """Token ids packed with their token type, one list per row (truncated to ``max_length``)."""
    pairs = table.texts[1] if len(table.texts) > 1 else None
    out = tokenizer(table.texts[0], pairs, truncation=True, max_length=max_length, return_token_type_ids=True)
    types = out.get("token_type_ids") or [[0] * len(ids) for ids in out["input_ids"]]
    return [
        [(i << TYPE_BITS) | min(t, 3) for i, t in zip(ids, tt, strict=True)]
        for ids, tt in zip(out["input_ids"], types, strict=True)
    ]


def pad(rows: list[list[int]], width: int) -> Tensor:
    out = torch.full((len(rows), width), -1, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return out


def tokenize_splits(
    tables: dict[str, TextTable], tokenizer: Any, key: str, max_length: int, cache_dir: str | Path | None, data_id: str
) -> dict[str, Tensor]:
    """One tokenizer's packed ids for every split, as wide as its longest row; read from / written to
    ``cache_dir`` (keyed by the data, the tokenizer and ``max_length``) when given."""
    cache = None
    if cache_dir is not None:
        name = hashlib.sha256(f"{data_id}|{key}|{max_length}".encode()).hexdigest()[:32]
        cache = Path(cache_dir) / f"tokens-{name}.safetensors"
        if cache.is_file():
            return load_file(str(cache))
    encoded = {split: encode(tokenizer, table, max_length) for split, table in tables.items()}
    width = max((len(r) for rows in encoded.values() for r in rows), default=1)
    packed = {split: pad(rows, width) for split, rows in encoded.items()}
    if cache is not None:
        from safetensors.torch import save as save_bytes

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, save_bytes(packed))
    return packed


def build_splits(
    tables: dict[str, TextTable],
    tokenizers: list[tuple[str, Any]],
    *,
    max_length: int,
    cache_dir: str | Path | None,
    columns: tuple[str, ...],
    notes: tuple[str, ...] = (),
) -> TextSplits:
    """Labels to class indices and every tokenizer's ids side by side (the first tokenizer's columns first)."""
    order, names = label_classes(list(tables.values()))
    index = {v: i for i, v in enumerate(order)}
    ys = {s: torch.tensor([index[v] for v in t.labels], dtype=torch.int64) for s, t in tables.items()}
    print_id = fingerprint(tables, max_length)
    pieces: dict[str, list[Tensor]] = {s: [] for s in tables}
    segments: dict[str, tuple[int, int]] = {}
    start = 0
    for key, tokenizer in tokenizers:
        if key in segments:
            continue
        packed = tokenize_splits(tables, tokenizer, key, max_length, cache_dir, print_id)
        width = packed["train"].shape[1]
        segments[key] = (start, start + width)
        start += width
        for split in tables:
            pieces[split].append(packed[split])
    xs = {s: torch.cat(p, dim=1) for s, p in pieces.items()}
    return TextSplits(
        x_train=xs["train"],
        y_train=ys["train"],
        x_val=xs["val"],
        y_val=ys["val"],
        x_test=xs["test"],
        y_test=ys["test"],
        num_classes=len(order),
        class_names=names,
        fingerprint=print_id,
        segments=segments,
        columns=columns,
        tables=tables,
        notes=notes,
    )


def load_tables(
    path: str | Path,
    *,
    val_path: str | Path | None,
    test_path: str | Path | None,
    columns: Sequence[str] | None,
    label_column: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, TextTable], tuple[str, ...], list[str]]:
    """train/val/test tables from the configured files; the notes say what was carved or set aside."""
    source = read_source(path)
    if "train" not in source:
        raise DataError(f"{path}: no train split (has {', '.join(source)})")
    names = text_columns(source["train"], columns, str(path))
    notes: list[str] = []

    def table(cols: dict[str, list], where: str) -> TextTable:
        return to_table(cols, text_columns(cols, names, where), label_column, where)

    train = table(source["train"], f"{path} (train)")
    val_name = next((n for n in VAL_NAMES if n in source), None)
    val = table(read_file(Path(val_path)), str(val_path)) if val_path else None
    if val is None and val_name is not None:
        val = table(source[val_name], f"{path} ({val_name})")
    test = table(read_file(Path(test_path)), str(test_path)) if test_path else None
    if test is None and "test" in source:
        test = table(source["test"], f"{path} (test)")
        if _unlabelled(test.labels):
            notes.append("the test split has no labels: the validation split is the test split")
            test = None
            if val is not None:
                test, val = val, None
    for split in (val, test):
        if split is not None and _unlabelled(split.labels):
            raise DataError(f"{path}: a split given for evaluation has no labels")
    if test is None:
        if test_fraction <= 0:
            raise DataError("no test split: give data.test_path, or data.test_fraction > 0 to carve one from train")
        train, test = carve(train, test_fraction, seed + 1)
        notes.append(f"test: {len(test)} rows carved from train (seed {seed + 1})")
    if val is None:
        if val_fraction > 0:
            train, val = carve(train, val_fraction, seed)
            notes.append(f"val: {len(val)} rows carved from train (seed {seed})")
        else:
            val = train.take([])
    return {"train": train, "val": val, "test": test}, tuple(names), notes
