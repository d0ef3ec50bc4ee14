"""kdlab: knowledge distillation for PyTorch, with exact losses and honest benchmarks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kdlab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
