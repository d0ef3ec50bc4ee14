"""Tiny text-classification fixtures made in the test: two tokenizers of different kinds (BERT WordPiece and a
RoBERTa byte-level BPE), tiny classifiers of both architectures, and a synthetic sentiment table whose label is
carried by one polarity word among neutral ones."""

from __future__ import annotations

import csv
import random
from pathlib import Path

NEUTRAL = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "was",
    "is",
    "it",
    "this",
    "and",
    "of",
    "with",
    "very",
    "quite",
    "rather",
]
POSITIVE = ["good", "great", "fine", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "dull"]


def sentence(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 9))]
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def sentiment_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        rows.append({"text": sentence(rng, positive), "label": "pos" if positive else "neg"})
    return rows


def pair_rows(n: int, seed: int) -> list[dict[str, str]]:
    """sentence1/sentence2; label "same" when both have the same polarity (needs both texts)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.random() < 0.5, rng.random() < 0.5
        rows.append(
            {"sentence1": sentence(rng, a), "sentence2": sentence(rng, b), "label": "same" if a == b else "diff"}
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def corpus() -> list[str]:
    return [" ".join(NEUTRAL + POSITIVE + NEGATIVE)] * 4


def bert_tokenizer(directory: Path) -> Path:
    """A WordPiece tokenizer (BERT-style: [CLS] ... [SEP], token types for a pair) over the fixture's words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *NEUTRAL, *POSITIVE, *NEGATIVE]
    wordpiece = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    tok.save_pretrained(str(directory))
    return directory


def roberta_tokenizer(directory: Path) -> Path:
    """A byte-level BPE (RoBERTa-style: <s> ... </s>, no token types) trained on the fixture's words."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=300, min_frequency=1, special_tokens=special)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    tok.save_pretrained(str(directory))
    return directory


TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def classifier_dir(directory: Path, tokenizer: Path, architecture: str, labels: list[str], seed: int = 0) -> Path:
    """A (randomly initialised) sequence classifier saved with its tokenizer, as a fine-tuned one would be."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    extra = {"max_position_embeddings": 66} if architecture == "roberta" else {}
    config = AutoConfig.for_model(
        architecture,
        **{**TINY, **extra},
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory
