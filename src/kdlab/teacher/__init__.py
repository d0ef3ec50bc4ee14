"""Where a teacher's outputs come from: a live model (a run directory, or a model definition plus weights), an
ensemble of them, a dense or top-k logit cache of classifier logits, a sparse top-k cache of a language model's
token logits — with the fingerprints that tie a cache to its teacher and data."""

LM_TOPK = 64  # the k of a language model's sparse cache when cache.topk is not given (kdlab cache-logits, hf)


def lm_topk(configured: int | None) -> int:
    return LM_TOPK if configured is None else configured
