"""task: text_classify — Hugging Face sequence classifiers, each with its own tokenizer, on tables of texts.

A RoBERTa-style teacher (byte-level BPE) is fine-tuned by ``kdlab train`` on a synthetic sentiment table and
distilled into a BERT-style student (WordPiece) with every classification method; the losses, the frozen teacher,
text pairs, string labels, label-set checks, the cache fingerprint, resume and the exported directory are checked
against independent computations.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file
from text_fixtures import (
    TINY,
    bert_tokenizer,
    classifier_dir,
    pair_rows,
    roberta_tokenizer,
    sentiment_rows,
    write_csv,
)

from kdlab.api import cache_logits, distill, evaluate, train
from kdlab.config import load_config
from kdlab.errors import ConfigError

FAST = {"epochs": 3, "batch_size": 32, "progress": False, "optimizer": {"name": "adamw", "lr": 3e-3}}


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("text")
    data = {
        "train": write_csv(root / "train.csv", sentiment_rows(600, 0)),
        "test": write_csv(root / "test.csv", sentiment_rows(120, 1)),
    }
    bert, roberta = bert_tokenizer(root / "bert_tok"), roberta_tokenizer(root / "roberta_tok")
    teacher_init = classifier_dir(root / "teacher_init", roberta, "roberta", ["neg", "pos"])
    teacher = root / "teacher"
    summary = train(
        {
            "task": "text_classify",
            "out": str(teacher),
            "data": {"path": str(data["train"]), "test_path": str(data["test"])},
            "model": {"name": "hf_text", "kwargs": {"path": str(teacher_init)}},
            "train": {**FAST, "epochs": 4},
        }
    )
    return {"root": root, "data": data, "bert": bert, "roberta": roberta, "teacher": teacher, "summary": summary}


def _student(world: dict, out: str, method: dict, **extra) -> dict:
    return {
        "task": "text_classify",
        "out": str(world["root"] / out),
        "data": {"path": str(world["data"]["train"]), "test_path": str(world["data"]["test"])},
        "model": {"name": "hf_text", "kwargs": {"architecture": "bert", "tokenizer": str(world["bert"]), **TINY}},
        "teacher": {"run": str(world["teacher"])},
        "method": method,
        "train": {**FAST, **extra},
    }


def test_teacher_fine_tunes_and_a_student_with_another_tokenizer_learns_from_it(world):
    assert world["summary"]["val"]["accuracy"] >= 0.9
    before = _digest(world["teacher"])
    summary = distill(_student(world, "kd", {"name": "kd", "temperature": 2.0}))
    assert summary["val"]["accuracy"] >= 0.9
    assert summary["test"]["agreement"] >= 0.9
    assert _digest(world["teacher"]) == before  # the teacher is never trained or written
    run = world["root"] / "kd"
    saved = load_file(str(run / "model.safetensors"))
    student_keys = {k for k in saved if k.startswith("model.bert.") or k.startswith("model.classifier.")}
    assert set(saved) == student_keys  # nothing of the RoBERTa teacher in the student's weights
    checkpoint = [p for p in (run / "checkpoints").rglob("*.safetensors")] if (run / "checkpoints").exists() else []
    for path in checkpoint:
        assert not any("roberta" in k for k in load_file(str(path)))
    tokenization = json.loads((run / "tokenization.json").read_text())
    assert len(tokenization["segments"]) == 2  # student and teacher tokenised apart
    assert tokenization["class_names"] == ["neg", "pos"]


def test_step_loss_equals_the_kd_loss_on_the_same_logits(world):
    """The first optimizer step's logged loss (all rows in one batch) equals T²·KL(teacher ‖ student) + CE weights
    computed here from the two models' own logits on the same rows, by hand."""
    from kdlab.tasks.classify import build_student, load_data, load_teacher, resolve_teacher

    cfg_dict = _student(world, "loss", {"name": "kd", "temperature": 3.0, "alpha": 0.25, "beta": 0.75})
    cfg_dict["train"] = {**cfg_dict["train"], "epochs": 1, "batch_size": 1000}
    seen: list[dict] = []
    distill(cfg_dict, callbacks=[lambda info: seen.append(info.terms)])
    cfg = load_config(cfg_dict)
    data = load_data(cfg)
    torch.manual_seed(cfg.seed)
    student = build_student(cfg, data).eval()
    teacher = load_teacher(resolve_teacher(cfg.teacher), data.num_classes, data.in_shape, data)
    with torch.no_grad():
        s, t = student(data.x_train).double(), teacher(data.x_train).double()
    T = 3.0
    log_p, log_q = torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1).mean() * T * T
    ce = -torch.log_softmax(s, -1).gather(1, data.y_train[:, None]).mean()
    assert len(seen) == 1
    assert sum(seen[0].values()) == pytest.approx(float(0.25 * ce + 0.75 * kl), rel=1e-4)


