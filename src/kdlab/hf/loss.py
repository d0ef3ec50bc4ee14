"""``distillation_loss``: token-level distillation of a Hugging Face causal LM, fused with its output layer.

The student runs its normal ``forward`` (so DDP's gradient hooks, autocast and gradient checkpointing all
apply), but a pre-hook on its output layer takes the final hidden states and hands the layer an empty
slice instead: the (tokens × vocabulary) logits are never formed. The hidden states and the head weight
go to ``kdlab.losses.fused_linear_distill``, which works through the tokens in chunks. The teacher is run
the same way under ``torch.inference_mode`` (hidden states + its head weight), or replaced by a sparse
logit cache, or, when it is only a callable, gives dense logits.

Causal shift: position t predicts token t + 1, so hidden states ``[:, :-1]`` meet labels ``[:, 1:]``.
A *target token* is a shifted label that is not -100 (labels default to the input ids, -100 where the
attention mask is 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from kdlab.losses import SparseTeacher
from kdlab.methods import Method, Outputs, StepState
from kdlab.methods.token import teacher_outputs
from kdlab.teacher.sparse_cache import SparseLogitCache

from .cache import CACHE_COLUMN, sparse_teacher_for_batch
from .method import distill_method

IGNORE_INDEX = -100
# batch keys that are the loss's business, not the model's
_LOSS_KEYS = ("labels", CACHE_COLUMN, "shift_labels")

Teacher = nn.Module | SparseLogitCache | Callable[..., Any]
_NO_SCHEDULE = StepState(0, 0, 1, 0.0)  # token methods' weights are constants


def distillation_loss(
    student: nn.Module,
    teacher: Teacher,
    inputs: Mapping[str, Any],
    method: Method | Mapping[str, Any] | str,
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    """``beta · D + alpha · CE`` over the batch's target tokens; a float32 scalar to call ``backward`` on.

    ``student``: a causal LM (``get_output_embeddings()`` a bias-free linear head), possibly DDP-wrapped.
    ``teacher``: a causal LM sharing the tokenizer (prepare it once with ``prepare_teacher``), a
    ``SparseLogitCache`` (the batch then needs a ``cache_offset`` column, see ``write_teacher_cache``),
    or a callable ``teacher(**inputs)`` returning logits (B, L, V) or an object with ``.logits``.
    ``inputs``: ``input_ids`` (B, L), optional ``attention_mask`` and ``labels`` (-100 = not a target).
    ``num_items_in_batch``: the number of target tokens of the whole accumulated batch (all micro-batches,
    all processes); the sum over this micro-batch is divided by it, so summing the micro-batches' losses
    gives the mean over the accumulated batch. ``None``: the mean over this batch's target tokens.
    Under DDP (which averages gradients) multiply the result by the world size; ``DistillationTrainer``
    does all this for you.
    """
    loss, _ = compute_distillation(student, teacher, inputs, distill_method(method), num_items_in_batch)
    return loss


def compute_distillation(
    student: nn.Module,
    teacher: Teacher,
    inputs: Mapping[str, Any],
    method: Method,
    num_items_in_batch: int | Tensor | None = None,
) -> tuple[Tensor, Any]:
    """``distillation_loss`` plus the student's model output (its logits are an empty (B, 0, V) tensor)."""
    model_inputs = {key: value for key, value in inputs.items() if key not in _LOSS_KEYS}
    if "input_ids" not in model_inputs:
        raise ValueError(f"the batch needs 'input_ids'; it has {sorted(inputs)}")
    labels = target_labels(inputs)
    head = output_head(student, "student")
    hidden, outputs = hidden_states(student, head, model_inputs)
    teacher_out = teacher_outputs(_teacher_input(teacher, inputs, model_inputs, hidden.device))
    batch = {"targets": labels[:, 1:], "ignore_index": IGNORE_INDEX, "num_items": num_items_in_batch}
    student_out = Outputs(hidden=hidden[:, :-1], head_weight=head.weight)
    terms = method.compute(batch, student_out, teacher_out, _NO_SCHEDULE)
    return sum(terms.values()), outputs  # type: ignore[return-value]


def target_labels(inputs: Mapping[str, Any]) -> Tensor:
    """The batch's labels, or the input ids with -100 where the attention mask is 0 (before the shift)."""
    labels = inputs.get("labels")
    if labels is not None:
        return labels
    labels = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    return labels if mask is None else labels.masked_fill(mask == 0, IGNORE_INDEX)


def count_target_tokens(inputs: Mapping[str, Any]) -> Tensor:
    """Target tokens of one batch: shifted labels that are not -100 (the loss's denominator, summed over batches)."""
    return (target_labels(inputs)[..., 1:] != IGNORE_INDEX).sum()


def output_head(model: nn.Module, role: str) -> nn.Linear:
    """The bias-free linear output layer of a causal LM (unwrapped from DDP/compile first)."""
    inner = extract_model_from_parallel(model)
    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"the {role} must be a causal LM whose get_output_embeddings() is an nn.Linear (e.g. *ForCausalLM), "
            f"got {type(inner).__name__} with head {type(head).__name__}"
        )
    if head.bias is not None:
        raise ValueError(f"the {role}'s output layer has a bias; the fused loss supports bias-free heads only")
    config = getattr(inner, "config", None)
    for key in ("final_logit_softcapping", "logit_scale"):  # logits transformed after the head
        if getattr(config, key, None) not in (None, 1, 1.0):
            raise ValueError(f"the {role} transforms its logits after the head ({key}); kdlab.hf does not support it")
    return head


