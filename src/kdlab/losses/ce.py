"""Hard-label cross-entropy with kdlab's reductions (the alpha·CE(y) part of most KD objectives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check_logits, check_reduction, check_target, raise_if_nonfinite, reduce_rows


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    reduction: str = "batchmean",
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    """-log softmax(logits)[target]; 'batchmean' averages over the rows whose target is not ignored."""
    logits = check_logits("logits", logits)
    check_reduction(reduction)
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    num_classes = logits.shape[-1]
    lead_shape = logits.shape[:-1]
    target = check_target(target, lead_shape, num_classes, ignore_index)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    flat_target = target.reshape(-1)
    keep = flat_target != ignore_index
    index = keep.nonzero().squeeze(1)
    rows = F.cross_entropy(
        logits.reshape(-1, num_classes).index_select(0, index).to(dtype),
        flat_target.index_select(0, index),
        reduction="none",
        label_smoothing=float(label_smoothing),
    )
    out = reduce_rows(rows, reduction, lead_shape, index, lead_shape.numel())
    raise_if_nonfinite(out, logits=logits)
    return out