@pytest.mark.parametrize(
    "method",
    [
        {"name": "ptloss", "epsilon": "auto", "temperature": 2.0},
        {"name": "poly1"},
        {"name": "label_smoothing"},
        {"name": "focal"},
        {"name": "dkd"},
        {"name": "fitnets", "student_layer": "features", "teacher_layer": "features"},
    ],
    ids=lambda m: m["name"],
)
def test_every_classification_method_runs_on_text(world, method):
    summary = distill(_student(world, f"m-{method['name']}", method))
    assert summary["val"]["accuracy"] >= 0.8, summary["val"]


def test_text_pairs_and_string_labels(world, tmp_path):
    rows = pair_rows(300, 5)
    path = write_csv(tmp_path / "pairs.csv", rows)
    cfg = {
        "task": "text_classify",
        "out": str(tmp_path / "pairs"),
        "data": {"path": str(path), "test_fraction": 0.2},
        "model": {"name": "hf_text", "kwargs": {"architecture": "bert", "tokenizer": str(world["bert"]), **TINY}},
        "train": {**FAST, "epochs": 1},
    }
    from kdlab.tasks.classify import load_data

    data = load_data(load_config(cfg))
    assert data.columns == ("sentence1", "sentence2") and data.class_names == ("diff", "same")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(world["bert"]))
    first, second = data.tables["train"].texts[0][0], data.tables["train"].texts[1][0]
    expected = tok(first, second)
    packed = data.x_train[0]
    row = packed[packed >= 0]
    assert (row >> 2).tolist() == expected["input_ids"]
    assert (row & 3).tolist() == expected["token_type_ids"] and 1 in expected["token_type_ids"]
    assert data.y_train[0] == data.class_names.index(data.tables["train"].labels[0])
    summary = train(cfg)
    assert summary["data"]["class_names"] == ["diff", "same"]


def test_mismatched_label_sets_are_one_line(world, tmp_path):
    three = classifier_dir(tmp_path / "three", world["roberta"], "roberta", ["neg", "pos", "neutral"])
    cfg = _student(world, "x", {"name": "kd"})
    cfg["teacher"] = {"model": {"name": "hf_text", "kwargs": {"path": str(three)}}}
    with pytest.raises(ConfigError, match=r"has 3 labels .*the data has 2"):
        distill(cfg)
    other = classifier_dir(tmp_path / "other", world["roberta"], "roberta", ["bad", "good"])
    cfg["teacher"] = {"model": {"name": "hf_text", "kwargs": {"path": str(other)}}}
    with pytest.raises(ConfigError, match="the label sets must match"):
        distill(cfg)
    assert not (world["root"] / "x").exists()  # refused before anything was written


