"""Third-party log lines that are not the user's news: torchao's warnings on a machine without CUDA.

torchao logs one warning per CUDA-only kernel library it cannot load, and torch's pytree one per enum it
registers. transformers imports torchao (when it is installed, e.g. with kdlab's ``compress`` extra) the first
time a model class is used, so a causal-LM run would print them too.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_torchao() -> Iterator[None]:
    """torchao's and torch pytree's warnings raised to ERROR level for the duration."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


class _EnumConstantNotice(logging.Filter):
    """Drops torch pytree's deprecation notice for enums registered as constants (torchao registers several, some
    in modules transformers imports later); every other pytree message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported" not in record.getMessage()


@functools.cache  # once per process: every causal-LM model build calls it
def preload_torchao() -> None:
    """Import torchao now, quietly, if it is installed: a later import (by transformers) is then silent."""
    if importlib.util.find_spec("torchao") is None:
        return
    logging.getLogger("torch.utils._pytree").addFilter(_EnumConstantNotice())
    with quiet_torchao():
        import torchao  # noqa: F401
