"""Every error type kdlab raises for a user's mistake or a run that cannot go on, in one place.

Each is reported by the CLI as one line (exit code 2 for the ``ValueError`` family, 1 for ``TrainingError``);
every layer imports them from here, so no layer needs another (e.g. the config module) just for its errors.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration file, key or value (reported as one line, exit code 2)."""


class DataError(ValueError):
    """A data set cannot be found, read or used; the message is one line naming the file and the problem."""


class CacheError(ValueError):
    """A teacher cache is missing, corrupt, or does not belong to this teacher and data."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); reported as one line naming the term and step."""