def test_teacher_labels_in_another_order_are_reordered(world, tmp_path):
    from kdlab.tasks.classify import load_data, load_teacher, resolve_teacher

    swapped = classifier_dir(tmp_path / "swapped", world["roberta"], "roberta", ["pos", "neg"], seed=3)
    cfg = load_config(
        {
            **_student(world, "y", {"name": "kd"}),
            "teacher": {"model": {"name": "hf_text", "kwargs": {"path": str(swapped)}}},
        }
    )
    data = load_data(cfg)
    teacher = load_teacher(resolve_teacher(cfg.teacher), 2, data.in_shape, data)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plain = AutoModelForSequenceClassification.from_pretrained(str(swapped)).eval()
    tok = AutoTokenizer.from_pretrained(str(swapped))
    text = data.tables["train"].texts[0][0]
    with torch.no_grad():
        ours = teacher(data.x_train[:1])
        theirs = plain(**tok([text], return_tensors="pt")).logits
    torch.testing.assert_close(ours, theirs[:, [1, 0]], atol=1e-5, rtol=1e-5)  # data order: neg, pos


def test_cache_is_fingerprinted_by_data_tokenizer_and_teacher(world, tmp_path):
    import yaml

    from kdlab.errors import CacheError
    from kdlab.teacher.source import resolve_teacher

    cfg = _student(world, "cached", {"name": "kd", "temperature": 2.0}, epochs=1)
    path = cache_logits(cfg)
    summary = distill({**cfg, "cache": {"use": "require"}})
    assert summary["teacher"].startswith("cached logits")
    teacher_cfg = load_config(cfg).teacher
    before = resolve_teacher(teacher_cfg).fingerprint()
    # the teacher's tokenizer (in the directory its run's model.kwargs.path names) is part of its fingerprint
    raw = yaml.safe_load((world["teacher"] / "config.yaml").read_text())
    tokenizer_file = Path(raw["model"]["kwargs"]["path"]) / "tokenizer.json"
    original = tokenizer_file.read_bytes()
    try:
        tokenizer_file.write_bytes(original.replace(b'"<mask>"', b'"<masked>"'))
        assert resolve_teacher(teacher_cfg).fingerprint() != before
    finally:
        tokenizer_file.write_bytes(original)
    assert resolve_teacher(teacher_cfg).fingerprint() == before
    # the data: another max_length (or other rows) is another fingerprint, so the cache is refused
    shorter = {**cfg["data"], "max_length": 6}
    with pytest.raises(CacheError, match=r"fingerprint|stale|another"):
        distill({**cfg, "out": str(tmp_path / "o"), "cache": {"use": "require", "path": str(path)}, "data": shorter})


def test_resume_mid_epoch_is_bit_identical(world, tmp_path):
    cfg = _student(world, "straight", {"name": "kd", "temperature": 2.0}, epochs=2, checkpoint_every_steps=4)
    cfg["out"] = str(tmp_path / "straight")
    distill(cfg)
    interrupted = {**cfg, "out": str(tmp_path / "resumed")}

    def stop(info):
        if info.global_step == 10:  # mid-epoch 1 (13 steps an epoch), two steps after the checkpoint of step 8
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(interrupted, callbacks=[stop])
    distill(interrupted, resume=True)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_evaluate_reports_f1_and_mcc_and_the_hf_directory_predicts_alike(world):
    run = world["root"] / "kd"
    if not (run / "summary.json").exists():
        distill(_student(world, "kd", {"name": "kd", "temperature": 2.0}))
    report = evaluate(run)
    test = report["test"]
    assert {"f1", "mcc", "accuracy", "agreement", "nll", "ece"} <= set(test)
    assert -1 <= test["mcc"] <= 1 and 0 <= test["f1"] <= 1
    from kdlab.api import predict_proba

    texts = ["the movie was good", "a dull plot"]
    probs = predict_proba(run, texts)
    assert probs.shape == (2, 2) and probs[0].argmax() == 1 and probs[1].argmax() == 0
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(str(run / "hf"))
    assert hf.config.id2label == {0: "neg", 1: "pos"}