def hidden_states(model: nn.Module, head: nn.Module, model_inputs: Mapping[str, Any]) -> tuple[Tensor, Any]:
    """Run ``model(**model_inputs)``; return the hidden states that entered ``head`` (B, L, H) and the output.

    The head itself is given a zero-length slice, so it computes (B, 0, V) logits: nothing vocabulary-sized.
    """
    captured: list[Tensor] = []

    def take_hidden(module: nn.Module, args: tuple) -> tuple:
        if not args or not isinstance(args[0], Tensor) or args[0].dim() < 2:
            raise ValueError("the output layer was not called on a (..., tokens, hidden) tensor")
        captured.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(take_hidden)
    try:
        outputs = model(**model_inputs, use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(f"the output layer ran {len(captured)} times in one forward pass; expected once")
    return captured[0], outputs


def prepare_teacher(teacher: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> nn.Module:
    """Freeze the teacher: no gradients, eval mode (no dropout), on ``device`` (and in ``dtype``). Returns it."""
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher.to(device=device, dtype=dtype) if dtype is not None else teacher.to(device)


def check_same_tokenizer(
    student: nn.Module, teacher: nn.Module | None, student_tokenizer: Any = None, teacher_tokenizer: Any = None
) -> None:
    """Teacher and student must share a tokenizer: else one ValueError listing every difference found."""
    problems = []
    if teacher is not None:
        rows = {role: output_head(m, role).weight.shape[0] for role, m in (("student", student), ("teacher", teacher))}
        if rows["student"] != rows["teacher"]:
            problems.append(f"output layers of {rows['student']} (student) and {rows['teacher']} (teacher) tokens")
        sizes = [getattr(getattr(m, "config", None), "vocab_size", None) for m in (student, teacher)]
        if None not in sizes and sizes[0] != sizes[1]:
            problems.append(f"config.vocab_size {sizes[0]} (student) and {sizes[1]} (teacher)")
    if all(callable(getattr(tok, "get_vocab", None)) for tok in (student_tokenizer, teacher_tokenizer)):
        s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if s_vocab != t_vocab:
            differ = sum(1 for token in s_vocab.keys() | t_vocab.keys() if s_vocab.get(token) != t_vocab.get(token))
            problems.append(f"tokenizer vocabularies ({len(s_vocab)} and {len(t_vocab)} tokens, {differ} differ)")
        s_special, t_special = _special_tokens(student_tokenizer), _special_tokens(teacher_tokenizer)
        if s_special != t_special:
            problems.append(f"special tokens {s_special} (student) and {t_special} (teacher)")
    if problems:
        raise ValueError("teacher and student must share a tokenizer, but they differ: " + "; ".join(problems))


def _special_tokens(tokenizer: Any) -> dict[str, Any]:
    tokens = getattr(tokenizer, "special_tokens_map", None) or {}
    return {name: (value, tokenizer.convert_tokens_to_ids(value)) for name, value in sorted(tokens.items())}


def _teacher_input(
    teacher: Teacher, inputs: Mapping[str, Any], model_inputs: Mapping[str, Any], device: torch.device
) -> tuple[Tensor, Tensor] | Tensor | SparseTeacher:
    """What ``fused_linear_distill`` takes as the teacher, already shifted (positions 0..L-2)."""
    if isinstance(teacher, SparseLogitCache):
        if CACHE_COLUMN not in inputs:
            raise ValueError(
                f"a logit-cache teacher needs a {CACHE_COLUMN!r} column in the batch (the cache row of each "
                "example's first token; see kdlab.hf.write_teacher_cache)"
            )
        sparse = sparse_teacher_for_batch(teacher, inputs[CACHE_COLUMN], _attention_mask(model_inputs))
        labels = target_labels(inputs)[:, 1:]
        if bool(((labels != IGNORE_INDEX) & ~_attention_mask(model_inputs)[:, :-1].bool()).any()):
            raise ValueError("a target token follows a padded position, which has no row in the logit cache")
        return sparse.map(lambda t: t[:, :-1]).to(device)
    if isinstance(teacher, nn.Module) and callable(getattr(teacher, "get_output_embeddings", None)):
        if teacher.training:
            raise ValueError("the teacher is in training mode; call kdlab.hf.prepare_teacher(teacher, device) first")
        head = output_head(teacher, "teacher")
        if head.weight.device != device:
            raise ValueError(
                f"the teacher is on {head.weight.device}, the student on {device}: "
                "call kdlab.hf.prepare_teacher(teacher, device) first"
            )
        with torch.inference_mode():
            hidden, _ = hidden_states(teacher, head, model_inputs)
            weight = head.weight if head.weight.dtype == hidden.dtype else head.weight.to(hidden.dtype)
            return hidden[:, :-1].contiguous(), weight
    if callable(teacher):
        with torch.inference_mode():
            out = teacher(**model_inputs)
            logits = getattr(out, "logits", out)
            if not isinstance(logits, Tensor):
                raise ValueError(f"the teacher callable returned {type(out).__name__}, not logits or .logits")
            return logits[:, :-1].to(device).contiguous()
    raise ValueError(f"teacher must be a causal LM, a SparseLogitCache or a callable, got {type(teacher).__name__}")


def _attention_mask(model_inputs: Mapping[str, Any]) -> Tensor:
    mask = model_inputs.get("attention_mask")
    return torch.ones_like(model_inputs["input_ids"]) if mask is None else mask
