"""Hugging Face integration (optional extra ``kdlab[hf]``): distil causal language models with ``transformers``.

* ``DistillationTrainer``: a ``transformers.Trainer`` whose loss is token-level KD/PTLoss/reverse KL/JSD,
  fused with the student's output layer (the tokens × vocabulary logits never exist), from a teacher
  model or from a sparse top-k logit cache; the teacher frozen, in eval mode, not trained, not saved.
* ``distillation_loss``: the same loss as one function for any training loop (a ``compute_loss`` drop-in).
* ``write_teacher_cache``: run a teacher once over tokenised examples and store its top-k logits.
* ``SequenceDistillationTrainer``: the same for sequence classifiers (any kdlab classification method on the
  logits), teacher and student each with its own tokenizer (``tokenize_pair``, ``PairCollator``).

``import kdlab`` never imports transformers; this package needs it.
"""

from kdlab.quiet import preload_torchao

try:
    import transformers  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "kdlab.hf needs Hugging Face transformers, which is not installed: pip install 'kdlab[hf]'"
    ) from err
else:
    preload_torchao()  # transformers imports torchao with the first model class: without its CPU-machine warnings

from .cache import cache_offsets, sparse_teacher_for_batch, write_teacher_cache
from .data import CausalLMCollator
from .loss import check_same_tokenizer, count_target_tokens, distillation_loss, prepare_teacher
from .method import distill_method
from .sequence import PairCollator, SequenceDistillationTrainer, classification_method, tokenize_pair
from .trainer import DistillationTrainer

__all__ = [
    "CausalLMCollator",
    "DistillationTrainer",
    "PairCollator",
    "SequenceDistillationTrainer",
    "cache_offsets",
    "check_same_tokenizer",
    "classification_method",
    "count_target_tokens",
    "distill_method",
    "distillation_loss",
    "prepare_teacher",
    "sparse_teacher_for_batch",
    "tokenize_pair",
    "write_teacher_cache",
]
