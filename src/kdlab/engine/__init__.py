"""The training engine: the one loop (``loop.run_loop``), the in-memory tensor step and ``fit`` for a user's own
modules (``supervised``), checkpoints, the run directory (``rundir``) and the speed switches.

The commands (``train``, ``distill``, ``evaluate``, ...) live in ``kdlab.api`` (also ``kdlab.train``, ...).
"""

from kdlab.errors import CacheError, TrainingError

from .fit import fit
from .loop import StepInfo
from .processes import end_process_group
from .speed import fast_student, fast_teacher
from .supervised import FitResult, Splits

__all__ = [
    "CacheError",
    "FitResult",
    "Splits",
    "StepInfo",
    "TrainingError",
    "end_process_group",
    "fast_student",
    "fast_teacher",
    "fit",
]