def test_a_datasets_directory_with_an_unlabelled_test_split(world, tmp_path):
    datasets = pytest.importorskip("datasets")
    train, val = sentiment_rows(200, 7), sentiment_rows(60, 8)
    test = [{"text": r["text"], "label": -1} for r in sentiment_rows(30, 9)]
    names = ["neg", "pos"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})

    def split(rows):
        return datasets.Dataset.from_list([{**r, "label": names.index(r["label"])} for r in rows], features=features)

    glue = datasets.DatasetDict(
        {"train": split(train), "validation": split(val), "test": datasets.Dataset.from_list(test)}
    )
    glue.save_to_disk(str(tmp_path / "glue"))
    from kdlab.tasks.classify import load_data

    cfg = load_config(
        {
            "task": "text_classify",
            "out": str(tmp_path / "o"),
            "data": {"path": str(tmp_path / "glue")},
            "model": {"name": "hf_text", "kwargs": {"architecture": "bert", "tokenizer": str(world["bert"]), **TINY}},
        }
    )
    data = load_data(cfg)
    assert len(data.y_test) == 60 and len(data.y_train) + len(data.y_val) == 200  # validation became the test
    assert data.class_names == ("neg", "pos")


def test_sequence_trainer_distils_across_tokenizers_with_a_frozen_unsaved_teacher(world, tmp_path):
    datasets = pytest.importorskip("datasets")
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from kdlab.hf import PairCollator, SequenceDistillationTrainer, tokenize_pair

    teacher = AutoModelForSequenceClassification.from_pretrained(str(world["teacher"] / "hf"))
    teacher_tok = AutoTokenizer.from_pretrained(str(world["teacher"] / "hf"))
    student_tok = AutoTokenizer.from_pretrained(str(world["bert"]))
    torch.manual_seed(0)
    config = AutoConfig.for_model("bert", **TINY, vocab_size=len(student_tok), num_labels=2)
    student = AutoModelForSequenceClassification.from_config(config)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    names = ["neg", "pos"]

    def table(path: Path):
        frame = datasets.Dataset.from_csv(str(path), cache_dir=str(tmp_path / "hf-cache"))
        frame = frame.map(lambda r: {"labels": names.index(r["label"])}, remove_columns=["label"])
        return frame.map(lambda b: tokenize_pair(student_tok, teacher_tok, b["text"]), batched=True).remove_columns(
            ["text"]
        )

    train_rows, test_rows = table(world["data"]["train"]), table(world["data"]["test"])
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=3,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        save_strategy="epoch",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = SequenceDistillationTrainer(
        model=student,
        args=args,
        teacher=teacher,
        teacher_tokenizer=teacher_tok,
        method={"name": "kd", "temperature": 2.0},
        train_dataset=train_rows,
        data_collator=PairCollator(student_tok, teacher_tok),
    )
    batch = PairCollator(student_tok, teacher_tok)([train_rows[i] for i in range(8)])
    with torch.no_grad():  # the loss is kdlab's KD on the two models' logits, computed here by hand
        loss = trainer.compute_loss(student, dict(batch))
        s = student(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits.double()
        t = teacher(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
        ).logits.double()
    log_p, log_q = torch.log_softmax(s / 2, -1), torch.log_softmax(t / 2, -1)
    kd = 4 * (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    ce = -torch.log_softmax(s, -1).gather(1, batch["labels"][:, None]).mean()
    assert float(loss) == pytest.approx(float(0.1 * ce + 0.9 * kd), rel=1e-4)
    trainer.train()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    saved = sorted((tmp_path / "out").glob("checkpoint-*/model.safetensors"))
    assert saved and all(not any("roberta" in k for k in load_file(str(p))) for p in saved)
    student.eval()
    collated = PairCollator(student_tok, teacher_tok)([test_rows[i] for i in range(len(test_rows))])
    with torch.no_grad():
        logits = student(**{k: collated[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    assert float((logits.argmax(-1) == collated["labels"]).float().mean()) >= 0.85


def test_group_by_length_sorts_each_chunk_and_keeps_a_permutation(world, tmp_path):
    from kdlab.engine.batches import epoch_permutation, group_by_length

    lengths = torch.randint(1, 50, (1000,))
    perm = epoch_permutation(1000, seed=0, epoch=0)
    grouped = group_by_length(perm, lengths, batch_size=4, seed=0, epoch=0, chunk_batches=25)
    assert sorted(grouped.tolist()) == list(range(1000))  # still a permutation of the rows
    spread = [int(lengths[b].max() - lengths[b].min()) for b in grouped.split(4)]
    plain = [int(lengths[b].max() - lengths[b].min()) for b in perm.split(4)]
    assert sum(spread) < sum(plain) / 5  # batches of similar lengths
    for start in range(0, 1000, 100):  # rows move only inside their chunk
        assert set(grouped[start : start + 100].tolist()) == set(perm[start : start + 100].tolist())
    again = group_by_length(perm, lengths, batch_size=4, seed=0, epoch=0, chunk_batches=25)
    assert torch.equal(grouped, again)  # a function of (seed, epoch): resume and N processes agree
    assert not torch.equal(grouped, group_by_length(perm, lengths, batch_size=4, seed=0, epoch=1, chunk_batches=25))
    cfg = _student(world, "grouped", {"name": "kd", "temperature": 2.0}, group_by_length=True)
    cfg["out"] = str(tmp_path / "grouped")
    assert distill(cfg)["val"]["accuracy"] >= 0.8
    image = {"out": str(tmp_path / "image"), "data": {"name": "digits"}, "train": {"group_by_length": True}}
    with pytest.raises(ConfigError, match="group_by_length"):
        train(image)
    assert not (tmp_path / "image").exists()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="torchrun needs a POSIX system")
def test_two_processes_match_one(world, tmp_path):
    from two_processes import distill_with_two_processes

    cfg = _student(world, "one", {"name": "kd", "temperature": 2.0}, epochs=1)
    cfg["out"] = str(tmp_path / "one")
    one = distill(cfg)
    two = distill_with_two_processes(cfg, tmp_path / "two")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["optimizer_steps"] == one["optimizer_steps"]
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert two["test"]["accuracy"] == one["test"]["accuracy"]


def test_a_cache_beside_a_model_directory_teacher_stays_valid(world, tmp_path):
    """A teacher given as a Hugging Face directory keeps its logit cache in that directory: the cache file must not
    change the teacher's fingerprint (only its model and tokenizer files do)."""
    import shutil

    from kdlab.teacher.source import resolve_teacher

    directory = tmp_path / "teacher-hf"
    shutil.copytree(world["teacher"] / "hf", directory)
    cfg = _student(world, "from-dir", {"name": "kd", "temperature": 2.0}, epochs=1)
    cfg["out"] = str(tmp_path / "from-dir")
    cfg["teacher"] = {"model": {"name": "hf_text", "kwargs": {"path": str(directory)}}}
    before = resolve_teacher(load_config(cfg).teacher).fingerprint()
    path = cache_logits(cfg)
    assert path.parent == directory
    assert resolve_teacher(load_config(cfg).teacher).fingerprint() == before
    summary = distill({**cfg, "cache": {"use": "require"}})
    assert summary["teacher"].startswith("cached logits")
    assert summary["val"]["agreement"] >= 0.5


def test_the_token_cache_is_written_once_and_keyed_by_content(world, tmp_path):
    from kdlab.tasks.classify import load_data

    cfg = _student(world, "tok", {"name": "kd"})
    cfg["data"] = {**cfg["data"], "token_cache": str(tmp_path / "tokens")}
    first = load_data(load_config(cfg))
    files = sorted((tmp_path / "tokens").glob("*.safetensors"))
    assert len(files) == 2  # the student's tokenizer and the teacher's
    stamps = [f.stat().st_mtime_ns for f in files]
    again = load_data(load_config(cfg))
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read, not written again
    assert torch.equal(first.x_train, again.x_train) and first.segments == again.segments
    shorter = {**cfg, "data": {**cfg["data"], "max_length": 5}}
    assert load_data(load_config(shorter)).x_train.shape[1] <= 10
    assert len(list((tmp_path / "tokens").glob("*.safetensors"))) == 4
