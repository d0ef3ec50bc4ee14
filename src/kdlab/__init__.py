"""kdlab: knowledge distillation for PyTorch, with exact losses and honest benchmarks.

``kdlab.train``, ``kdlab.distill``, ``kdlab.evaluate``, ... are ``kdlab.api``'s commands, imported on first use
so that ``import kdlab`` (and ``kdlab --help``) stays light.
"""

from importlib import import_module
from typing import Any


def _version() -> str:
    """The installed version, read on first use: ``importlib.metadata`` alone costs ~50 ms at start-up, which every
    command (``kdlab --help``) would pay."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kdlab")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0+local"


_API = ("train", "distill", "fit_model", "evaluate", "load_model", "cache_logits", "select_ptloss", "cooperative")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()["__version__"] = value = _version()
        return value
    if name in _API:
        return getattr(import_module("kdlab.api"), name)
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")
