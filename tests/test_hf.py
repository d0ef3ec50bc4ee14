"""kdlab.hf.distillation_loss against a materialised reference, the sparse-cache teacher, the tokenizer check."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kdlab.hf import (
    CausalLMCollator,
    DistillationTrainer,
    check_same_tokenizer,
    distill_method,
    distillation_loss,
    prepare_teacher,
    write_teacher_cache,
)
from kdlab.methods import Method
from kdlab.teacher.sparse_cache import SparseLogitCache

VOCAB = 97


def tiny_llama(hidden: int, vocab: int = VOCAB, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def sequences(count: int, seed: int, shortest: int = 3, longest: int = 12) -> list[list[int]]:
    """Random token ids of unequal lengths (so padding and per-token normalisation matter)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(shortest, longest + 1, (count,), generator=g)
    return [torch.randint(1, VOCAB, (int(n),), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def models(one_thread):
    return tiny_llama(32, seed=1), prepare_teacher(tiny_llama(48, seed=2), "cpu")


def reference_loss(student, teacher, batch, method: Method) -> torch.Tensor:
    """Full (tokens × vocabulary) logits and the textbook formulas, written out independently of kdlab."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    s = student(input_ids=ids, attention_mask=mask).logits[:, :-1]
    with torch.no_grad():
        t = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    p = method.params
    T = p.temperature
    log_p = torch.log_softmax(s[keep] / T, -1)
    log_q = torch.log_softmax(t[keep] / T, -1)
    if method.name in ("kd", "ptloss"):
        # KL(q || p) = sum q (log q - log p), the same as torch's kl_div(input=log p, target=log q)
        per_token = torch.nn.functional.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
        if method.name == "ptloss":
            u = 1 - log_p.exp()
            per_token = per_token + sum((log_q.exp() * e * u ** (m + 1)).sum(-1) for m, e in enumerate(p.epsilon))
    elif method.name == "reverse_kl":
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:  # jsd, beta = 1/2
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), 0) - torch.log(torch.tensor(2.0))
        per_token = 0.5 * (log_q.exp() * (log_q - log_m)).sum(-1) + 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1)
    ce = torch.nn.functional.cross_entropy(s[keep], target[keep], reduction="none")
    return p.beta * T * T * per_token.mean() + p.alpha * ce.mean()


METHODS = [
    distill_method("kd", temperature=2.0, alpha=0.5),
    distill_method("ptloss", temperature=1.0, epsilon=[0.4]),
    distill_method("ptloss", temperature=2.0, epsilon=[0.3, -0.2, 0.1, 0.05, -0.1], alpha=0.2, beta=0.7),
    distill_method("reverse_kl", temperature=1.5),
    distill_method("jsd"),
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.name}-M{len(getattr(m.params, 'epsilon', None) or [])}")
def test_distillation_loss_equals_materialised_reference(models, method):
    student, teacher = models
    batch = CausalLMCollator()([{"input_ids": s} for s in sequences(6, seed=3)])
    batch["labels"][0, :4] = -100  # a prompt that is not a target: masked as well as padded tokens
    student.zero_grad()
    fused = distillation_loss(student, teacher, batch, method)
    fused.backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters()}
    student.zero_grad()
    expected = reference_loss(student, teacher, batch, method)
    expected.backward()
    assert fused.item() == pytest.approx(expected.item(), rel=1e-5)
    for name, p in student.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in teacher.parameters())


def test_num_items_divides_the_sum_and_labels_default_to_the_input_ids(models):
    student, teacher = models
    batch = CausalLMCollator()([{"input_ids": s} for s in sequences(4, seed=4)])
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    mean = distillation_loss(student, teacher, batch, "kd")
    summed = distillation_loss(student, teacher, batch, "kd", num_items_in_batch=torch.tensor(1))
    assert summed.item() == pytest.approx(mean.item() * tokens, rel=1e-6)
    no_labels = {key: value for key, value in batch.items() if key != "labels"}
    assert distillation_loss(student, teacher, no_labels, "kd").item() == pytest.approx(mean.item(), rel=1e-6)


def test_sparse_cache_with_k_equal_to_vocabulary_gives_the_dense_loss(models, tmp_path):
    student, teacher = models
    data = sequences(5, seed=5)
    offsets = write_teacher_cache(teacher, data, tmp_path / "full", k=VOCAB, batch_size=2)
    assert offsets == [0, *torch.tensor([len(s) for s in data]).cumsum(0)[:-1].tolist()]
    write_teacher_cache(teacher, data, tmp_path / "top8", k=8)
    order = [3, 0, 4]  # a batch in another order than the cache: the offsets find the rows
    examples = [{"input_ids": data[i], "cache_offset": offsets[i]} for i in order]
    batch = CausalLMCollator()(examples)
    method = distill_method("ptloss", epsilon=[0.3, -0.1], temperature=2.0)
    dense = distillation_loss(student, teacher, batch, method)
    cached = distillation_loss(student, SparseLogitCache(tmp_path / "full"), batch, method)
    top8 = distillation_loss(student, SparseLogitCache(tmp_path / "top8"), batch, method)
    # float16 storage of the logits is the only difference
    assert cached.item() == pytest.approx(dense.item(), rel=1e-3)
    assert abs(top8.item() - dense.item()) > 1e-3 * dense.item()  # k < V: the rest bucket is a real approximation
    with pytest.raises(ValueError, match="cache_offset"):
        distillation_loss(student, SparseLogitCache(tmp_path / "full"), {"input_ids": batch["input_ids"]}, "kd")


def test_the_teacher_fingerprint_covers_the_weights(tmp_path):
    """Same architecture, other weights: another teacher, whose cache is refused."""
    from kdlab.hf.cache import data_fingerprint, teacher_fingerprint
    from kdlab.teacher.logit_cache import CacheError

    a, b = tiny_llama(16, seed=3), tiny_llama(16, seed=4)
    assert teacher_fingerprint(a) == teacher_fingerprint(tiny_llama(16, seed=3))
    assert teacher_fingerprint(a) != teacher_fingerprint(b)
    with torch.no_grad():
        b.load_state_dict(a.state_dict())
        assert teacher_fingerprint(a) == teacher_fingerprint(b)
        b.model.norm.weight[0] += 1e-3  # one weight changed
    assert teacher_fingerprint(a) != teacher_fingerprint(b)
    data = sequences(2, seed=9)
    write_teacher_cache(a, data, tmp_path / "c", k=4, tail_samples=2)
    expected = {"data": data_fingerprint(data), "teacher": teacher_fingerprint(b)}
    with pytest.raises(CacheError, match="made for other teacher"):
        SparseLogitCache(tmp_path / "c", expected_fingerprint=expected)


def test_callable_teacher_gives_dense_logits(models):
    student, teacher = models
    batch = CausalLMCollator()([{"input_ids": s} for s in sequences(3, seed=6)])
    expected = distillation_loss(student, teacher, batch, "reverse_kl")
    got = distillation_loss(student, lambda **kw: teacher(**kw).logits, batch, "reverse_kl")
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def _tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")


def test_a_different_vocabulary_or_tokenizer_is_one_clear_error(models, tmp_path):
    student, teacher = models
    with pytest.raises(ValueError, match=r"must share a tokenizer.*97 \(student\) and 101 \(teacher\)"):
        DistillationTrainer(model=student, teacher=tiny_llama(16, vocab=101), method="kd")
    same, other = _tokenizer(["a", "b", "c"]), _tokenizer(["a", "c", "b"])
    check_same_tokenizer(student, teacher, same, _tokenizer(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"tokenizer vocabularies \(5 and 5 tokens, 2 differ\)"):
        DistillationTrainer(model=student, teacher=teacher, method="kd", processing_class=same, teacher_tokenizer=other)
    write_teacher_cache(tiny_llama(16, vocab=101), sequences(2, seed=7), tmp_path / "c101", k=4)
    with pytest.raises(ValueError, match="logit cache has 101 classes, the student's output layer 97"):
        DistillationTrainer(model=student, logit_cache=tmp_path / "c101", method="kd")
    with pytest.raises(ValueError, match="epsilon"):
        distill_method({"name": "ptloss"})


def test_kdlab_does_not_import_transformers_and_kdlab_hf_names_the_extra():
    script = (
        "import sys, kdlab, kdlab.losses, kdlab.engine\n"
        "assert 'transformers' not in sys.modules\n"
        "sys.modules['transformers'] = None\n"
        "try:\n"
        "    import kdlab.hf\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pip install 'kdlab[hf]'" in done.stdout


def test_a_model_class_loads_without_torchaos_cpu_machine_warnings():
    """With the compress extra installed, transformers imports torchao with its first model class; torchao then
    logs a warning per CUDA-only kernel library and torch a deprecation notice per enum: kdlab.hf silences them."""
    pytest.importorskip("torchao")
    script = "import kdlab.hf\nfrom transformers import LlamaForCausalLM\nprint('ok')\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]
    assert "Failed to load" not in done.stderr and "Enum subclass" not in done.stderr, done.stderr[-2000:]
