"""Distil a tiny Llama-style language model with kdlab.hf.DistillationTrainer, offline, on CPU, in about a minute.

The corpus is Python's own standard-library source (it ships with every Python), read as bytes: token
ids 0..255, so no tokenizer has to be downloaded. A 2-layer teacher is trained first with the plain
``transformers.Trainer``; then a smaller student is distilled from it (KD or PTLoss, from the teacher
model or from a top-k logit cache), and both are scored on held-out text.

    python examples/hf_distill.py                          # KD from the teacher model
    python examples/hf_distill.py --method ptloss          # PTLoss, epsilon = [0.2, -0.1]
    python examples/hf_distill.py --cache-k 16             # KD from a top-16 logit cache
"""

from __future__ import annotations

import argparse
import math
import tempfile
import textwrap
from pathlib import Path

import torch

# kdlab.hf first: it imports torchao quietly, which transformers would otherwise import with warnings about CUDA
# kernels a CPU machine cannot load (nothing a user can act on)
from kdlab.hf import CausalLMCollator, DistillationTrainer, write_teacher_cache

# isort: split
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

VOCAB = 256  # bytes


def corpus(chunks: int, seed: int) -> list[list[int]]:
    """Byte chunks of 24..64 tokens (unequal lengths: padding is exercised) from stdlib sources."""
    import json
    import string

    text = b"".join(Path(m.__file__).read_bytes() for m in (textwrap, string, json.decoder, argparse))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(chunks):
        length = int(torch.randint(24, 65, (), generator=g))
        start = int(torch.randint(0, len(text) - length, (), generator=g))
        out.append(list(text[start : start + length]))
    return out


def llama(hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config)


def arguments(out: Path, steps: int, lr: float) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=16,
        gradient_accumulation_steps=2,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=max(steps // 8, 1),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )


@torch.no_grad()
def held_out(student: LlamaForCausalLM, teacher: LlamaForCausalLM, data: list[list[int]]) -> dict[str, float]:
    """Perplexity on the held-out bytes, and how often the student's top-1 next byte is the teacher's."""
    batch = CausalLMCollator()([{"input_ids": x} for x in data])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"][:, 1:]
    s = student(input_ids=ids, attention_mask=mask).logits[:, :-1]
    t = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    keep = labels != -100
    nll = torch.nn.functional.cross_entropy(s[keep], labels[keep]).item()
    agreement = (s[keep].argmax(-1) == t[keep].argmax(-1)).float().mean().item()
    return {"perplexity": math.exp(nll), "agreement": agreement}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["kd", "ptloss", "reverse_kl", "jsd"], default="kd")
    parser.add_argument("--cache-k", type=int, default=0, help="distil from a top-k logit cache (0: the teacher)")
    parser.add_argument("--teacher-steps", type=int, default=120)
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared CPU

    train, test = corpus(1200, seed=0), corpus(64, seed=1)
    collate = CausalLMCollator()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher = llama(96, 2, seed=0)
        Trainer(
            model=teacher,
            args=arguments(root / "teacher", args.teacher_steps, 3e-3),
            train_dataset=[{"input_ids": x} for x in train],
            data_collator=collate,
        ).train()
        teacher.eval()
        student = llama(32, 1, seed=1)
        before = held_out(student, teacher, test)

        method = {"name": args.method, "temperature": 1.0, "alpha": 0.0}
        if args.method == "ptloss":
            method["epsilon"] = [0.2, -0.1]
        dataset = [{"input_ids": x} for x in train]
        source = {"teacher": teacher}
        if args.cache_k:
            offsets = write_teacher_cache(teacher, train, root / "cache", k=args.cache_k)
            dataset = [{"input_ids": x, "cache_offset": o} for x, o in zip(train, offsets, strict=True)]
            source = {"logit_cache": root / "cache"}
        trainer = DistillationTrainer(
            model=student,
            args=arguments(root / "student", args.steps, 3e-3),
            method=method,
            train_dataset=dataset,
            data_collator=collate,
            **source,
        )
        trainer.train()
        losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
        print("distillation loss by step:", ", ".join(f"{step}: {loss:.3f}" for step, loss in losses))
        after = held_out(student, teacher, test)
        teacher_ppl = held_out(teacher, teacher, test)["perplexity"]
    print(f"teacher held-out perplexity {teacher_ppl:.2f}")
    print(f"student before: perplexity {before['perplexity']:.2f}, agreement {before['agreement']:.3f}")
    print(
        f"student after {args.steps} steps of {args.method}: perplexity {after['perplexity']:.2f}, "
        f"agreement {after['agreement']:.3f}"
    )


if __name__ == "__main__":
    main()
