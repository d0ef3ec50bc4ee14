"""``DistillationTrainer``: ``transformers.Trainer`` with kdlab's fused token-level distillation loss.

What it guarantees, and how:

* the teacher is frozen (``requires_grad_(False)``), in eval mode, on the training device and in the
  student's dtype (or ``teacher_dtype``), run under ``torch.inference_mode``; it is an attribute of the
  trainer, not of the model, so it is in neither the optimizer nor any checkpoint (``save_model`` and
  ``_save_checkpoint`` write ``self.model`` only), and DDP never wraps it;
* the loss is the sum over target tokens divided by the number of target tokens of the whole accumulated
  batch on all processes (counted here in ``get_batch_samples``, gathered across processes whatever
  ``average_tokens_across_devices`` says) and multiplied by the world size, because DDP averages
  gradients: k micro-batches on n processes give the gradient of one big batch;
* a teacher or cache with another vocabulary, or a teacher tokenizer that differs from the student's
  (``processing_class``), is one ValueError at construction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from kdlab.config import MethodConfig
from kdlab.losses.sparse_teacher import tail_samples_serve
from kdlab.methods import Method
from kdlab.teacher.sparse_cache import SparseLogitCache, warn_unused_tail_samples

from .cache import CACHE_COLUMN
from .loss import check_same_tokenizer, compute_distillation, count_target_tokens, output_head, prepare_teacher
from .method import distill_method


class DistillationTrainer(Trainer):
    """``Trainer(model=student, ...)`` plus ``teacher=`` (a causal LM) or ``logit_cache=`` and ``method=``.

    ``method``: a kdlab method built for ``causal_lm`` (``kdlab.hf.distill_method``), a dict such as
    ``{"name": "ptloss", "epsilon": [0.2], "temperature": 2}``, kdlab's ``MethodConfig`` or a name.
    ``teacher_tokenizer``: compared with ``processing_class`` when both are given. With ``logit_cache`` the
    dataset needs a ``cache_offset`` column (``write_teacher_cache``); its tail samples are used by
    ``kd``/``ptloss`` at T = 1 (other methods: the rest bucket, with a warning).
    """

    # the loss is already normalised over the whole accumulated batch: training_step must not divide it again
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | None = None,
        args: Any = None,
        *,
        teacher: nn.Module | None = None,
        logit_cache: SparseLogitCache | str | Path | None = None,
        method: Method | MethodConfig | Mapping[str, Any] | str = "kd",
        teacher_dtype: torch.dtype | None = None,
        teacher_tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if (teacher is None) == (logit_cache is None):
            raise ValueError("DistillationTrainer needs exactly one of teacher= (a model) or logit_cache=")
        if model is None:
            raise ValueError("DistillationTrainer needs the student as model= (model_init is not supported)")
        self.method = distill_method(method)
        if teacher is not None:
            check_same_tokenizer(model, teacher, kwargs.get("processing_class"), teacher_tokenizer)
        else:
            logit_cache = logit_cache if isinstance(logit_cache, SparseLogitCache) else SparseLogitCache(logit_cache)
            temperature = self.method.params.temperature
            serve = tail_samples_serve(self.method.name, temperature)
            if logit_cache.tail_samples and not serve:
                warn_unused_tail_samples(self.method.name, temperature, logit_cache.k)
                logit_cache = SparseLogitCache(logit_cache.directory, logit_cache.fingerprint, use_tail_samples=False)
            rows = output_head(model, "student").weight.shape[0]
            if logit_cache.vocab_size != rows:
                raise ValueError(
                    "teacher and student must share a tokenizer, but they differ: the logit cache has "
                    f"{logit_cache.vocab_size} classes, the student's output layer {rows}"
                )
        super().__init__(model=model, args=args, **kwargs)
        # older transformers decide from this flag whether the loss is already normalised (see above)
        self.model_accepts_loss_kwargs = True
        if teacher is not None:
            dtype = teacher_dtype or next(self.model.parameters()).dtype
            self.teacher: nn.Module | SparseLogitCache = prepare_teacher(teacher, self.args.device, dtype)
        else:
            self.teacher = logit_cache

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        # evaluation: the mean over this batch's tokens; training: see the module docstring
        num_items = num_items_in_batch if model.training else None
        loss, outputs = compute_distillation(model, self.teacher, inputs, self.method, num_items)
        if num_items is not None and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes
        elif num_items is None and model.training:  # called without a count (not from train()): a per-batch mean
            loss = loss / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, Tensor | None]:
        """The accumulated micro-batches and their target-token count, summed over all processes."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        count = sum(count_target_tokens(batch) for batch in batch_samples).to(device).reshape(1)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count)
        return batch_samples, count.sum().clamp(min=1)  # no target at all: the sum is 0 anyway

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the ``cache_offset`` column: ``remove_unused_columns`` would drop it (the model does not take it)."""
        super()._set_signature_columns_if_needed()
        if CACHE_COLUMN not in self._signature_columns:
            self._signature_columns.append(CACHE_COLUMN)
